"""The study's stages and their keys, and the record that refuses mixing two configs in a stage
(fast: the stage folders are made by hand, nothing is trained)."""

from __future__ import annotations

import json

import pytest

from conftest import micro_study
from ldmscale.study import STAGES, StageMismatchError, build_stages
from ldmscale.study.record import RECORD_FILE, changed_fields
from ldmscale.study.run import preflight


def keys(cfg) -> dict[str, str]:
    return {s.id: s.key(cfg) for s in build_stages(cfg)}


def test_stages_run_in_order_with_one_training_unit_per_width(tmp_path):
    cfg = micro_study(tmp_path)
    stages = build_stages(cfg)
    assert [s.id for s in stages] == [
        "data", "autoencoder", "train/c8", "train/c16", "samples", "sweep", "confirm",
        "checkpoints", "floors", "report",
    ]  # fmt: skip
    assert list(dict.fromkeys(s.name for s in stages)) == list(STAGES)
    owned = {s.id: s.outputs(cfg) for s in stages if s.outputs}
    assert owned == {
        "data": cfg.root / "data" / "shapes",
        "autoencoder": cfg.root / "autoencoder",
        "train/c8": cfg.root / "runs" / "c8",
        "train/c16": cfg.root / "runs" / "c16",
    }


def test_each_key_covers_exactly_what_its_stage_depends_on(tmp_path):
    cfg = micro_study(tmp_path)
    base = keys(cfg)
    upstream = {"data", "autoencoder", "train/c8", "train/c16"}

    def changed(new) -> set[str]:
        return {k for k, v in keys(new).items() if base.get(k) != v}

    # the sweep's grid, metrics and N are no input of the data, the autoencoder or training
    sweep = cfg.sweep.replace(guidance=(2.0,), metrics=("fd_probe",), n_images=16)
    assert not changed(cfg.replace(sweep=sweep)) & upstream
    assert {"sweep", "confirm", "checkpoints", "floors"} <= changed(cfg.replace(sweep=sweep))
    # the autoencoder is an input of everything built on it, not of the data
    ae = changed(cfg.replace(autoencoder=cfg.autoencoder.replace(steps=30)))
    assert {"autoencoder", "train/c8", "train/c16", "sweep"} <= ae and "data" not in ae
    # the text encoder is an input of training, not of the autoencoder
    te = changed(cfg.replace(text_encoder=cfg.text_encoder.replace(max_length=12)))
    assert {"train/c8", "train/c16"} <= te and not {"data", "autoencoder"} & te
    # a moved study folder keeps its keys; the training template's run_dir is set per width
    assert keys(cfg.replace(out_dir=str(tmp_path / "moved"))) == base
    assert not changed(cfg.replace(train=cfg.train.replace(run_dir="elsewhere"))) & upstream


def _fake_outputs(cfg) -> None:
    for folder in (cfg.data_dir(), cfg.vae_dir(), cfg.run_dir(8), cfg.run_dir(16)):
        folder.mkdir(parents=True)
        (folder / "made.txt").write_text("by hand")


def test_a_changed_owned_stage_is_refused_naming_the_fields_and_the_fix(tmp_path):
    cfg = micro_study(tmp_path / "s")
    _fake_outputs(cfg)
    preflight(cfg, build_stages(cfg))
    record = json.loads((cfg.root / RECORD_FILE).read_text())
    assert set(record["stages"]) == {"data", "autoencoder", "train/c8", "train/c16"}

    # a new grid, metric set, N, width or sampler settings: no owned stage changes
    wider = cfg.replace(
        widths=(8, 16, 32), sweep=cfg.sweep.replace(steps=(1, 2, 4), metrics=("fd_probe",))
    )
    preflight(wider, build_stages(wider))

    ae = cfg.replace(autoencoder=cfg.autoencoder.replace(steps=30, lr=1e-3))
    with pytest.raises(StageMismatchError) as e:
        preflight(ae, build_stages(ae))
    text = str(e.value)
    assert "'autoencoder'" in text and "autoencoder.steps: 20 -> 30" in text
    assert "autoencoder.lr" in text and str(cfg.vae_dir()) in text and "--out" in text

    # with the autoencoder deleted, the runs built on the old one are refused next
    for f in cfg.vae_dir().iterdir():
        f.unlink()
    cfg.vae_dir().rmdir()
    with pytest.raises(StageMismatchError, match=r"'train/c8'.*autoencoder\.steps: 20 -> 30"):
        preflight(ae, build_stages(ae))
    # and the unchanged config still passes
    preflight(cfg, build_stages(cfg))


