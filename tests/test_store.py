"""Tests for ldmscale.store: the SQLite results store, its atomic rows, and CSV/Parquet export."""

from __future__ import annotations

import csv
import json
import sqlite3

import pytest

from ldmscale.store import ResultsStore, StoreError, flatten_row, metric_direction


def make_row(i: int, **over) -> dict:
    row = {
        "cell_id": f"cell{i:03d}",
        "model": f"c{8 * (1 + i % 2)}",
        "model_path": "/models/m",
        "model_hash": f"hash{i % 2}",
        "c": 8 * (1 + i % 2),
        "params": 1000 + i,
        "norm_cost": 0.5 * (1 + i % 2),
        "sampler": "ddim" if i % 3 else "dpmpp",
        "steps": 4 + i,
        "guidance": 1.5 + i,
        "n_images": 16,
        "nfe": 4.0 + i,
        "sampling_cost": 0.5 * (1 + i % 2) * (4 + i),
        "flops": 1e9 * (i + 1),
        "metrics": {
            "fd_probe": {"value": 10.0 - i, "lo": 9.0 - i, "hi": 11.0 - i, "n": 16},
            "alignment": {"value": 0.25 + 0.01 * i, "lo": 0.2, "hi": 0.3, "n": 16},
        },
        "protocol": {"metrics": ["alignment", "fd_probe"], "bootstrap": 10},
        "provenance": {"seeds": list(range(16)), "code_version": "test"},
    }
    row.update(over)
    return row


def test_any_metric_name_is_stored_and_read_back(tmp_path):
    """The store keeps metric names the registry does not know (a custom evaluator's), so every
    store stays readable; which way a metric is better is the registry's question, not its."""
    from ldmscale.metrics import registry

    lpips = {"lpips": {"value": 0.25, "lo": 0.2, "hi": 0.3, "n": 16}}
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put(make_row(0, metrics=lpips))
        assert store.get("cell000")["metrics"] == lpips
        out = store.export_csv(tmp_path / "r.csv")
    assert "metric.lpips" in out.read_text().splitlines()[0]
    assert metric_direction is registry.metric_direction


