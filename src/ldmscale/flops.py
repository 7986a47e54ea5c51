"""FLOP counting for one forward pass, in two named conventions.

Both count the module exactly as it runs, on whatever device its tensors live;
call them with meta tensors (see :func:`ldmscale.family.count_gflops`) so that
nothing is allocated or computed. FLOPs are floating-point operations, not MACs.

``dense``
    ``torch.utils.flop_counter.FlopCounterMode``: 2 FLOPs per multiply-add of every
    matmul, convolution and attention product; convolutions are counted as if
    the zero padding were data; bias adds, normalisations, activations and
    softmax are free. Count on the meta device: on real CPU tensors torch 2.13's
    fused SDPA kernel escapes ``FlopCounterMode`` and attention is silently
    dropped; on meta, SDPA runs as explicit ``bmm`` ops, which it does count.

``xla``
    What XLA's HLO cost analysis reports for the same program (FLOPs plus
    transcendentals, each transcendental counted as one FLOP). The rules, per
    output element unless stated:

    * convolution: 2 FLOPs per multiply-add, counting only kernel taps that land
      inside the input (taps on zero padding and on the holes of a transposed
      convolution are skipped, as ``HloCostAnalysis::HandleConvolution`` does);
      plus 1 per output element for the bias add.
    * matmul (``mm``/``bmm``/``addmm``/``baddbmm``): 2·M·N·K, plus 1 per output
      element for the bias add.
    * attention (``F.scaled_dot_product_attention``, counted as one unit): the
      two matmuls (2·Lq·Lk·d each, per batch and head), plus 6 per logit:
      1 for the ``1/sqrt(d)`` scale and 5 for the softmax (max-reduce, subtract,
      exp, sum-reduce, divide); +1 per logit for a mask or causal select.
    * a standalone softmax: 5.
    * group / layer norm: 5 (mean, centre, square, variance sum, scale by the
      reciprocal std) + 2 for the affine scale and shift when present.
    * SiLU: 2 (sigmoid, multiply). GELU: 5 (exact erf form: scale, erf, add,
      two multiplies) or 9 (tanh form).
    * any other pointwise arithmetic aten op (add, mul, div, exp, sin, ...): 1.
    * reductions (sum, mean, amax, ...): 1 per input element.
    * data movement (views, permutes, cat, copies, casts, nearest upsampling): 0.

    Aten ops with a floating output that match no rule are listed in
    :attr:`FlopCount.uncounted` rather than guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

CONVENTIONS: tuple[str, ...] = ("dense", "xla")

aten = torch.ops.aten


class FlopConventionError(ValueError):
    """An unknown FLOP-counting convention."""


@dataclass
class FlopCount:
    """The FLOPs of one call: ``total`` and a per-rule breakdown (both in FLOPs)."""

    convention: str
    total: int
    by_op: dict[str, int] = field(default_factory=dict)
    uncounted: list[str] = field(default_factory=list)

    @property
    def gflops(self) -> float:
        return self.total / 1e9


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise FlopConventionError(
            f"unknown FLOP convention {convention!r}; use one of {list(CONVENTIONS)} "
            "(dense = FlopCounterMode matmul/conv/attention only; xla = padding-aware "
            "convolutions plus elementwise ops, as XLA's cost analysis)"
        )
    return convention


def count_flops(
    module: Callable[..., Any],
    args: Sequence[Any] = (),
    kwargs: dict[str, Any] | None = None,
    convention: str = "xla",
) -> FlopCount:
    """Run ``module(*args, **kwargs)`` once under ``torch.no_grad`` and count its FLOPs."""
    check_convention(convention)
    kwargs = kwargs or {}
    if convention == "dense":
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            module(*args, **kwargs)
        by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
        return FlopCount("dense", int(counter.get_total_flops()), by_op)
    xla = XlaFlopCounter()
    with xla, torch.no_grad():
        module(*args, **kwargs)
    return FlopCount("xla", sum(xla.by_op.values()), dict(xla.by_op), sorted(xla.uncounted))


# --------------------------------------------------------------------------- xla rules


def valid_taps(
    n_in: int,
    n_out: int,
    kernel: int,
    stride: int = 1,
    pad_low: int = 0,
    dilation: int = 1,
    base_dilation: int = 1,
) -> int:
    """Number of (output position, kernel tap) pairs along one spatial dim whose input
    index is real data (not zero padding, not a hole of a base-dilated input)."""
    count = 0
    for k in range(kernel):
        for o in range(n_out):
            i = o * stride - pad_low + k * dilation
            if i % base_dilation:
                continue
            i //= base_dilation
            if 0 <= i < n_in:
                count += 1
    return count


def conv_macs_valid(
    x_shape: Sequence[int],
    w_shape: Sequence[int],
    out_shape: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
    transposed: bool,
    groups: int,
) -> int:
    """Multiply-adds of an aten convolution that read real input (no padding taps)."""
    batch = x_shape[0]
    spatial = len(x_shape) - 2
    if transposed:
        # w: [C_in, C_out/groups, *k]; as XLA sees it: stride-1 conv over the input
        # dilated by `stride`, padded by dilation*(k-1) - padding on the low side.
        c_in, c_out_g, *ks = w_shape
        macs_per_pos = c_in * c_out_g
        taps = [
            valid_taps(
                x_shape[2 + d],
                out_shape[2 + d],
                ks[d],
                stride=1,
                pad_low=dilation[d] * (ks[d] - 1) - padding[d],
                dilation=dilation[d],
                base_dilation=stride[d],
            )
            for d in range(spatial)
        ]
    else:
        c_out, c_in_g, *ks = w_shape
        macs_per_pos = c_out * c_in_g
        taps = [
            valid_taps(x_shape[2 + d], out_shape[2 + d], ks[d], stride[d], padding[d], dilation[d])
            for d in range(spatial)
        ]
    return batch * macs_per_pos * math.prod(taps)


ATTENTION_PER_LOGIT = 6  # 1 scale + 5 softmax
SOFTMAX_PER_ELEM = 5
NORM_PER_ELEM = 5
NORM_AFFINE_PER_ELEM = 2
SILU_PER_ELEM = 2
GELU_ERF_PER_ELEM = 5
GELU_TANH_PER_ELEM = 9

_SOFTMAX = {"_softmax", "_safe_softmax", "_log_softmax", "softmax", "log_softmax"}
_REDUCTIONS = {"sum", "mean", "amax", "amin", "max", "min", "prod", "var", "std", "var_mean"}
_FREE = {
    "view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "unsqueeze",
    "squeeze", "slice", "select", "split", "split_with_sizes", "chunk", "unbind", "cat",
    "stack", "clone", "contiguous", "_to_copy", "to", "copy_", "copy", "detach", "alias",
    "empty", "empty_like", "empty_strided", "new_empty", "zeros", "zeros_like", "ones",
    "ones_like", "full", "full_like", "arange", "fill_", "fill", "lift_fresh", "as_strided",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "_upsample_nearest_exact2d",
    "constant_pad_nd", "index", "index_select", "gather", "repeat", "flip", "roll",
    "masked_fill", "where", "_reshape_alias", "narrow", "unfold", "flatten", "movedim",
}  # fmt: skip


def _numel(x: Any) -> int:
    return x.numel() if isinstance(x, torch.Tensor) else 0


def _first_tensor(out: Any) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, list | tuple) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


class _AttentionAsUnit(TorchFunctionMode):
    """Counts ``F.scaled_dot_product_attention`` as one unit and hides its inner ops."""

    def __init__(self, counter: XlaFlopCounter) -> None:
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and not self.counter.paused:
            self.counter.add_attention(*args, **kwargs)
            with self.counter.pause():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


class XlaFlopCounter(TorchDispatchMode):
    """Context manager that counts FLOPs with the ``xla`` rules of this module's docstring.

    ``by_op`` maps rule names (``conv``, ``matmul``, ``bias``, ``attention``,
    ``attention_softmax``, ``norm``, ``silu``, ``gelu``, ``elementwise:<op>``, ...) to FLOPs.
    """

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self.uncounted: set[str] = set()
        self.paused = False
        self._function_mode = _AttentionAsUnit(self)

    def __enter__(self):
        self._function_mode.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        out = super().__exit__(*exc)
        self._function_mode.__exit__(*exc)
        return out

    @contextmanager
    def pause(self):
        self.paused, old = True, self.paused
        try:
            yield
        finally:
            self.paused = old

    def add_attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        **_: Any,
    ) -> None:
        batch = math.prod(torch.broadcast_shapes(query.shape[:-2], key.shape[:-2]))
        lq, d = query.shape[-2:]
        lk, dv = value.shape[-2:]
        logits = batch * lq * lk
        self.by_op["attention_matmul"] += 2 * logits * d + 2 * logits * dv
        per_logit = ATTENTION_PER_LOGIT + int(attn_mask is not None) + int(bool(is_causal))
        self.by_op["attention_softmax"] += per_logit * logits

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.paused:
            self._count(func, args, kwargs, out)
        return out

    def _count(self, func, args, kwargs, out) -> None:
        name = func.overloadpacket.__name__
        first = _first_tensor(out)
        n_out = _numel(first)
        if func is aten.convolution.default:
            x, w, bias, stride, padding, dilation, transposed, _, groups = args
            macs = conv_macs_valid(
                x.shape, w.shape, first.shape, stride, padding, dilation, transposed, groups
            )
            self.by_op["conv"] += 2 * macs
            if bias is not None:
                self.by_op["bias"] += n_out
        elif name in ("mm", "bmm", "addmm", "baddbmm"):
            a = args[1] if name in ("addmm", "baddbmm") else args[0]
            self.by_op["matmul"] += 2 * n_out * a.shape[-1]
            if name in ("addmm", "baddbmm"):
                self.by_op["bias"] += n_out
        elif name in _SOFTMAX:
            self.by_op["softmax"] += SOFTMAX_PER_ELEM * n_out
        elif name in ("native_group_norm", "native_layer_norm"):
            weight = args[1] if name == "native_group_norm" else args[2]
            per = NORM_PER_ELEM + (NORM_AFFINE_PER_ELEM if weight is not None else 0)
            self.by_op["norm"] += per * n_out
        elif name == "silu":
            self.by_op["silu"] += SILU_PER_ELEM * n_out
        elif name == "gelu":
            tanh = kwargs.get("approximate", args[1] if len(args) > 1 else "none") == "tanh"
            self.by_op["gelu"] += (GELU_TANH_PER_ELEM if tanh else GELU_ERF_PER_ELEM) * n_out
        elif name in _FREE:
            pass
        elif name in _REDUCTIONS:
            self.by_op["reduction"] += _numel(args[0])
        elif torch.Tag.pointwise in func.tags:
            if first is not None and (first.is_floating_point() or first.is_complex()):
                self.by_op[f"elementwise:{name}"] += n_out
        elif first is not None and first.is_floating_point():
            self.uncounted.add(str(func))
