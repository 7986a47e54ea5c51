"""``ldmscale study --data``: your own image folder (or COCO root), with metrics chosen for it and
checked before any training."""

from __future__ import annotations

import json
import time

import pytest

from conftest import micro_study, write_plain_folder
from ldmscale.cli import main
from ldmscale.data import DataError
from ldmscale.data.source import describe_source
from ldmscale.store import ResultsStore
from ldmscale.study import StudyDataError, check_study_metrics, metrics_for_data


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """32 train + 16 validation gradient images with colour captions, no attributes."""
    return write_plain_folder(tmp_path_factory.mktemp("plain") / "data")


def test_describe_source_tells_shapes_from_plain_folders_and_coco(plain, tiny_shapes, tmp_path):
    info = describe_source(plain)
    assert (info.kind, info.counts, info.shapes_attributes) == (
        "imagefolder",
        {"train": 32, "validation": 16},
        False,
    )
    shapes = describe_source(tiny_shapes)
    assert shapes.shapes_attributes and shapes.counts == {"train": 64, "validation": 16}

    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split, name in (("train", "train2014"), ("val", "val2014")):
        (coco / name).mkdir()
        (coco / name / "a.png").write_bytes((plain / "train" / "000.png").read_bytes())
        ann = {
            "images": [{"id": 1, "file_name": "a.png"}],
            "annotations": [{"image_id": 1, "caption": "a red gradient"}],
        }
        (coco / "annotations" / f"captions_{split}2014.json").write_text(json.dumps(ann))
    assert describe_source(coco).kind == "coco"
    assert describe_source(coco).counts == {"train": 1, "validation": 1}

    with pytest.raises(DataError, match="does not exist"):
        describe_source(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a dataset folder"):
        describe_source(tmp_path / "empty")


def test_metrics_are_chosen_for_the_data(plain, tiny_shapes, tiny_clip_model_dir, tmp_path):
    cfg = micro_study(tmp_path / "s")  # asks for fd_probe + alignment, primary fd_probe
    on_shapes, _ = metrics_for_data(cfg.replace(data=str(tiny_shapes)))
    assert on_shapes.sweep.metrics == ("fd_probe", "alignment")
    assert on_shapes.primary_metric == "fd_probe"

    on_plain, line = metrics_for_data(cfg.replace(data=str(plain)))
    assert on_plain.sweep.metrics == ("fd_effnet",) and on_plain.primary_metric == "fd_effnet"
    assert "no shapes attributes" in line

    fid, _ = metrics_for_data(cfg.replace(data=str(plain)), metrics=["fid"])
    assert fid.sweep.metrics == ("fid",) and fid.primary_metric == "fid"

    clip, _ = metrics_for_data(cfg.replace(data=str(plain)), clip_model=str(tiny_clip_model_dir))
    assert clip.sweep.metrics == ("fd_effnet", "clip_score")
    assert clip.sweep.clip_model == str(tiny_clip_model_dir)

    with pytest.raises(StudyDataError, match=r"\['alignment'\].*shapes attributes"):
        metrics_for_data(cfg.replace(data=str(plain)), metrics=["fd_effnet", "alignment"])
    with pytest.raises(StudyDataError, match="clip_score.*--clip-model"):
        metrics_for_data(cfg.replace(data=str(plain)), metrics=["clip_score"])
    # a config that asks for the probe on plain data fails the check run_study makes first
    with pytest.raises(StudyDataError, match="fd_probe"):
        check_study_metrics(cfg.replace(data=str(plain)))


def test_study_data_needs_both_splits_and_enough_validation_images(plain, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "000.png").write_bytes((plain / "train" / "000.png").read_bytes())
    (flat / "metadata.jsonl").write_text('{"file_name": "000.png", "text": "red"}\n')
    cfg = micro_study(tmp_path / "s").replace(data=str(flat))
    with pytest.raises(DataError, match="no validation split"):
        metrics_for_data(cfg)
    big_n = micro_study(tmp_path / "s", data=str(plain))
    big_n = big_n.replace(sweep=big_n.sweep.replace(n_images=64, metrics=("fd_effnet",)))
    with pytest.raises(DataError, match="fewer than the sweep's n_images=64"):
        check_study_metrics(big_n.replace(primary_metric="fd_effnet"))


def test_cli_refuses_unsupported_metrics_before_anything_runs(plain, tmp_path, capsys):
    out = tmp_path / "study"
    config = str(micro_study(out).save(tmp_path / "micro.toml"))
    argv = ["study", "--config", config, "--data", str(plain), "--metrics", "fd-effnet,alignment"]
    assert main(argv) == 2
    assert "alignment" in capsys.readouterr().err
    assert not out.exists()  # nothing was written, let alone trained
    # the tiny preset scores 64 images per cell: more than this folder's validation images
    assert main(["study", "--data", str(plain), "--out", str(out)]) == 2
    assert "fewer than the sweep's n_images=64" in capsys.readouterr().err

    assert main(["study", "--config", config, "--data", str(plain), "--print-config"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)
    assert printed["sweep"]["metrics"] == ["fd_effnet"] and printed["primary_metric"] == "fd_effnet"
    assert printed["data"] == str(plain) and "fd_effnet" in captured.err


def test_help_says_what_data_and_metrics_are_accepted(capsys):
    with pytest.raises(SystemExit):
        main(["study", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("--data", "COCO root", "fd_effnet", "--metrics fid", "--clip-model"):
        assert phrase in text


def test_study_runs_end_to_end_on_a_plain_image_folder(plain, tmp_path, capfd):
    """The whole study on a folder without shapes attributes: FD-EffNet is chosen (no probe,
    no alignment), every stage runs, and --no-progress draws no bar."""
    out = tmp_path / "study"
    cfg = micro_study(out, widths=(8, 16))
    cfg = cfg.replace(
        sweep=cfg.sweep.replace(samplers=("ddim",), n_images=4, bootstrap=10),
        train=cfg.train.replace(eval_steps=(2,)),
        preview_prompts=2,
    )
    path = cfg.save(tmp_path / "study.toml")
    t0 = time.perf_counter()
    assert main(["study", "--config", str(path), "--data", str(plain), "--no-progress"]) == 0
    wall = time.perf_counter() - t0
    captured = capfd.readouterr()
    assert "%|" not in captured.err and "it/s]" not in captured.err, captured.err[-2000:]
    assert "metrics for" in captured.out and "fd_effnet" in captured.out

    with ResultsStore(out / "results.sqlite") as store:
        rows = store.rows()
    # 2 widths x (1 sampler x 2 steps x 2 guidance), 4 optima on fresh seeds, and each width's
    # checkpoint at step 2 and final model at the checkpoint setting
    assert len(rows) == 8 + 4 + 4
    assert all(set(r["metrics"]) == {"fd_effnet"} for r in rows)
    assert {r["protocol"]["reference"]["dataset"] for r in rows} == {str(plain)}
    floors = json.loads((out / "floors.json").read_text())
    assert set(floors) == {"fd_effnet", "meta"}
    html = (out / "report" / "index.html").read_text()
    assert "FD-EffNet" in html and "alignment" not in html.lower()
    assert not (out / "data").exists()  # the user's folder is used, nothing is generated
    print(f"end-to-end study on a plain folder: {wall:.1f} s")
