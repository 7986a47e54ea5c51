"""The process-wide progress-bar switch (``ldmscale.progress``, ``--no-progress``)."""

from __future__ import annotations

import transformers.utils.logging as transformers_logging

from ldmscale.data import load_dataset
from ldmscale.data.shapes import generate_shapes
from ldmscale.progress import bars_enabled, progress_bars, show_bar
from ldmscale.text import TextEncoderSpec, load_text_encoder


def _bar_drawn(err: str) -> bool:
    return "%|" in err or "it/s]" in err or "s/it]" in err


def test_show_bar_follows_the_switch_and_the_callers_rule():
    assert show_bar(None, auto=True) and not show_bar(None, auto=False)
    assert show_bar(True, auto=False) and not show_bar(False, auto=True)
    with progress_bars(False):
        assert not bars_enabled()
        assert not show_bar(True) and not show_bar(None, auto=True)
        with progress_bars(True):  # a nested True does not turn bars back on
            assert not show_bar(True)
    assert bars_enabled() and show_bar(True)


def test_switch_silences_dataset_and_shapes_bars_even_when_asked(tiny_shapes, tmp_path, capfd):
    load_dataset(tiny_shapes, split="validation", resolution=16, progress=True)
    assert _bar_drawn(capfd.readouterr().err)  # the control: the bar is there
    with progress_bars(False):
        load_dataset(tiny_shapes, split="validation", resolution=16, progress=True)
        generate_shapes(tmp_path / "s", n_train=4, n_val=2, resolution=8, progress=True)
    assert not _bar_drawn(capfd.readouterr().err)


def test_switch_silences_weight_loading_and_restores_it(capfd):
    spec = TextEncoderSpec(kind="minilm", max_length=8)
    load_text_encoder(spec)
    assert "Loading weights" in capfd.readouterr().err  # transformers' own bar
    with progress_bars(False):
        assert not transformers_logging.is_progress_bar_enabled()
        load_text_encoder(spec)
    assert not _bar_drawn(capfd.readouterr().err)
    assert transformers_logging.is_progress_bar_enabled()