def test_folders_of_the_old_code_resume_from_study_config_json(tmp_path):
    """A folder written before stages.json existed holds study_config.json: it stands for every
    stage's record, so the same config resumes and a changed stage is refused."""
    cfg = micro_study(tmp_path / "s")
    _fake_outputs(cfg)
    cfg.save(cfg.root / "study_config.json")
    steps = cfg.replace(train=cfg.train.replace(steps=5))
    with pytest.raises(StageMismatchError, match=r"'train/c8'.*train\.steps: 4 -> 5"):
        preflight(steps, build_stages(steps))
    assert not (cfg.root / RECORD_FILE).exists()  # refused before anything was written
    preflight(cfg, build_stages(cfg))
    assert (cfg.root / RECORD_FILE).is_file()
    (cfg.root / "study_config.json").unlink()  # from now on stages.json alone decides
    with pytest.raises(StageMismatchError, match=r"'train/c8'.*train\.steps: 4 -> 5"):
        preflight(steps, build_stages(steps))


def test_changed_fields_lists_dotted_leaves():
    old = {"a": {"b": 1, "c": [1, 2]}, "d": 3}
    new = {"a": {"b": 2, "c": [1, 2]}, "e": 4}
    assert changed_fields(old, new) == {"a.b": (1, 2), "d": (3, None), "e": (None, 4)}


# A study task (ldmscale.study.tasks) defined here: one stage that writes a file, one report
# section. The tests register this module under the name "toy".
def _toy_stages(cfg):
    from ldmscale.study import Stage

    def run(run):
        (run.cfg.root / "toy.txt").write_text(str(run.cfg.task_options["toy"]["n"]))

    return [
        Stage(
            "toy",
            lambda cfg: {"n": cfg.task_options["toy"]["n"]},
            lambda run: (run.cfg.root / "toy.txt").is_file(),
            run,
        )
    ]


def _toy_report(run, figures):
    return [f"<h2>Toy</h2><p>n = {run.cfg.task_options['toy']['n']}</p>"]


def _toy_task():
    from ldmscale.study.tasks import Task

    return Task("toy", "a test task", (), _toy_stages, _toy_report, lambda preset: {"n": 3})


@pytest.fixture
def toy_task(monkeypatch):
    import sys

    from ldmscale.study import tasks

    monkeypatch.setitem(tasks.TASK_MODULES, "toy", __name__)
    monkeypatch.setattr(sys.modules[__name__], "TASK", _toy_task(), raising=False)
    return tasks


def test_a_task_adds_its_stages_before_the_report_and_runs_alone(tmp_path, toy_task):
    from ldmscale.config import ConfigError
    from ldmscale.study import run_study
    from ldmscale.study.stages import default_stages

    cfg = micro_study(tmp_path)
    with pytest.raises(ConfigError, match="unknown study task"):
        cfg.replace(tasks=("nope",))
    with pytest.raises(ConfigError, match="not in tasks"):
        cfg.replace(task_options={"toy": {"n": 1}})
    assert "tasks" not in cfg.to_dict()  # no task: every existing config and key unchanged
    toy = cfg.replace(tasks=("toy",), task_options={"toy": {"n": 5}})
    names = [s.name for s in build_stages(toy)]
    assert (
        names[-2:] == ["toy", "report"] and names[:-2] == [s.name for s in build_stages(cfg)][:-1]
    )
    assert default_stages(cfg) == STAGES and default_stages(toy) == ("toy", "report")
    assert type(toy).from_dict(toy.to_dict()) == toy
    result = run_study(toy, progress=False, log=lambda s: None)
    assert (toy.root / "toy.txt").read_text() == "5"
    page = result.report.read_text()
    assert "<h2>Toy</h2><p>n = 5</p>" in page
    assert not (toy.root / "runs").exists()  # the task needs no text-to-image stage


def test_cli_task_takes_the_task_defaults_for_the_preset(tmp_path, toy_task):
    import argparse

    from ldmscale.cli.study import resolve_config

    args = argparse.Namespace(
        config=None, preset="tiny", out=str(tmp_path), task=("toy",), data=None, metrics=None,
        clip_model=None, print_config=False,
    )  # fmt: skip
    cfg = resolve_config(args)
    assert cfg.tasks == ("toy",) and cfg.task_options == {"toy": {"n": 3}}
