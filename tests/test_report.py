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
from ldmscale.family import UNetSpec
from ldmscale.modelfolder import ModelMeta, write_model_meta
from ldmscale.report import (
    ReportError,
    SampleGrid,
    build_report,
    load_sample_grids,
    read_training_log,
)
from ldmscale.text import TextEncoderSpec

EVIL = "a red <script>alert('x')</script> circle & square"


def _run(root: Path, c: int, norm_cost: float, n: int = 60) -> Path:
    run = root / f"c{c}"
    meta = ModelMeta(UNetSpec(c=c), TextEncoderSpec(), scaling_factor=0.5, norm_cost=norm_cost)
    write_model_meta(run / "model", meta)
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
    run = _run(tmp_path / "runs", 64, 0.07)
    assert read_training_log(run).c == 64
    (run / "model" / "ldmscale_model.json").write_text(json.dumps({"unet_spec": {"c": 64}}))
    with pytest.raises(ReportError, match="c64: .*format None is not 'ldmscale-model/1'"):
        read_training_log(run)


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


# ----------------------------------------------------------------------------- the new protocol


def _protocol_study() -> tuple[list[dict], dict[str, np.ndarray], dict]:
    """Synthetic rows of the new protocol with per-image alignment rows: c=8 (one seed) and
    c=32 (two training seeds), DDIM and DDPM, trailing spacing plus a leading control, seed
    sets 0 (select) and 1000 (fresh), checkpoint rows of c=32 seed 0, and floors."""
    rng = np.random.default_rng(0)
    hard = rng.random(64)  # per-prompt difficulty shared by every cell
    rows, cache = [], {}
    models = (("h8", 8, 0.25, None, 0.0), ("h32a", 32, 1.0, 0, 0.15), ("h32b", 32, 1.0, 1, 0.12))
    for h, c, nc, seed, gain in models:
        for sampler in ("ddim", "ddpm"):
            for spacing, steps_list in (("trailing", (4, 8, 16, 50)), ("leading", (4, 16))):
                for steps in steps_list:
                    for w in (1.5, 2.0, 3.0, 4.0):
                        for seed0 in (0, 1000):
                            # c=8 peaks at the grid's low edge; c=32 inside it.
                            opt = 1.0 if c == 8 else 3.0
                            q = 0.3 + gain - 0.05 * abs(w - opt) - 0.4 / steps
                            q -= 0.05 if spacing == "leading" else 0.0
                            noise = rng.normal(0, 0.02, 64)
                            hits = np.clip(q + 0.5 * (hard - 0.5) + noise, 0, 1)
                            v = float(hits.mean())
                            cid = f"{h}-{sampler}-{spacing}-{steps}-{w}-{seed0}"
                            cache[cid] = hits
                            rows.append(
                                {
                                    "cell_id": cid,
                                    "model": f"shapes-c{c}",
                                    "model_hash": h,
                                    "model_path": f"/runs/c{c}-s{seed}/model",
                                    "c": c,
                                    "params": c * 1000,
                                    "norm_cost": nc,
                                    "sampler": sampler,
                                    "steps": steps,
                                    "guidance": w,
                                    "sampling_cost": nc * steps,
                                    "n_images": 64,
                                    "timestep_spacing": spacing,
                                    "seed0": seed0,
                                    "train_seed": seed,
                                    "train_step": 4000,
                                    "train_compute": nc * 4000,
                                    "metrics": {
                                        "alignment": {
                                            "value": v,
                                            "lo": v - 0.07,
                                            "hi": v + 0.07,
                                            "n": 64,
                                        }
                                    },  # fmt: skip
                                }
                            )
    for step in (500, 1000, 2000):
        v = 0.45 * step / 2000
        rows.append(
            {
                **rows[-1],
                "cell_id": f"ckpt-{step}",
                "model_hash": f"h32a-{step}",
                "model_path": f"/runs/c32-s0/checkpoints/step-{step}",
                "train_seed": 0,
                "sampler": "ddim",
                "steps": 50,
                "guidance": 3.0,
                "timestep_spacing": "trailing",
                "seed0": 1000,
                "sampling_cost": 50.0,
                "train_step": step,
                "train_compute": 1.0 * step,
                "metrics": {"alignment": {"value": v, "lo": v - 0.05, "hi": v + 0.05, "n": 64}},
            }
        )
    floors = {
        "alignment": {
            "real": {"value": 1.0, "lo": 0.99, "hi": 1.0, "n": 256},
            "reconstruction": {"value": 0.9, "lo": 0.86, "hi": 0.93, "n": 256},
        }
    }
    return rows, cache, floors


