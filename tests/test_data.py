"""Tests for ldmscale.data: the shapes generator, folder/COCO loading, bad-data policy, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ldmscale.cli import main
from ldmscale.data import DataError, ImageCaptionDataset, Record, load_dataset, shapes
from ldmscale.data.shapes import VOCAB, caption_for, generate_shapes


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


# --------------------------------------------------------------------------- shapes


def test_shapes_deterministic_and_seed_dependent(tmp_path):
    a = generate_shapes(tmp_path / "a", n_train=10, n_val=3, resolution=16, seed=7)
    b = generate_shapes(tmp_path / "b", n_train=10, n_val=3, resolution=16, seed=7)
    c = generate_shapes(tmp_path / "c", n_train=10, n_val=3, resolution=16, seed=8)
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert len(fa) == 10 + 3 + 2 + 1  # PNGs, two metadata.jsonl, dataset.json
    assert fa == fb
    assert fa["train/metadata.jsonl"] != fc["train/metadata.jsonl"]
    # image i does not depend on how many images are generated
    d = generate_shapes(tmp_path / "d", n_train=4, n_val=1, resolution=16, seed=7)
    fd = _files(d)
    for i in range(4):
        assert fd[f"train/{i:05d}.png"] == fa[f"train/{i:05d}.png"]


def test_shapes_dataset_json_and_split_counts(tiny_shapes):
    info = json.loads((tiny_shapes / "dataset.json").read_text())
    assert info["name"] == "shapes"
    assert info["counts"] == {"train": 64, "validation": 16}
    assert info["resolution"] == 16 and info["seed"] == 0
    assert info["vocabulary"] == VOCAB
    assert info["generator_version"] == shapes.GENERATOR_VERSION
    train = load_dataset(tiny_shapes, split="train", resolution=16)
    val = load_dataset(tiny_shapes, split="val", resolution=16)
    assert len(train) == 64 and len(val) == 16
    assert (
        load_dataset(tiny_shapes, split="validation", resolution=16).fingerprint()
        == val.fingerprint()
    )
    assert train.fingerprint() != val.fingerprint()
    assert set(VOCAB) == {"shape", "color", "size", "position"}
    assert all(len(v) >= 2 for v in VOCAB.values())


def test_shapes_captions_match_attributes_and_pixels(tiny_shapes):
    ds = load_dataset(tiny_shapes, split="train", resolution=16)
    n_objects = set()
    seen = {k: set() for k in VOCAB}
    half = 16 / 2
    for i in range(len(ds)):
        attrs = ds.attributes[i]
        objects = attrs["objects"]
        n_objects.add(len(objects))
        assert ds.captions[i] == caption_for(objects)
        assert len({o["position"] for o in objects}) == len(objects), "two objects share a quadrant"
        pixels = ds.image_uint8(i).astype(int)
        for o in objects:
            for k in VOCAB:
                assert o[k] in VOCAB[k]
                assert o[k] in ds.captions[i]
                seen[k].add(o[k])
            x0, y0, x1, y1 = o["bbox"]
            col = 1 if o["position"].endswith("right") else 0
            row = 1 if o["position"].startswith("bottom") else 0
            assert col * half <= x0 < x1 <= (col + 1) * half  # inside its quadrant: no overlap
            assert row * half <= y0 < y1 <= (row + 1) * half
            if o["size"] == "large":
                cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
                want = np.array(shapes.COLORS_RGB[o["color"]])
                assert np.abs(pixels[cy, cx] - want).max() <= 40, (i, o)
        # the background of an empty quadrant is white
        used = {o["position"] for o in objects}
        for p in VOCAB["position"]:
            if p not in used:
                col = 1 if p.endswith("right") else 0
                row = 1 if p.startswith("bottom") else 0
                quad = pixels[row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8]
                assert quad.min() == 255
    assert n_objects == {1, 2}
    assert all(seen[k] == set(VOCAB[k]) for k in ("size", "position"))
    assert len(seen["color"]) >= 4 and len(seen["shape"]) >= 3


def test_shapes_records_resolution_and_range(tiny_shapes):
    ds = load_dataset(tiny_shapes, resolution=16)
    rec = ds[0]
    assert isinstance(rec, Record) and isinstance(ds, ImageCaptionDataset)
    assert rec.image.shape == (3, 16, 16) and rec.image.dtype == torch.float32
    assert rec.image.min() >= -1 and rec.image.max() == 1.0  # white background -> exactly 1
    png = np.array(Image.open(tiny_shapes / "train" / rec.key).convert("RGB"))
    assert np.array_equal(ds.image_uint8(0), png)  # at native resolution, pixels are exact
    assert torch.allclose(rec.image, torch.from_numpy(png).permute(2, 0, 1).float() / 127.5 - 1)
    small = load_dataset(tiny_shapes, resolution=8)
    assert small[3].image.shape == (3, 8, 8)
    assert small.fingerprint() != ds.fingerprint()
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=5, collate_fn=ds.collate)))
    assert batch["images"].shape == (5, 3, 16, 16) and batch["captions"] == ds.captions[:5]


def test_shapes_other_resolution(tmp_path):
    root = generate_shapes(tmp_path / "s", n_train=3, n_val=1, resolution=24, seed=1)
    assert Image.open(root / "train" / "00000.png").size == (24, 24)
    assert load_dataset(root, resolution=24)[2].image.shape == (3, 24, 24)


def test_shapes_generation_is_atomic(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = shapes.render

    def dying_render(objects, resolution):
        calls["n"] += 1
        if calls["n"] > 5:
            raise KeyboardInterrupt  # a killed run
        return real(objects, resolution)

    monkeypatch.setattr(shapes, "render", dying_render)
    with pytest.raises(KeyboardInterrupt):
        generate_shapes(tmp_path / "ds", n_train=10, n_val=2, resolution=16)
    assert not (tmp_path / "ds").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind either


def test_shapes_existing_folder(tmp_path):
    root = generate_shapes(tmp_path / "ds", n_train=3, n_val=1, resolution=16)
    before = (root / "dataset.json").stat().st_mtime_ns
    generate_shapes(root, n_train=3, n_val=1, resolution=16)  # same parameters: kept
    assert (root / "dataset.json").stat().st_mtime_ns == before
    with pytest.raises(DataError, match="already exists"):
        generate_shapes(root, n_train=5, n_val=1, resolution=16)
    generate_shapes(root, n_train=5, n_val=1, resolution=16, overwrite=True)
    assert len(load_dataset(root, resolution=16)) == 5


# --------------------------------------------------------------------------- user folders


def _write_folder(root: Path, rows: list[dict], images: dict[str, Image.Image]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, img in images.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        img.save(root / name)
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _stripes(w: int, h: int) -> Image.Image:
    """Red left quarter, white middle, blue right quarter."""
    a = np.full((h, w, 3), 255, np.uint8)
    a[:, : w // 4] = (255, 0, 0)
    a[:, 3 * w // 4 :] = (0, 0, 255)
    return Image.fromarray(a)


def test_imagefolder_resize_crop_modes_and_caption_column(tmp_path):
    rgba = Image.new("RGBA", (12, 12), (0, 0, 0, 0))
    images = {
        "wide.png": _stripes(64, 16),
        "sub/grey.png": Image.new("L", (30, 30), 0),
        "alpha.png": rgba,
        "pal.gif": Image.new("P", (10, 20), 0),
    }
    rows = [
        {"file_name": "wide.png", "text": "a wide picture"},
        {"file_name": "sub/grey.png", "caption": "a black square"},
        {"file_name": "alpha.png", "text": "transparent", "extra": 1},
        {"file_name": "./pal.gif", "text": "palette"},
    ]
    root = _write_folder(tmp_path / "flat", rows, images)
    meta = root / "metadata.jsonl"
    meta.write_text(meta.read_text() + "\n")  # a blank line is fine
    ds = load_dataset(root, resolution=8)
    assert ds.keys == ["wide.png", "sub/grey.png", "alpha.png", "pal.gif"]
    assert ds.captions == ["a wide picture", "a black square", "transparent", "palette"]
    assert ds.attributes == [None] * 4 and ds.kind == "imagefolder"
    wide = ds.image_uint8(0).astype(int)
    assert wide.shape == (8, 8, 3)
    assert wide.min() >= 240  # centre crop of the 64x16 stripes is the white middle
    assert ds.image_uint8(1).max() == 0
    assert ds.image_uint8(2).min() == 255  # transparency composited on white
    with pytest.raises(DataError, match="no 'validation' split"):
        load_dataset(root, split="validation", resolution=8)


def test_imagefolder_split_subfolders(tmp_path):
    img = {"0.png": _stripes(16, 16), "1.png": _stripes(16, 16)}
    rows = [{"file_name": "0.png", "text": "x"}, {"file_name": "1.png", "text": "y"}]
    _write_folder(tmp_path / "d" / "train", rows, img)
    _write_folder(tmp_path / "d" / "val", rows[:1], img)
    assert len(load_dataset(tmp_path / "d", "train", resolution=16)) == 2
    val = load_dataset(tmp_path / "d", "validation", resolution=16)
    assert len(val) == 1 and val.split == "validation"
    assert len(load_dataset(tmp_path / "d" / "val" / "metadata.jsonl", resolution=16)) == 1


def _write_coco(root: Path, split: str = "val2014") -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / split).mkdir()
    _stripes(20, 16).save(root / split / "a.jpg")
    _stripes(16, 16).save(root / split / "b.png")
    data = {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.png"}],
        "annotations": [
            {"id": 10, "image_id": 2, "caption": "b first"},
            {"id": 11, "image_id": 1, "caption": " a first "},
            {"id": 12, "image_id": 1, "caption": "a second"},
        ],
    }
    (root / "annotations" / f"captions_{split}.json").write_text(json.dumps(data))
    return root


def test_coco_first_and_all_captions(tmp_path):
    root = _write_coco(tmp_path / "coco")
    ds = load_dataset(root, split="val", resolution=8)
    assert ds.kind == "coco"
    assert ds.keys == ["a.jpg", "b.png"]
    assert ds.captions == ["a first", "b first"]
    assert ds[0].image.shape == (3, 8, 8)
    every = load_dataset(root, split="validation", resolution=8, all_captions=True)
    assert every.keys == ["a.jpg#0", "a.jpg#1", "b.png#0"]
    assert every.captions == ["a first", "a second", "b first"]
    direct = load_dataset(root / "annotations" / "captions_val2014.json", resolution=8)
    assert direct.fingerprint() == ds.fingerprint()
    with pytest.raises(DataError, match="no 'train' split"):
        load_dataset(root, split="train", resolution=8)


def test_coco_missing_image_and_empty_caption(tmp_path):
    root = _write_coco(tmp_path / "coco")
    ann = root / "annotations" / "captions_val2014.json"
    data = json.loads(ann.read_text())
    data["images"].append({"id": 3, "file_name": "gone.jpg"})
    data["annotations"].append({"id": 13, "image_id": 3, "caption": "lost"})
    data["images"].append({"id": 4, "file_name": "b.png"})
    data["annotations"].append({"id": 14, "image_id": 4, "caption": "   "})
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="gone.jpg"):
        load_dataset(root, split="val", resolution=8)
    with pytest.warns(UserWarning, match="skipped 2 bad entries"):
        ds = load_dataset(root, split="val", resolution=8, skip_bad=True)
    assert len(ds) == 2 and [k for k, _ in ds.skipped] == ["gone.jpg", "b.png"]
    assert "empty caption" in ds.skipped[1][1] or "only empty captions" in ds.skipped[1][1]


# --------------------------------------------------------------------------- bad data


def _good_folder(root: Path) -> Path:
    images = {f"{i}.png": _stripes(16, 16) for i in range(3)}
    rows = [{"file_name": f"{i}.png", "text": f"picture {i}"} for i in range(3)]
    return _write_folder(root, rows, images)


def _corrupt(root):
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    return '{"file_name": "bad.png", "text": "corrupt"}', "bad.png"


def _truncated(root):
    data = (root / "0.png").read_bytes()
    (root / "trunc.png").write_bytes(data[: len(data) // 2])
    return '{"file_name": "trunc.png", "text": "truncated"}', "trunc.png"


def _empty_caption(root):
    return '{"file_name": "0.png", "text": "  "}', "empty caption"


def _no_caption(root):
    return '{"file_name": "0.png"}', "no caption"


def _escape(root):
    shutil.copy(root / "0.png", root.parent / "x.png")
    return '{"file_name": "../x.png", "text": "outside"}', "'../x.png'"


def _absolute(root):
    return json.dumps(
        {"file_name": str((root / "0.png").resolve()), "text": "abs"}
    ), "not a relative path"


def _missing(root):
    return '{"file_name": "missing.png", "text": "gone"}', "missing.png"


def _bad_json(root):
    return '{"file_name": "0.png", "text": "unterminated', "line 4"


@pytest.mark.parametrize(
    "make_bad",
    [_corrupt, _truncated, _empty_caption, _no_caption, _escape, _absolute, _missing, _bad_json],
)
def test_bad_entry_errors_and_skip(tmp_path, make_bad):
    root = _good_folder(tmp_path / "d")
    line, expected = make_bad(root)
    meta = root / "metadata.jsonl"
    meta.write_text(meta.read_text() + line + "\n")
    with pytest.raises(DataError) as err:
        load_dataset(root, resolution=8)
    msg = str(err.value)
    assert expected in msg
    assert str(root) in msg  # the file (image or metadata.jsonl) is named
    assert "skip_bad" in msg  # and the fix is offered
    with pytest.warns(UserWarning, match="skipped 1 bad entry"):
        ds = load_dataset(root, resolution=8, skip_bad=True)
    assert len(ds) == 3 and len(ds.skipped) == 1
    assert expected in ds.skipped[0][1]


def test_empty_dataset_is_an_error(tmp_path):
    root = tmp_path / "empty"
    root.mkdir()
    (root / "metadata.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no usable"):
        load_dataset(root)
    (root / "metadata.jsonl").write_text('{"file_name": "nope.png", "text": "x"}\n')
    with pytest.raises(DataError, match="1 bad entry skipped"):
        load_dataset(root, skip_bad=True)
    with pytest.raises(DataError, match="not a dataset folder"):
        load_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_lazy_validation_reports_on_access(tmp_path):
    root = _good_folder(tmp_path / "d")
    (root / "1.png").write_bytes(b"not an image")
    ds = load_dataset(root, resolution=8, validate=False)
    assert len(ds) == 3
    assert ds[0].image.shape == (3, 8, 8)
    with pytest.raises(DataError, match="1.png"):
        ds[1]


def test_large_sets_decode_from_disk(tiny_shapes):
    in_memory = load_dataset(tiny_shapes, resolution=16)
    on_disk = load_dataset(tiny_shapes, resolution=16, max_memory_bytes=0)
    assert on_disk._pixels is None and in_memory._pixels is not None
    assert np.array_equal(on_disk.images_uint8([0, 5]), in_memory.images_uint8([0, 5]))
    assert torch.equal(on_disk[7].image, in_memory[7].image)
    assert on_disk.fingerprint() == in_memory.fingerprint()


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_tracks_content_not_location(tmp_path):
    root = _good_folder(tmp_path / "d")
    fp = load_dataset(root, resolution=8).fingerprint()
    assert len(fp) == 16 and fp == load_dataset(root, resolution=8).fingerprint()
    moved = shutil.copytree(root, tmp_path / "moved")
    assert load_dataset(moved, resolution=8).fingerprint() == fp
    assert load_dataset(root, resolution=16).fingerprint() != fp
    meta = moved / "metadata.jsonl"
    meta.write_text(meta.read_text().replace("picture 1", "picture one"))
    assert load_dataset(moved, resolution=8).fingerprint() != fp
    _stripes(16, 16).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "2.png")
    assert load_dataset(root, resolution=8).fingerprint() != fp


# --------------------------------------------------------------------------- CLI


def test_cli_shapes_and_check(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["data", "shapes", "--out", str(out), "--n-train", "6", "--n-val", "2"]
    assert main(args + ["--resolution", "16", "--seed", "3"]) == 0
    info = json.loads((out / "dataset.json").read_text())
    assert info["counts"] == {"train": 6, "validation": 2} and info["seed"] == 3
    capsys.readouterr()
    assert main(["data", "check", str(out), "--resolution", "16"]) == 0
    text = capsys.readouterr().out
    assert "train: 6 records" in text and "validation: 2 records" in text
    (out / "train" / "00002.png").write_bytes(b"broken")
    assert main(["data", "check", str(out), "--resolution", "16"]) == 2
    assert "00002.png" in capsys.readouterr().err
    assert main(["data", "check", str(out), "--resolution", "16", "--skip-bad", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train"]["records"] == 5 and summary["train"]["skipped"] == 1


def test_one_object_variant(tmp_path: Path) -> None:
    one = generate_shapes(tmp_path / "one", n_train=40, n_val=4, resolution=16, max_objects=1)
    two = generate_shapes(tmp_path / "two", n_train=40, n_val=4, resolution=16)
    info = json.loads((one / "dataset.json").read_text())
    assert info["max_objects"] == 1 and "max_objects" not in json.loads(
        (two / "dataset.json").read_text()
    )
    rows = [json.loads(x) for x in (one / "train" / "metadata.jsonl").read_text().splitlines()]
    assert all(len(r["attributes"]["objects"]) == 1 for r in rows)
    assert all(" and " not in r["text"] for r in rows)
    rows2 = [json.loads(x) for x in (two / "train" / "metadata.jsonl").read_text().splitlines()]
    assert any(len(r["attributes"]["objects"]) == 2 for r in rows2)
    # Images with one object in the default variant are the same examples in both.
    for r1, r2 in zip(rows, rows2):
        if len(r2["attributes"]["objects"]) == 1:
            assert r1["text"] == r2["text"]
    with pytest.raises(DataError, match="max_objects"):
        generate_shapes(tmp_path / "bad", n_train=2, n_val=1, resolution=16, max_objects=3)