def test_put_get_rows_roundtrip(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert len(store) == 0
        for i in range(4):
            assert store.put(make_row(i)) is True
        assert len(store) == 4
        assert "cell002" in store and "nope" not in store
        row = store.get("cell002")
        assert row["metrics"]["fd_probe"] == {"value": 8.0, "lo": 7.0, "hi": 9.0, "n": 16}
        assert row["provenance"]["seeds"] == list(range(16))
        assert "created_at" in row["provenance"]
        assert row["guidance"] == 3.5 and row["steps"] == 6
        assert [r["cell_id"] for r in store.rows()] == [f"cell{i:03d}" for i in range(4)]
        assert [r["cell_id"] for r in store.rows(model_hash="hash1")] == ["cell001", "cell003"]
        assert [r["cell_id"] for r in store.rows(sampler="dpmpp", model="c8")] == ["cell000"]
        with pytest.raises(StoreError, match="cannot filter"):
            store.rows(metrics="x")
    # WAL mode and the data persist across a reopen.
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.cell_ids() == {f"cell{i:03d}" for i in range(4)}
    mode = sqlite3.connect(tmp_path / "r.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_put_same_cell_id_is_idempotent(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.put(make_row(1)) is True
        second = make_row(1, metrics={"fd_probe": {"value": 999.0, "lo": 0, "hi": 0, "n": 1}})
        assert store.put(second) is False
        assert len(store) == 1
        assert store.get("cell001")["metrics"]["fd_probe"]["value"] == 9.0  # the first row wins


def test_bad_rows_are_refused_without_writing(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        row = make_row(0)
        del row["model_hash"]
        with pytest.raises(StoreError, match="model_hash"):
            store.put(row)
        with pytest.raises(StoreError, match="unknown key"):
            store.put(make_row(0, colour="red"))
        with pytest.raises(StoreError, match="value/lo/hi"):
            store.put(make_row(0, metrics={"fid": 3.0}))
        assert len(store) == 0


def test_store_refuses_non_sqlite_and_folders(tmp_path):
    bad = tmp_path / "bad.sqlite"
    bad.write_text("this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot open"):
        ResultsStore(bad)
    with pytest.raises(StoreError, match="is a folder"):
        ResultsStore(tmp_path)


def test_flatten_row_columns():
    flat = flatten_row(make_row(2))
    assert flat["metric.fd_probe"] == 8.0
    assert flat["metric.fd_probe.lo"] == 7.0
    assert flat["metric.fd_probe.hi"] == 9.0
    assert flat["metric.alignment.n"] == 16
    assert json.loads(flat["provenance"])["code_version"] == "test"
    assert "metrics" not in flat


def test_export_csv(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        for i in range(3):
            store.put(make_row(i))
        # a row with a different metric set: columns are the union, missing cells empty
        store.put(make_row(9, metrics={"fid": {"value": 30.0, "lo": 29.0, "hi": 31.0, "n": 16}}))
        out = store.export_csv(tmp_path / "out" / "r.csv")
    with open(out, newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == 4
    assert records[1]["cell_id"] == "cell001"
    assert float(records[1]["metric.fd_probe"]) == 9.0
    assert float(records[1]["sampling_cost"]) == pytest.approx(5.0)
    assert records[3]["metric.fid"] == "30.0" and records[3]["metric.fd_probe"] == ""
    assert records[0]["metric.fid"] == ""


def test_export_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    with ResultsStore(tmp_path / "r.sqlite") as store:
        for i in range(3):
            store.put(make_row(i))
        out = store.export_parquet(tmp_path / "r.parquet")
    table = pq.read_table(out).to_pylist()
    assert [r["cell_id"] for r in table] == ["cell000", "cell001", "cell002"]
    assert table[2]["metric.fd_probe.hi"] == 9.0
    assert table[0]["steps"] == 4 and table[0]["flops"] == 1e9


def test_export_parquet_without_pyarrow_says_how_to_fix(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *a, **k):
        if name.startswith("pyarrow"):
            raise ImportError("no pyarrow here")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put(make_row(0))
        with pytest.raises(StoreError, match="pip install pyarrow"):
            store.export_parquet(tmp_path / "r.parquet")


#: The table as schema version 1 wrote it (ldmscale 4f38506), for the migration test.
V1_DDL = """
CREATE TABLE cells (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, cell_id TEXT NOT NULL UNIQUE, model TEXT NOT NULL,
    model_path TEXT, model_hash TEXT NOT NULL, c INTEGER, params INTEGER, norm_cost REAL,
    sampler TEXT NOT NULL, steps INTEGER NOT NULL, guidance REAL NOT NULL,
    n_images INTEGER NOT NULL, nfe REAL, sampling_cost REAL, flops REAL, metrics TEXT NOT NULL,
    protocol TEXT NOT NULL, provenance TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX cells_group ON cells (model_hash, sampler, steps);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('schema_version', '1');
"""


def _v1_store(path, seeds_of_rows):
    con = sqlite3.connect(path)
    con.executescript(V1_DDL)
    for i, seeds in enumerate(seeds_of_rows):
        r = make_row(i, provenance={"seeds": seeds, "code_version": "old"})
        con.execute(
            "INSERT INTO cells (cell_id, model, model_path, model_hash, c, params, norm_cost, "
            "sampler, steps, guidance, n_images, nfe, sampling_cost, flops, metrics, protocol, "
            "provenance, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [r[k] for k in ("cell_id", "model", "model_path", "model_hash", "c", "params")]
            + [r[k] for k in ("norm_cost", "sampler", "steps", "guidance", "n_images", "nfe")]
            + [r["sampling_cost"], r["flops"], json.dumps(r["metrics"])]
            + [json.dumps(r["protocol"]), json.dumps(r["provenance"]), "2024-01-01T00:00:00"],
        )
    con.commit()
    con.close()


def test_a_version_1_store_is_migrated_in_place(tmp_path):
    from ldmscale.store import SCHEMA_VERSION, V2_COLUMNS

    path = tmp_path / "old.sqlite"
    _v1_store(path, [list(range(16)), list(range(5, 21))])
    with ResultsStore(path) as store:
        old = store.rows()
        assert [r["cell_id"] for r in old] == ["cell000", "cell001"]
        assert [r["timestep_spacing"] for r in old] == ["leading", "leading"]
        assert [r["seed0"] for r in old] == [0, 5]  # from each row's stored seeds
        assert all(r[k] is None for r in old for k in ("train_step", "train_compute", "train_seed"))
        assert old[0]["metrics"]["fd_probe"]["value"] == 10.0
        assert store.put(make_row(2, timestep_spacing="trailing", seed0=10_000, train_step=100))
        assert [r["cell_id"] for r in store.rows(timestep_spacing="leading")] == [
            "cell000",
            "cell001",
        ]
        assert store.get("cell002")["seed0"] == 10_000 and store.get("cell002")["train_step"] == 100
    con = sqlite3.connect(path)
    columns = {r[1] for r in con.execute("PRAGMA table_info(cells)")}
    version = con.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()[0]
    con.close()
    assert {name for name, _ in V2_COLUMNS} <= columns
    assert int(version) == SCHEMA_VERSION == 2
    with ResultsStore(path) as store:  # reopening a migrated file changes nothing
        assert len(store) == 3 and store.get("cell001")["seed0"] == 5


def test_new_columns_default_and_newer_schema_is_refused(tmp_path):
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.put(make_row(0, provenance={"seeds": [3, 4], "code_version": "t"}))
        row = store.get("cell000")
        assert (row["timestep_spacing"], row["seed0"], row["train_seed"]) == ("leading", 3, None)
        flat = flatten_row(make_row(1))
        assert flat["timestep_spacing"] == "leading" and flat["seed0"] == 0
    con = sqlite3.connect(tmp_path / "r.sqlite")
    con.execute("UPDATE meta SET value = '3' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(StoreError, match="schema version 3"):
        ResultsStore(tmp_path / "r.sqlite")