def test_report_protocol_pieces(tmp_path):
    from ldmscale.paired import RowSource

    rows, cache, floors = _protocol_study()
    source = RowSource(
        rows_fn=lambda r: {"alignment": cache[r["cell_id"]]} if r["cell_id"] in cache else None
    )
    page = build_report(
        rows, [], [], tmp_path / "rep", floors=floors, source=source, n_boot=100
    ).read_text()
    # Spacing: the verdicts use trailing, the leading control is a labelled series.
    assert "Verdicts at <b>trailing</b> timestep spacing (also stored: leading" in page
    assert "dashed squares: leading spacing (a control, not in the verdicts)" in page
    # Fresh seeds: every optimum reported on seed set 1000.
    assert "reported on seed set 1000 (fresh)" in page
    assert "Every optimum&#x27;s value is reported on a fresh seed set" in page
    # Edge flags: c=8 peaks below the grid (8 optima: 2 samplers x 4 steps), counted.
    assert "8 of 24 optima sit at the edge of their guidance grid (low: 8, high: 0)" in page
    assert "LOW EDGE" in page
    # Identity by hash: two seeds of c=32 are two models, with their spread.
    assert "c=32 seed 0" in page and "c=32 seed 1" in page
    assert "Seed-to-seed spread" in page
    # Table 1's quality row at DDIM 50 steps; floors as table rows.
    assert "DDIM, 50 steps, guidance 3" in page and "floor: real" in page
    assert (
        "real images of the cells" in page
        and "autoencoder reconstructions: 0.9 [0.86, 0.93]" in page
    )
    # Paired verdicts: the per-sampler equal-cost tables and the budget verdicts.
    assert "<h3>DDIM</h3>" in page and "<h3>DDPM</h3>" in page
    assert "(paired, n=64)" in page and "by paired bootstrap over shared prompts" in page
    assert "CI overlap" not in page.split("Verdict 2")[0].split("Verdict 1")[1]
    # Fig. 3 from the scored checkpoints of c=32 seed 0 (plus each run's final row).
    assert "each width&#x27;s scored checkpoints" in page and "training loss" not in page.lower()
    assert "Horizontal lines: floors" in page


def test_fig3_plots_checkpoints_per_run_against_train_compute(tmp_path):
    from ldmscale.report import Analysis, fig_training

    rows, _cache, floors = _protocol_study()
    import matplotlib.axes

    calls = []
    orig = matplotlib.axes.Axes.errorbar

    def spy(self, x, y, *a, **k):
        calls.append((k.get("label"), list(x), list(y)))
        return orig(self, x, y, *a, **k)

    matplotlib.axes.Axes.errorbar = spy
    try:
        made = fig_training(
            rows, [], "alignment", tmp_path / "f3.png", Analysis("alignment", floors=floors)
        )
    finally:
        matplotlib.axes.Axes.errorbar = orig
    assert made is not None and made[0].is_file()
    by_label = {lab: (x, y) for lab, x, y in calls}
    # Run c=32 seed 0: checkpoints at 500/1000/2000 and its final model at 4000 (train_compute).
    assert by_label["c=32 seed 0"][0] == [500.0, 1000.0, 2000.0, 4000.0]
    assert by_label["c=32 seed 0"][1][:3] == pytest.approx([0.1125, 0.225, 0.45])
    assert "seed set 1000" in made[1] and "real images: 1" in made[1]
