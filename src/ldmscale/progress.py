"""Progress bars: one process-wide switch beside each call's own ``progress`` argument.

Most functions take ``progress`` and pass it down, but not every bar is reachable that way: a
dataset check inside the trainer, the shapes probe trained on demand by a metric, and the
weight-loading bars of transformers, diffusers and huggingface_hub. Within
``with progress_bars(False):`` none of them is drawn (``ldmscale study --no-progress``):
:func:`show_bar` is False for the package's own bars that consult it, and the three
libraries' own switches are off; the previous state comes back on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_ENABLED = True


def bars_enabled() -> bool:
    """False inside ``progress_bars(False)``."""
    return _ENABLED


def show_bar(progress: bool | None, auto: bool = True) -> bool:
    """Whether to draw a bar: never while bars are switched off; else ``progress``, or
    ``auto`` (the caller's rule, e.g. "at least 2,000 images") when ``progress`` is None."""
    return _ENABLED and (auto if progress is None else bool(progress))


def _library_switches() -> list[tuple]:
    """(is_enabled, enable, disable) of the libraries' own progress-bar switches."""
    import diffusers.utils.logging as diffusers_logging
    import huggingface_hub.utils as hub
    import transformers.utils.logging as transformers_logging

    return [
        (
            lib.is_progress_bar_enabled,
            lib.enable_progress_bar,
            lib.disable_progress_bar,
        )
        for lib in (transformers_logging, diffusers_logging)
    ] + [
        (
            lambda: not hub.are_progress_bars_disabled(),
            hub.enable_progress_bars,
            hub.disable_progress_bars,
        )
    ]


@contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """Within the block, draw bars only if ``enabled`` (then each call's own ``progress``
    decides); restores the previous state of every switch on exit."""
    global _ENABLED
    if enabled:
        yield
        return
    before = _ENABLED
    switches = _library_switches()
    states = [is_on() for is_on, _, _ in switches]
    _ENABLED = False
    for _, _, off in switches:
        off()
    try:
        yield
    finally:
        _ENABLED = before
        for (_, on, _), was_on in zip(switches, states):
            if was_on:
                on()
