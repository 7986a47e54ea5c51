"""Floors: real images of the cells' prompts and autoencoder reconstructions, scored like sweep cells."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ldmscale import floors as fl
from ldmscale.floors import (
    FloorsError,
    compute_floors,
    ensure_floors,
    floor_values,
    format_floors,
    read_floors,
    reconstruct,
    stale_reason,
    write_floors,
)
from ldmscale.sweep import SweepConfig

N = 32


@pytest.fixture(scope="module")
def sweep_cfg(tiny_shapes, tmp_path_factory) -> SweepConfig:
    return SweepConfig(
        dataset=str(tiny_shapes),
        resolution=16,
        n_images=N,
        metrics=("fd_probe", "alignment"),
        bootstrap=20,
        probe_steps=100,
        store=str(tmp_path_factory.mktemp("floors") / "results.sqlite"),
    )


def _save_random_vae(folder, seed: int = 0):
    """A randomly initialised AutoencoderKL (8, 16) for 16 px images: a broken autoencoder."""
    from conftest import tiny_vae

    torch.manual_seed(seed)
    vae = tiny_vae()
    vae.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def random_vae_dir(tmp_path_factory):
    return _save_random_vae(tmp_path_factory.mktemp("vae") / "random_vae")


class _Out:
    def __init__(self, **kw):
        self.__dict__.update(kw)


class _Posterior:
    def __init__(self, mean: torch.Tensor):
        self.mean = mean

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator=None) -> torch.Tensor:  # noqa: ARG002 - never called by floors
        raise AssertionError("floors must encode with the posterior mean, not a sample")


class FakeVAE(torch.nn.Module):
    """Encoder = identity; decoder = ``gain * z`` (gain 1: an exact autoencoder)."""

    def __init__(self, gain: float = 1.0):
        from diffusers.configuration_utils import FrozenDict

        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(float(gain)))
        self.config = FrozenDict(block_out_channels=[8], latent_channels=3, gain=float(gain))

    def encode(self, x: torch.Tensor) -> _Out:
        return _Out(latent_dist=_Posterior(x.clone()))

    def decode(self, z: torch.Tensor) -> _Out:
        return _Out(sample=self.gain * z)


def _use_fake_vae(monkeypatch, vae: FakeVAE) -> None:
    import ldmscale.autoencoder as ae

    monkeypatch.setattr(ae, "load_autoencoder", lambda path, device="cpu": vae)


# --------------------------------------------------------------------------------------


def test_reconstruct_identity_is_exact_and_uses_the_mean(tiny_shapes):
    from ldmscale.data import load_dataset

    images = load_dataset(tiny_shapes, split="train", resolution=16).images_uint8(list(range(10)))
    out, psnr_db = reconstruct(FakeVAE(1.0), images, batch_size=4)
    assert out.dtype == np.uint8 and out.shape == images.shape
    assert np.array_equal(out, images)  # the [-1, 1] <-> uint8 round trip loses nothing
    assert psnr_db == float("inf")
    dim, psnr_dim = reconstruct(FakeVAE(0.5), images)
    assert not np.array_equal(dim, images)
    assert 3 < psnr_dim < 30
    with pytest.raises(FloorsError, match="uint8"):
        reconstruct(FakeVAE(), images.astype(np.float32))


def test_floors_keys_n_and_a_broken_vae_is_worse(sweep_cfg, random_vae_dir):
    # split="train": the fixture's 100-step probe reads only the train images it was fit on
    # (unseen re-renders score near chance), and this test needs a probe that reads its images.
    floors = compute_floors(sweep_cfg, random_vae_dir, split="train", progress=False)
    assert set(floors) == {"fd_probe", "alignment", "meta"}
    meta = floors["meta"]
    for k in ("n", "split", "vae", "vae_hash", "psnr_db", "protocol_hash", "code_version"):
        assert k in meta
    assert meta["n"] == N and meta["split"] == "train" and meta["reference_split"] == "validation"
    for name in ("fd_probe", "alignment"):
        for kind in ("real", "reconstruction"):
            v = floors[name][kind]
            assert v["n"] == N
            assert v["lo"] <= v["value"] <= v["hi"]
    # The probe reads real images well; a random autoencoder destroys them.
    assert floors["alignment"]["real"]["value"] >= 0.5
    assert floors["alignment"]["reconstruction"]["value"] < floors["alignment"]["real"]["value"]
    assert floors["fd_probe"]["reconstruction"]["lo"] > floors["fd_probe"]["real"]["hi"]
    assert meta["psnr_db"] < 15
    table = format_floors(floors)
    assert "fd_probe" in table and "alignment" in table and "PSNR" in table


def test_identity_autoencoder_floor_equals_the_real_floor(sweep_cfg, monkeypatch, tmp_path):
    _use_fake_vae(monkeypatch, FakeVAE(1.0))
    # the folder only has to exist; split="train": images the fixture's small probe reads
    floors = compute_floors(sweep_cfg, tmp_path, split="train", progress=False)
    for name in ("fd_probe", "alignment"):
        assert floors[name]["reconstruction"] == floors[name]["real"]
    # A decoder that washes the colours out (halves the contrast) loses what captions name.
    _use_fake_vae(monkeypatch, FakeVAE(0.5))
    dim = compute_floors(sweep_cfg, tmp_path, split="train", progress=False)
    assert dim["fd_probe"]["real"] == floors["fd_probe"]["real"]
    assert dim["alignment"]["reconstruction"]["hi"] < floors["alignment"]["real"]["lo"]


def test_real_floor_matches_a_cell_scored_on_the_same_images(sweep_cfg, random_vae_dir):
    """The real floor is what score_rows gives a cell of those images (same protocol, seed):
    by default (shapes data) fresh renders of the cells' own prompts; with split="train" the
    train images with their own captions."""
    from ldmscale.data import load_dataset
    from ldmscale.data.shapes import rerender
    from ldmscale.sweep import load_prompts, metric_protocol, metric_rows, score_rows

    prompts, source = load_prompts(sweep_cfg)
    protocol = metric_protocol(sweep_cfg, source)
    val = load_dataset(sweep_cfg.dataset, split="validation", resolution=16)
    m = len(val)
    assert m < N and [val.captions[i % m] for i in range(N)] == list(prompts)  # cycled prompts
    fresh = np.stack(
        [
            np.asarray(rerender(val.attributes[i % m], 16, fl._rng(sweep_cfg.seed0, i)))
            for i in range(N)
        ]
    )
    own = val.images_uint8([i % m for i in range(N)])
    assert fresh.shape == own.shape and not np.array_equal(fresh, own)  # new placements
    assert not np.array_equal(fresh[:m], fresh[m : 2 * m])  # a cycled prompt is drawn anew
    floors = compute_floors(sweep_cfg, random_vae_dir, progress=False)
    rows, _ = metric_rows(fresh, list(prompts), protocol)
    expected = score_rows(rows, protocol, seed=sweep_cfg.seed0)
    for name in ("fd_probe", "alignment"):
        assert floors[name]["real"] == pytest.approx(expected[name])
    assert "fresh renders" in floors["meta"]["images"]

    train = compute_floors(sweep_cfg, random_vae_dir, split="train", progress=False)
    ds = load_dataset(sweep_cfg.dataset, split="train", resolution=16)
    rows, _ = metric_rows(ds.images_uint8(list(range(N))), list(ds.captions[:N]), protocol)
    expected = score_rows(rows, protocol, seed=sweep_cfg.seed0)
    for name in ("fd_probe", "alignment"):
        assert train[name]["real"] == pytest.approx(expected[name])
    assert train["meta"]["split"] == "train" and "own captions" in train["meta"]["images"]


def test_rerendered_images_keep_every_object_and_move_them(tiny_shapes):
    """rerender draws the same objects (shape, colour, size, quadrant) at new places."""
    from ldmscale.data import load_dataset
    from ldmscale.data.shapes import place, rerender

    val = load_dataset(tiny_shapes, split="validation", resolution=16)
    a = val.attributes[0]
    img0 = np.asarray(rerender(a, 16, np.random.default_rng(0)))
    img1 = np.asarray(rerender(a, 16, np.random.default_rng(1)))
    assert not np.array_equal(img0, img1)
    assert np.array_equal(img0, np.asarray(rerender(a, 16, np.random.default_rng(0))))
    for o in a["objects"]:  # a new box stays in the object's quadrant and keeps its size
        box = place(o["size"], o["position"], 16, np.random.default_rng(5))
        assert box[2] - box[0] == pytest.approx(o["bbox"][2] - o["bbox"][0], abs=0.02)
        right, bottom = o["position"].endswith("right"), o["position"].startswith("bottom")
        assert (box[0] >= 8) == right and (box[1] >= 8) == bottom


def test_floors_of_data_without_attributes_use_the_reference_images(tmp_path, random_vae_dir):
    from conftest import write_plain_folder
    from ldmscale.data import load_dataset

    data = write_plain_folder(tmp_path / "plain", n_train=8, n_val=12, size=16)
    cfg = SweepConfig(
        dataset=str(data), resolution=16, n_images=8, metrics=("fd_effnet",), bootstrap=10
    )
    floors = compute_floors(cfg, random_vae_dir, progress=False)
    assert floors["meta"]["split"] == "validation"
    assert "part of the reference" in floors["meta"]["images"]
    assert floors["fd_effnet"]["real"]["n"] == 8
    val = load_dataset(data, split="validation", resolution=16)
    assert floors["meta"]["images_fingerprint"] == val.fingerprint()
    with pytest.raises(FloorsError, match="needs the shapes dataset"):
        compute_floors(cfg, random_vae_dir, split="rerender", progress=False)
    with pytest.raises(FloorsError, match="lower --n-images to 12"):
        compute_floors(cfg.replace(n_images=20), random_vae_dir, progress=False)


def test_resume_rule(sweep_cfg, random_vae_dir, tmp_path, monkeypatch):
    calls = []
    real_compute = fl.compute_floors

    def counting(*args, **kwargs):
        calls.append(1)
        return real_compute(*args, **kwargs)

    monkeypatch.setattr(fl, "compute_floors", counting)
    path = tmp_path / "floors.json"
    lines: list[str] = []
    first = ensure_floors(path, sweep_cfg, random_vae_dir, progress=False, log=lines.append)
    assert len(calls) == 1 and path.is_file() and first["meta"]["reused"] is False
    assert "reused" not in read_floors(path)["meta"]

    again = ensure_floors(path, sweep_cfg, random_vae_dir, progress=False, log=lines.append)
    assert len(calls) == 1 and again["meta"]["reused"] is True
    assert again["fd_probe"] == first["fd_probe"]
    # Fields outside the metric protocol (how the sweep runs) do not invalidate the floors.
    ensure_floors(path, sweep_cfg.replace(batch_size=3, store="x.sqlite"), random_vae_dir,
                  progress=False)  # fmt: skip
    assert len(calls) == 1

    ensure_floors(path, sweep_cfg.replace(bootstrap=21), random_vae_dir, progress=False)
    assert len(calls) == 2  # protocol changed
    ensure_floors(path, sweep_cfg.replace(bootstrap=21), random_vae_dir, progress=False)
    assert len(calls) == 2
    smaller = ensure_floors(path, sweep_cfg.replace(bootstrap=21), random_vae_dir, n_images=16,
                            progress=False)  # fmt: skip
    assert len(calls) == 3 and smaller["meta"]["n"] == 16  # N changed
    other_vae = _save_random_vae(tmp_path / "vae2", seed=1)
    ensure_floors(path, sweep_cfg.replace(bootstrap=21), other_vae, n_images=16, progress=False)
    assert len(calls) == 4  # autoencoder weights changed
    path.write_text("{not json")
    ensure_floors(path, sweep_cfg.replace(bootstrap=21), other_vae, n_images=16, progress=False)
    assert len(calls) == 5  # a damaged file is recomputed
    ensure_floors(path, sweep_cfg.replace(bootstrap=21), other_vae, n_images=16, progress=False,
                  force=True)  # fmt: skip
    assert len(calls) == 6
    assert any("reusing" in line for line in lines) and any("computing" in x for x in lines)


def test_stale_reason_names_the_changed_field():
    key = {"protocol_hash": "a", "n": 4, "split": "train", "images_fingerprint": "f",
           "vae_hash": "v"}  # fmt: skip
    stored = {"meta": dict(key)}
    assert stale_reason(stored, key) is None
    assert "protocol_hash" in stale_reason(stored, {**key, "protocol_hash": "b"})
    assert "vae_hash" in stale_reason(stored, {**key, "vae_hash": "w"})
    assert stale_reason(None, key) == "no floors stored"


def test_write_read_round_trip_and_damaged_files(tmp_path):
    floors = {
        "alignment": {
            "real": {"value": 1.0, "lo": 1.0, "hi": 1.0, "n": 4},
            "reconstruction": {"value": 0.5, "lo": 0.25, "hi": 0.75, "n": 4},
        },
        "meta": {
            "n": 4,
            "psnr_db": 20.0,
            "protocol_hash": "a",
            "split": "train",
            "images_fingerprint": "f",
            "vae_hash": "v",
            "vae": "/x",
        },  # fmt: skip
    }
    path = write_floors(tmp_path / "f.json", floors)
    assert read_floors(path) == floors
    assert floor_values(floors, "alignment") == {"real": 1.0, "reconstruction": 0.5}
    # The frontier/report reader takes the same file (its "meta" block is not a metric).
    from ldmscale.frontier import load_floors

    assert set(load_floors(path)) == {"alignment"}
    assert load_floors(path)["alignment"]["reconstruction"]["value"] == 0.5
    with pytest.raises(FloorsError, match="no floors for metric 'fid'"):
        floor_values(floors, "fid")
    bad = json.loads(path.read_text())
    del bad["alignment"]["reconstruction"]["lo"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(FloorsError, match="recompute"):
        read_floors(tmp_path / "bad.json")
    with pytest.raises(FloorsError, match="ldmscale floors"):
        read_floors(tmp_path / "missing.json")
    with pytest.raises(FloorsError):
        write_floors(tmp_path / "g.json", {"alignment": {}})
    assert not (tmp_path / "g.json").exists()


def test_bad_inputs_give_clear_errors(sweep_cfg, random_vae_dir, tmp_path):
    with pytest.raises(FloorsError, match="ldmscale autoencoder train --data"):
        compute_floors(sweep_cfg, tmp_path / "no_such_vae", progress=False)
    with pytest.raises(FloorsError, match="fewer than the N=100"):
        compute_floors(sweep_cfg, random_vae_dir, n_images=100, split="train", progress=False)
    with pytest.raises(FloorsError, match="need a dataset"):
        compute_floors(SweepConfig(prompts=("a",)), random_vae_dir, progress=False)


def test_cli_floors(sweep_cfg, random_vae_dir, tmp_path, capsys):
    from ldmscale.cli import main

    config = sweep_cfg.save(tmp_path / "sweep.json")
    out = tmp_path / "floors.json"
    argv = ["floors", "--config", str(config), "--vae", str(random_vae_dir), "--out", str(out),
            "--n-images", "16", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "floors at N=16" in text and "reconstruction PSNR" in text
    assert "fd_probe" in text and "alignment" in text
    assert read_floors(out)["meta"]["n"] == 16
    assert main(argv) == 0
    assert "reusing" in capsys.readouterr().out

    missing = ["floors", "--config", str(config), "--vae", str(tmp_path / "nope"), "--out",
               str(tmp_path / "x.json")]  # fmt: skip
    assert main(missing) == 2
    err = capsys.readouterr().err
    assert "autoencoder folder not found" in err and "ldmscale autoencoder train" in err
