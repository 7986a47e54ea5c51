"""The per-image row cache: round trip, prefix matching, and damage handled as a cache miss."""

from __future__ import annotations

import numpy as np
import pytest

from ldmscale import rowcache


def _rows(seeds, prompts, d=3, offset=0.0):
    n = len(seeds)
    return rowcache.CachedRows(
        np.asarray(seeds, np.int64),
        rowcache.prompt_keys(prompts),
        {
            "fd_probe": np.arange(n * d, dtype=np.float64).reshape(n, d) + offset,
            "alignment": np.ones(n),
        },
        {"nfe": 4.0, "feature_networks": {"fd_probe": "probe:x"}},
    )


def test_round_trip_and_prefix(tmp_path):
    prompts = ["a red circle", "a blue square", "a green triangle", "two red circles"]
    cached = _rows([0, 1, 2], prompts[:3])
    rowcache.save_rows(tmp_path, "fam", cached)
    back = rowcache.load_rows(tmp_path, "fam")
    assert back is not None and len(back) == 3 and back.meta["nfe"] == 4.0
    np.testing.assert_array_equal(back.rows["fd_probe"], cached.rows["fd_probe"])
    assert rowcache.load_rows(tmp_path, "other") is None
    # the longest matching prefix: longer cells reuse all 3, shorter ones their own length
    assert rowcache.reusable(back, prompts, [0, 1, 2, 3]) == 3
    assert rowcache.reusable(back, prompts[:2], [0, 1]) == 2
    # a different seed or prompt at position 1 stops the reuse there
    assert rowcache.reusable(back, prompts, [0, 7, 2, 3]) == 1
    assert rowcache.reusable(back, ["x", *prompts[1:]], [0, 1, 2, 3]) == 0
    assert rowcache.reusable(None, prompts, [0, 1, 2, 3]) == 0
    grown = rowcache.extend(back, 2, _rows([2, 3], prompts[2:], offset=100.0))
    assert list(grown.seeds) == [0, 1, 2, 3]
    assert grown.rows["fd_probe"][1, 0] == 3.0 and grown.rows["fd_probe"][2, 0] == 100.0


def test_family_ignores_bootstrap_but_not_the_rest():
    protocol = {"metrics": ["fd_probe"], "bootstrap": 100, "ci_level": 0.95, "probe": {"steps": 9}}
    key = rowcache.family_key("h", {"name": "ddim", "steps": 4, "guidance": 2.0}, protocol)
    same = rowcache.family_key(
        "h", {"name": "ddim", "steps": 4, "guidance": 2.0}, {**protocol, "bootstrap": 0}
    )
    other_w = rowcache.family_key("h", {"name": "ddim", "steps": 4, "guidance": 3.0}, protocol)
    other_probe = rowcache.family_key(
        "h", {"name": "ddim", "steps": 4, "guidance": 2.0}, {**protocol, "probe": {"steps": 8}}
    )
    assert key == same and len({key, other_w, other_probe}) == 3


@pytest.mark.parametrize("damage", ["truncate", "garbage", "lengths"])
def test_damaged_file_is_a_miss_with_a_warning(tmp_path, damage):
    path = rowcache.save_rows(tmp_path, "fam", _rows([0, 1], ["a", "b"]))
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not an npz")
    else:
        bad = _rows([0, 1], ["a", "b"])
        bad.rows["alignment"] = np.ones(5)
        rowcache.save_rows(tmp_path, "fam", bad)
    with pytest.warns(UserWarning, match="unreadable row cache"):
        assert rowcache.load_rows(tmp_path, "fam") is None
