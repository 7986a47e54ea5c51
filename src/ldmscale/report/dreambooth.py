"""The DreamBooth sections of the study report: Fig. 6 (the subject at held-out positions, per
width), the fidelity table against width and sampling cost, and the width verdicts (paired
bootstraps between the smallest and the largest width, which share prompts and seeds).

Reads what :mod:`ldmscale.study.task_dreambooth` wrote under ``<study>/dreambooth/``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ldmscale.report.markup import _esc, _figure, _table


def _ci(d: dict[str, float]) -> str:
    return f"{d['rate']:.2f} [{d['low']:.2f}, {d['high']:.2f}]"


def _diff(d: dict[str, float]) -> str:
    return f"{d['diff']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"


def load_results(root: Path, widths: Sequence[int]) -> dict[int, dict[str, Any]]:
    """``result.json`` of every width that has one."""
    out = {}
    for c in widths:
        path = root / f"c{c}" / "result.json"
        if path.is_file():
            out[c] = json.loads(path.read_text())
    return out


def fidelity_rows(results: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """One table row per width: rates with 95% CIs and the paired readings."""
    rows = []
    for c, r in sorted(results.items()):
        m, p = r["models"], r["paired"]
        rows.append({
            "width c": c,
            "sampling cost": round(r["sampling_cost"], 4),
            "subject (fine-tune)": _ci(m["prior"]["subject"]),
            "subject (parent)": _ci(m["parent"]["subject"]),
            "prompt fidelity": _ci(m["prior"]["prompt"]),
            "leak (prior)": _ci(m["prior"]["leak"]),
            "leak (no prior)": _ci(m["ablation"]["leak"]),
            "alignment before": _ci(m["parent"]["general"]),
            "alignment after": _ci(m["prior"]["general"]),
            "alignment after, no prior": _ci(m["ablation"]["general"]),
            "leak prior - no prior": _diff(p["leak_prior_minus_ablation"]),
        })  # fmt: skip
    return rows


def width_verdicts(root: Path, results: dict[int, dict[str, Any]], n_boot: int = 1000) -> list[str]:
    """Does subject / prompt fidelity grow with width? Paired bootstraps (the widths share
    prompts and seeds) of the largest minus the smallest width, then of each adjacent pair."""
    from ldmscale.paired import paired_difference

    widths = sorted(results)
    if len(widths) < 2:
        return []
    hits = {c: np.load(root / f"c{c}" / "hits.npz") for c in widths}
    pairs = [(widths[0], widths[-1])]
    pairs += [p for p in zip(widths, widths[1:], strict=False) if p != pairs[0]]
    lines = []
    for s, label in (("subject", "subject fidelity"), ("prompt", "prompt fidelity")):
        for lo_c, hi_c in pairs:
            key = f"prior/{s}"
            r = paired_difference(hits[hi_c][key].astype(float), hits[lo_c][key].astype(float),
                                  np.mean, n_boot=n_boot, direction="max")  # fmt: skip
            verdict = (
                "grows" if r.lo > 0 else "shrinks" if r.hi < 0 else "does not change measurably"
            )
            lines.append(
                f"{label} {verdict} from c={lo_c} to c={hi_c}: {r.diff:+.2f} "
                f"[{r.lo:+.2f}, {r.hi:+.2f}] (paired bootstrap, 95%, n={r.n})"
            )
    return lines


def _grid_png(rows: list[np.ndarray], path: Path) -> Path:
    """Rows of uint8 images ``[k, H, W, 3]`` (equal k) as one PNG, upscaled to >= 256 px high."""
    from PIL import Image

    img = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    scale = max(1, -(-256 // img.shape[0]))
    big = Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST)
    big.save(path)
    return path


def fig6(root: Path, results: dict[int, dict[str, Any]], path: Path) -> Path | None:
    """Rows = widths, columns = the fine-tune's images at the held-out subject prompts."""
    grids = [np.load(root / f"c{c}" / "grid.npz")["subject_prior"] for c in sorted(results)]
    if not grids:
        return None
    k = min(len(g) for g in grids)
    return _grid_png([g[:k] for g in grids], path)


def fig_leak(root: Path, results: dict[int, dict[str, Any]], path: Path) -> Path | None:
    """Rows = widths; the class prompts (one image each) with the prior, then without it."""
    rows = []
    for c in sorted(results):
        g = np.load(root / f"c{c}" / "grid.npz")
        rows.append(np.concatenate([g["class_prior"], g["class_ablation"]]))
    if not rows:
        return None
    k = min(len(r) for r in rows)
    return _grid_png([r[:k] for r in rows], path)


def dreambooth_sections(root: Path, widths: Sequence[int], figures: Path) -> list[str]:
    """The report's DreamBooth sections (empty when no width has results)."""
    results = load_results(Path(root), widths)
    if not results:
        return []
    parts = ["<h2>DreamBooth (Fig. 6, measured)</h2>"]
    any_r = next(iter(results.values()))
    opts = any_r["options"]
    parts.append(
        f"<p>Each width fine-tuned {opts['steps']} steps (lr {opts['lr']}) on "
        f"{opts['n_subject']} images of the subject (a large purple ring, identifier "
        f"'{_esc(opts['identifier'])}') at the top positions, with {opts['prior_images']} prior "
        "images (weight "
        f"{opts['prior_weight']}) and without (ablation). Subject fidelity: the ring at the "
        "prompted <em>held-out</em> (bottom) position; prompt fidelity: colour and size there "
        "(shapes probe); leak: a ring anywhere in class-prompt images; alignment: text "
        "alignment on validation captions. Rates with 95% bootstrap CIs; differences paired "
        "(same prompts and seeds).</p>"
    )
    fig = fig6(Path(root), results, figures / "fig6_dreambooth.png")
    if fig is not None:
        rows = ", ".join(f"c={c}" for c in sorted(results))
        parts.append(_figure(f"figures/{fig.name}", f"Fig. 6: the subject at held-out positions, "
                             f"rows {rows} (top to bottom)", "DreamBooth grid"))  # fmt: skip
    leak = fig_leak(Path(root), results, figures / "dreambooth_leak.png")
    if leak is not None:
        parts.append(_figure(f"figures/{leak.name}", "The class prompts (top left, top right, "
                             "bottom left, bottom right): with prior preservation (left four) "
                             "and without (right four); rows as in Fig. 6", "leak grid"))  # fmt: skip
    parts.append(_table(fidelity_rows(results)))
    verdicts = width_verdicts(Path(root), results)
    if verdicts:
        parts.append("<ul>" + "".join(f"<li>{_esc(v)}</li>" for v in verdicts) + "</ul>")
    return parts
