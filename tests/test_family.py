"""Tests for the UNet family's cost accounting (ldmscale.family, ldmscale.flops) and
`ldmscale family`. Counting runs on the meta device; only c=8/16 run real forwards."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ldmscale.cli import main
from ldmscale.config import ConfigError
from ldmscale.family import (
    PAPER_TABLE,
    PAPER_WIDTHS,
    UNetSpec,
    build_unet,
    count_flops,
    count_gflops,
    count_params,
    family_table,
    normalized_cost,
    round_params,
    unet_inputs,
)
from ldmscale.flops import FlopConventionError, conv_macs_valid, valid_taps
from ldmscale.flops import count_flops as count_module_flops

TINY = dict(latent_size=8, context_len=8, context_dim=32)


# ------------------------------------------------------------------ parameters


def test_param_counts_round_to_paper_table():
    for c in PAPER_WIDTHS:
        assert round_params(count_params(UNetSpec(c=c))) == PAPER_TABLE[c].params, c
    assert count_params(UNetSpec(c=320)) == 865_910_724  # SD-1.5 layout, 1024-d context


def test_param_count_matches_real_model():
    spec = UNetSpec(c=16, **TINY)
    real = sum(p.numel() for p in build_unet(spec, "cpu").parameters())
    assert count_params(spec) == real


# ------------------------------------------------------------------ FLOP rules


class _Attention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_attention_is_counted_in_both_conventions():
    b, h, lq, lk, d = 2, 4, 16, 8, 32
    q = torch.zeros(b, h, lq, d, device="meta")
    kv = torch.zeros(b, h, lk, d, device="meta")
    matmuls = 2 * 2 * b * h * lq * lk * d
    assert count_module_flops(_Attention(), (q, kv, kv), convention="dense").total == matmuls
    xla = count_module_flops(_Attention(), (q, kv, kv), convention="xla")
    assert xla.total == matmuls + 6 * b * h * lq * lk  # scale + 5-op softmax per logit
    assert xla.by_op["attention_matmul"] == matmuls


def test_unet_count_includes_attention():
    spec = UNetSpec(c=16, **TINY)
    dense = count_flops(spec, "dense")
    assert dense.by_op.get("aten.bmm", 0) > 0  # SDPA's two products, seen on meta
    xla = count_flops(spec, "xla")
    assert xla.by_op["attention_matmul"] == dense.by_op["aten.bmm"]
    assert xla.uncounted == []


def test_conv_counts_skip_padding_taps():
    # 3x3, pad 1, on 4 positions: 12 taps per dim, 2 of them on padding.
    assert valid_taps(4, 4, 3, stride=1, pad_low=1) == 10
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=True, device="meta")
    x = torch.zeros(1, 3, 4, 4, device="meta")
    dense = count_module_flops(conv, (x,), convention="dense").total
    xla = count_module_flops(conv, (x,), convention="xla")
    assert dense == 2 * 5 * 3 * 16 * 9
    assert xla.by_op["conv"] == 2 * 5 * 3 * 10 * 10
    assert xla.by_op["bias"] == 5 * 16


def test_transposed_conv_without_overlap_padding_matches_dense():
    conv = nn.ConvTranspose2d(4, 6, 2, stride=2, device="meta")
    x = torch.zeros(1, 4, 5, 5, device="meta")
    out_shape = (1, 6, 10, 10)
    macs = conv_macs_valid(x.shape, conv.weight.shape, out_shape, (2, 2), (0, 0), (1, 1), True, 1)
    assert macs == 4 * 6 * 25 * 4
    dense = count_module_flops(conv, (x,), convention="dense").total
    assert count_module_flops(conv, (x,), convention="xla").by_op["conv"] == dense


@pytest.mark.parametrize(
    "module, per_elem",
    [
        (nn.LayerNorm(16), 7),
        (nn.LayerNorm(16, elementwise_affine=False), 5),
        (nn.GroupNorm(4, 8), 7),
        (nn.SiLU(), 2),
        (nn.GELU(), 5),
        (nn.GELU(approximate="tanh"), 9),
        (nn.Softmax(dim=-1), 5),
    ],
)
def test_xla_elementwise_rules(module, per_elem):
    x = torch.zeros(2, 8, 4, 16, device="meta")
    module = module.to("meta")
    assert count_module_flops(module, (x,), convention="xla").total == per_elem * x.numel()
    assert count_module_flops(module, (x,), convention="dense").total == 0


def test_linear_counts_bias_only_in_xla():
    lin = nn.Linear(16, 8, device="meta")
    x = torch.zeros(3, 16, device="meta")
    assert count_module_flops(lin, (x,), convention="dense").total == 2 * 3 * 16 * 8
    assert count_module_flops(lin, (x,), convention="xla").total == 2 * 3 * 16 * 8 + 3 * 8


def test_unknown_convention():
    with pytest.raises(FlopConventionError, match="dense"):
        count_gflops(UNetSpec(c=16, **TINY), "mac")


# ------------------------------------------------------------------ paper's Table 1


@pytest.mark.parametrize("c", [96, 320])
def test_gflops_match_paper(c):
    paper = PAPER_TABLE[c].gflops
    assert abs(count_gflops(UNetSpec(c=c), "xla") / paper - 1) < 0.005
    assert abs(count_gflops(UNetSpec(c=c), "dense") / paper - 1) < 0.035


def test_normalized_cost():
    spec = UNetSpec(c=16, **TINY)
    assert normalized_cost(spec, reference_c=16) == pytest.approx(1.0)
    small = normalized_cost(UNetSpec(c=8, **TINY), reference_c=16)
    big = normalized_cost(UNetSpec(c=32, **TINY), reference_c=16)
    assert 0 < small < 1 < big
    assert normalized_cost(UNetSpec(c=96), convention="xla") == pytest.approx(0.13, abs=0.005)


def test_family_table_columns():
    rows = family_table([8, 16], UNetSpec(**TINY), reference_c=16, progress=False)
    assert [r["c"] for r in rows] == [8, 16]
    for key in ("params", "gflops_dense", "gflops_xla", "norm_cost", "norm_cost_dense"):
        assert all(key in r for r in rows)
    assert rows[1]["norm_cost"] == pytest.approx(1.0)
    assert rows[0]["norm_cost"] == rows[0]["norm_cost_xla"]
    assert "paper_gflops" not in rows[0]  # not the paper's setting
    paper_rows = family_table([96], progress=False)
    assert paper_rows[0]["paper_params"] == "83M"
    assert paper_rows[0]["paper_gflops"] == 102.7
    assert abs(paper_rows[0]["err_xla_pct"]) < 0.5


@pytest.mark.slow
def test_full_paper_table_via_cli(capsys):
    assert main(["family", "--paper", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["c"] for r in rows] == list(PAPER_WIDTHS)
    for r in rows:
        assert r["params_rounded"] == r["paper_params"]
        if r["c"] >= 96:
            assert abs(r["err_xla_pct"]) < 0.5, r
            assert abs(r["err_dense_pct"]) < 3.5, r
            assert round(r["norm_cost"], 2) == pytest.approx(r["paper_norm_cost"], abs=0.011)
    c64 = rows[0]
    assert 50 < c64["gflops_xla"] < 60  # the paper's 25.3 is inconsistent (docs/family.md)


# ------------------------------------------------------------------ narrow widths


@pytest.mark.parametrize("c, groups", [(8, 8), (16, 16)])
def test_narrow_widths_run_a_real_forward(c, groups):
    spec = UNetSpec(c=c, **TINY)
    assert spec.norm_num_groups == groups
    torch.manual_seed(0)
    unet = build_unet(spec, "cpu").eval()
    (sample, t), kwargs = unet_inputs(spec, "cpu", batch=2)
    sample = torch.randn_like(sample)
    kwargs["encoder_hidden_states"] = torch.randn_like(kwargs["encoder_hidden_states"])
    with torch.no_grad():
        out = unet(sample, t, **kwargs).sample
    assert out.shape == sample.shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("c", [0, -8, 12, 100, 7])
def test_invalid_width_errors(c):
    with pytest.raises(ConfigError, match="multiple of 8"):
        UNetSpec(c=c)


# ------------------------------------------------------------------ CLI

TINY_ARGS = ["--latent-size", "8", "--context-len", "8", "--context-dim", "32", "--reference", "16"]


def test_cli_json(capsys):
    assert main(["family", "--widths", "8,16", *TINY_ARGS, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["c"] for r in rows] == [8, 16]
    for key in ("c", "params", "gflops_dense", "gflops_xla", "norm_cost", "norm_cost_dense"):
        assert key in rows[0]
    assert rows[1]["norm_cost"] == pytest.approx(1.0)


def test_cli_csv_and_table(capsys):
    assert main(["family", "--widths", "8,16", *TINY_ARGS, "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [int(r["c"]) for r in rows] == [8, 16]
    assert main(["family", "--widths", "8", *TINY_ARGS]) == 0
    out = capsys.readouterr().out
    assert "GFLOPs xla" in out and "latent 4x8x8" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--widths", "12"], "multiple of 8"),
        (["--widths", "8,abc"], "comma-separated integers"),
        (["--paper", "--widths", "64"], "--paper"),
    ],
)
def test_cli_errors_exit_2(capsys, argv, message):
    assert main(["family", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_fixed_head_width_keeps_params_and_sets_heads() -> None:
    from ldmscale.family import UNetSpec, count_params, normalized_cost

    small = dict(context_dim=32, context_len=8, latent_size=8, layers_per_block=1)
    sd = UNetSpec(c=32, **small)
    fixed = UNetSpec(c=32, head_dim=16, **small)
    assert fixed.block_heads == (2, 4, 8, 8) and sd.block_heads == 8
    assert count_params(fixed) == count_params(sd)
    assert fixed.unet_config()["attention_head_dim"] == (2, 4, 8, 8)
    # The reference of the normalized cost is SD's layout at c=320 for both.
    assert normalized_cost(fixed) == pytest.approx(normalized_cost(sd), rel=0.05)
    assert UNetSpec(c=12, head_dim=16, **small).block_heads == (1, 1, 3, 3)
    with pytest.raises(ConfigError):
        UNetSpec(c=32, head_dim=-1)
