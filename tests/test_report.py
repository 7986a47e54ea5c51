"""Tests for ldmscale.report and the `report` command: synthetic rows, logs and grids."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_study_rows
from ldmscale.cli import main
from ldmscale.report import ReportError, SampleGrid, build_report, load_sample_grids

EVIL = "a red <script>alert('x')</script> circle & square"


def _run(root: Path, c: int, norm_cost: float, n: int = 60) -> Path:
    run = root / f"c{c}"
    (run / "model").mkdir(parents=True)
    meta = {"unet_spec": {"c": c}, "norm_cost": norm_cost}
    (run / "model" / "ldmscale_model.json").write_text(json.dumps(meta))
    lines = []
    for i in range(1, n + 1):
        step = 10 * i
        loss = 0.1 + 0.4 / (1 + step / 100) + 0.01 * np.sin(i)
        rec = {"step": step, "loss": loss, "lr": 1e-4, "images_seen": 8 * step}
        rec.update(train_compute=norm_cost * step, wall_time=float(i))
        lines.append(json.dumps(rec))
    (run / "log.jsonl").write_text("\n".join(lines) + "\n{torn")  # a killed run's last line
    return run


def _grid(path: Path, seed: int) -> Path:
    img = (np.random.default_rng(seed).random((40, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture
def inputs(tmp_path, study_rows):
    runs = [_run(tmp_path / "runs", 64, 0.07), _run(tmp_path / "runs", 320, 1.0)]
    grids = [
        SampleGrid(_grid(tmp_path / "g64.png", 0), EVIL, "shapes-c64 <b>", 3.5),
        SampleGrid(_grid(tmp_path / "g320.png", 1), "ddim 5 steps", "shapes-c320", 5.0),
    ]
    return study_rows, runs, grids


def _imgs(page: str) -> list[str]:
    return re.findall(r"<img src='([^']+)'", page)


def test_report_is_self_contained_and_escaped(tmp_path, inputs):
    rows, runs, grids = inputs
    table = [{"c": 64, "params": 38_800_580, "gflops_xla": 56.5, "norm_cost": 0.0716}]
    out = build_report(rows, runs, grids, tmp_path / "rep", family_table=table, title="T <i>")
    assert out == tmp_path / "rep" / "index.html"
    page = out.read_text()
    srcs = _imgs(page)
    # Fig. 3, 8, 9, 11 and two sample grids, all relative PNGs beside the page.
    assert len(srcs) == 6
    for s in srcs:
        assert not s.startswith(("/", "http", "file:")) and s.endswith(".png")
        assert (out.parent / s).is_file() and (out.parent / s).read_bytes()[:4] == b"\x89PNG"
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page)  # no external resources
    assert "<link" not in page and "<style>" in page
    # User text is escaped: the only <script> is the report's own loader.
    assert page.count("<script>") == 1 and "<script>alert" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; circle &amp; square" in page
    assert "shapes-c64 &lt;b&gt;" in page and "<title>T &lt;i&gt;</title>" in page
    # Family tables, training-loss axis, verdict.
    assert "38,800,580" in page and "Paper-scale family" in page
    assert "training loss" in page.lower() and "no checkpoint was scored" in page
    assert "Primary metric: <b>fid</b>" in page
    assert "wins" in page and "tie between" in page and "CI includes 0" in page
    assert "Verdict 1: widths at equal sampling cost" in page and "cost ratio" in page
    assert "No floors were given" in page and "same images: biased" in page
    # No temporary folders left beside the report.
    assert sorted(p.name for p in (tmp_path).iterdir() if p.name.startswith(".")) == []


def test_report_fig3_uses_checkpoint_metric_when_present(tmp_path):
    rows = make_study_rows(with_checkpoints=True)
    # The store keeps train_step in provenance.
    for r in rows:
        if "train_step" in r:
            r["provenance"]["train_step"] = r.pop("train_step")
    out = tmp_path / "rep"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    page = build_report(rows, [], [], out, primary_metric="fid").read_text()
    assert not (out / "stale.txt").exists()  # replaced as a whole
    assert "fid of each width&#x27;s scored checkpoints" in page
    assert "training loss" not in page.lower()
    assert "No sample grids were given" in page
    assert len(_imgs(page)) == 4


def _row(model, c, nc, steps, fid, half=0.3):
    return {
        "cell_id": f"{model}-{steps}",
        "model": model,
        "c": c,
        "params": c * 1000,
        "norm_cost": nc,
        "sampler": "ddim",
        "steps": steps,
        "guidance": 3.0,
        "sampling_cost": nc * steps,
        "metrics": {"fd_probe": {"value": fid, "lo": fid - half, "hi": fid + half, "n": 100}},
    }


def test_verdict_says_what_the_data_say():
    from ldmscale.report import verdict_html

    # The largest width is better at every budget, with tight intervals.
    rows = [_row("s", 8, 0.25, n, 20.0 + 40 / n) for n in (4, 8, 16, 32)]
    rows += [_row("b", 16, 1.0, n, 10.0 + 4 / n) for n in (1, 2, 4, 8)]
    text = verdict_html(rows, "fd_probe")
    assert "Here the largest model (c=16) wins outright at 4 of 4 budgets" in text
    # Overlapping intervals everywhere: no size is declared.
    rows = [_row("s", 8, 0.25, n, 10.0, half=5) for n in (4, 8)]
    rows += [_row("b", 16, 1.0, n, 10.5, half=5) for n in (1, 2)]
    text = verdict_html(rows, "fd_probe")
    assert "do not separate the sizes" in text and "tie between c=8, c=16" in text
    # One width only.
    assert "Only one model size (c=8)" in verdict_html(rows[:2], "fd_probe")


def test_report_refuses_empty_and_missing(tmp_path, study_rows):
    with pytest.raises(ReportError, match="sweep"):
        build_report([], [], [], tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        build_report(study_rows, [], [tmp_path / "nope.png"], tmp_path / "r")
    with pytest.raises(ReportError, match="log.jsonl"):
        build_report(study_rows, [tmp_path], [], tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_load_sample_grids_reads_samples_json(tmp_path):
    for c, cost in ((8, 2.0), (16, 2.0)):
        d = tmp_path / f"c{c}"
        d.mkdir()
        _grid(d / "grid.png", c)
        meta = {
            "model": f"shapes-c{c}",
            "sampler": {"name": "ddim", "steps": 20, "guidance": 3.0},
            "sampling_cost": cost,
            "images": [{"file": "00000.png", "prompt": EVIL, "seed": 0}],
        }
        (d / "samples.json").write_text(json.dumps(meta))
    grids = load_sample_grids(tmp_path)
    assert [g.model for g in grids] == ["shapes-c16", "shapes-c8"]  # sorted by path
    assert grids[0].sampling_cost == 2.0
    assert grids[1].caption == f"ddim, 20 steps, w=3 -- prompts: {EVIL}"


def test_cli_report(tmp_path, inputs, capsys):
    rows, runs, _ = inputs
    store = tmp_path / "rows.json"
    store.write_text(json.dumps(rows))
    samples = tmp_path / "samples"
    samples.mkdir()
    _grid(samples / "c64_cost3.png", 3)
    args = ["report", "--store", str(store), "--runs", ",".join(map(str, runs))]
    args += ["--samples", str(samples), "--out", str(tmp_path / "rep"), "--no-paper-table"]
    assert main(args + ["--metric", "alignment"]) == 0
    assert "report written" in capsys.readouterr().out
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "Primary metric: <b>alignment</b> (higher is better)" in page
    assert "c64_cost3" in page


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


def test_report_renders_in_headless_chromium(tmp_path, inputs):
    """Every <img> of the report loads in a real browser (naturalWidth > 0)."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("LDMSCALE_REQUIRE_CHROMIUM") == "1":
            pytest.fail(
                "chromium is required (LDMSCALE_REQUIRE_CHROMIUM=1): apt-get install chromium"
            )
        pytest.skip("chromium not installed (apt-get install chromium)")
    rows, runs, grids = inputs
    page = build_report(rows, runs, grids, tmp_path / "rep")
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--user-data-dir=" + str(tmp_path / "prof"),
    ]
    res = subprocess.run(
        [*cmd, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    dom = res.stdout
    assert 'data-images-total="6"' in dom, res.stderr[-2000:]
    assert 'data-images-loaded="6"' in dom
    assert dom.count('data-loaded="1"') == 6 and 'data-loaded="0"' not in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [*cmd, "--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
        capture_output=True,
        timeout=120,
    )
    assert shot.is_file() and Image.open(shot).size == (1200, 1600)
