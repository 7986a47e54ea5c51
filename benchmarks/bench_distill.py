"""Distillation cost per width: wall time per training step and UNet forwards per step, for
each distillation objective side by side with a text-to-image step.

One optimisation step as :func:`ldmscale.train.train` runs it (the objective's loss, backward,
gradient clipping, AdamW, the trainer's EMA and the objective's ``after_step``) on random
caches at the tiny preset's shapes (latent 8x8x8, context 16 x 384, ``layers_per_block=1``,
``head_dim=16``, v-prediction, fp32), with a random teacher of the same width. Variants run
interleaved block by block in one process, so a busy machine slows all of them alike; the
table reports the median over blocks and the ratio to the text-to-image step.

    OMP_NUM_THREADS=1 python benchmarks/bench_distill.py --widths 8,16,32 --batch 64

Columns: seconds per step; teacher/target UNet forwards per row and step
(``Objective.extra_forwards_per_step``, what ``train_compute`` counts); the ``train_compute``
factor ``1 + extra / 3``; the measured time ratio to a text-to-image step.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time

import torch

from ldmscale.family import UNetSpec, build_unet
from ldmscale.objectives import TextToImage, make_noise_scheduler
from ldmscale.objectives.consistency import Consistency, ConsistencyOptions
from ldmscale.objectives.guided import Guided, GuidedOptions
from ldmscale.train import EMA, TrainConfig, make_optimizer

PTYPE = "v_prediction"
#: name -> how the objective is built (None: text-to-image).
VARIANTS = {
    "t2i": None,
    "consistency lcm": ("consistency", {"style": "lcm", "w_min": 2.0, "w_max": 6.0}),
    "consistency codi": ("consistency", {"style": "codi"}),
    "guided stage one": ("guided", {"stage": "guidance", "steps": 16, "w_max": 5.0}),
    "progressive (8 steps)": ("guided", {"stage": "progressive", "steps": 8, "w_max": 5.0}),
}


def _spec(c: int, guidance_dim: int = 0) -> UNetSpec:
    return UNetSpec(
        c=c, context_dim=384, context_len=16, latent_channels=8, latent_size=8,
        layers_per_block=1, head_dim=16, time_cond_proj_dim=guidance_dim,
    )  # fmt: skip


class Variant:
    """One training step of one objective at width ``c``, ready to be timed."""

    def __init__(self, c: int, batch: int, how: tuple[str, dict] | None):
        torch.manual_seed(0)
        null = torch.zeros(1, 16, 384)
        sched = make_noise_scheduler(PTYPE)
        if how is None:
            self.unet = build_unet(_spec(c))
            self.objective = TextToImage(sched, null, 1.0, PTYPE, 0.1, 5.0)
        elif how[0] == "consistency":
            opts = ConsistencyOptions.from_dict(how[1]).resolved()
            self.unet = build_unet(_spec(c, opts.guidance_dim if opts.guidance_embedding else 0))
            self.objective = Consistency(opts, sched, PTYPE, 0.1)
            self.objective.teacher = build_unet(_spec(c)).eval().requires_grad_(False)
            self.objective.target = copy.deepcopy(self.unet).eval().requires_grad_(False)
        else:
            opts = GuidedOptions.from_dict(how[1])
            self.unet = build_unet(_spec(c, opts.guidance_dim))
            self.objective = Guided(opts, sched, PTYPE, 0.1)
            teacher_dim = opts.guidance_dim if opts.stage == "progressive" else 0
            self.objective.teacher = build_unet(_spec(c, teacher_dim)).eval().requires_grad_(False)
        self.objective.null_embedding, self.objective.scaling_factor = null, 1.0
        self.optimizer = make_optimizer(TrainConfig(lr=1e-4), self.unet.parameters())
        self.ema = EMA(self.unet, 0.99)
        g = torch.Generator().manual_seed(0)
        self.rows = {
            "latent_mean": torch.randn(batch, 8, 8, 8, generator=g),
            "latent_std": torch.rand(batch, 8, 8, 8, generator=g) * 0.1,
            "embeddings": torch.randn(batch, 16, 384, generator=g),
        }
        self.gen = torch.Generator().manual_seed(1)

    @property
    def extra(self) -> float:
        return self.objective.extra_forwards_per_step

    def step(self) -> None:
        loss = self.objective.loss(self.unet, self.rows, self.gen)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.unet.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.unet)
        self.objective.after_step(self.unet)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--widths", default="8,16,32")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed block")
    ap.add_argument("--reps", type=int, default=3, help="timed blocks per variant")
    args = ap.parse_args(argv)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, batch {args.batch}"
    )
    print(
        "\n| c | objective | s/step | teacher+target fwd/row/step | train_compute factor "
        "| time x t2i |\n| --- | --- | --- | --- | --- | --- |"
    )
    for c in (int(w) for w in args.widths.split(",")):
        variants = {name: Variant(c, args.batch, how) for name, how in VARIANTS.items()}
        for v in variants.values():
            v.step()  # warm-up
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.reps):
            for name, v in variants.items():
                t = time.perf_counter()
                for _ in range(args.steps):
                    v.step()
                times[name].append((time.perf_counter() - t) / args.steps)
        base = statistics.median(times["t2i"])
        for name, v in variants.items():
            s = statistics.median(times[name])
            print(
                f"| {c} | {name} | {s:.3f} | {v.extra:g} | {1 + v.extra / 3:.3g} | {s / base:.2f} |"
            )


if __name__ == "__main__":
    main()
