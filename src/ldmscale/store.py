"""The results store: one SQLite row per evaluated sweep cell, written atomically.

A *cell* is one (model, sampler, steps, guidance, n_images) evaluation under a fixed
prompt set, seed set and metric protocol. Its ``cell_id`` is a deterministic hash of
everything that produced it (see :func:`ldmscale.sweep.Cell.cell_id`), so the same
cell evaluated twice is the same row, and a resumed sweep skips it.

Storage: stdlib ``sqlite3`` in WAL mode, ``synchronous=FULL``. Each row is inserted
in its own ``BEGIN IMMEDIATE ... COMMIT`` transaction, so a process killed at any
moment (even SIGKILL) leaves every committed cell intact and no half-written one.
Inserting a ``cell_id`` that is already present is a no-op (the first row wins).

Row dict (what :meth:`ResultsStore.rows` returns)::

    cell_id, model, model_path, model_hash, c, params, norm_cost,
    sampler, steps, guidance, n_images, nfe, sampling_cost, flops,
    timestep_spacing, seed0, train_step, train_compute, train_seed,
    metrics:    {name: {"value": float, "lo": float, "hi": float, "n": int}},
    protocol:   {...metric protocol: metric names, reference set, bootstrap, ...},
    provenance: {...model config, sampler config, seeds, prompts hash, code version,
                 wall_s, created_at, ...}

``sampling_cost`` = norm_cost x steps (the paper's x-axis); ``flops`` = actual FLOPs
per image including CFG's doubled batch; ``nfe`` = UNet evaluations per image.
``timestep_spacing`` is the sampler's spacing (``leading`` for rows written before it existed);
``seed0`` the first seed of the cell's seed set (image ``i`` has seed ``seed0 + i``);
``train_step`` / ``train_compute`` (normalized cost x training steps) / ``train_seed`` describe
the model's training when its folder records them (checkpoint exports), else None.

Schema versions: 1 had no ``timestep_spacing``/``seed0``/``train_*`` columns; opening a
version-1 file adds them in one transaction (``ALTER TABLE ... ADD COLUMN``; spacing
``leading``, ``seed0`` from the row's provenance seeds) and marks the file version 2.
The store keeps any metric name a row carries; which way a metric is better is the metric
registry's (:func:`ldmscale.metrics.registry.metric_direction`, re-exported here).
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ldmscale.io import atomic_path
from ldmscale.metrics.registry import metric_direction as metric_direction  # re-export

SCHEMA_VERSION = 2

#: Scalar columns, in table (and export) order.
SCALAR_COLUMNS: tuple[str, ...] = (
    "cell_id",
    "model",
    "model_path",
    "model_hash",
    "c",
    "params",
    "norm_cost",
    "sampler",
    "steps",
    "guidance",
    "n_images",
    "nfe",
    "sampling_cost",
    "flops",
    "timestep_spacing",
    "seed0",
    "train_step",
    "train_compute",
    "train_seed",
)
#: Columns added by schema version 2, with their SQL types (see :func:`_migrate`).
V2_COLUMNS: tuple[tuple[str, str], ...] = (
    ("timestep_spacing", "TEXT NOT NULL DEFAULT 'leading'"),
    ("seed0", "INTEGER NOT NULL DEFAULT 0"),
    ("train_step", "INTEGER"),
    ("train_compute", "REAL"),
    ("train_seed", "INTEGER"),
)
#: Columns stored as JSON text.
JSON_COLUMNS: tuple[str, ...] = ("metrics", "protocol", "provenance")
REQUIRED: tuple[str, ...] = (
    "cell_id",
    "model",
    "model_hash",
    "sampler",
    "steps",
    "guidance",
    "n_images",
    "metrics",
)

_DDL = """
CREATE TABLE IF NOT EXISTS cells (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    cell_id       TEXT NOT NULL UNIQUE,
    model         TEXT NOT NULL,
    model_path    TEXT,
    model_hash    TEXT NOT NULL,
    c             INTEGER,
    params        INTEGER,
    norm_cost     REAL,
    sampler       TEXT NOT NULL,
    steps         INTEGER NOT NULL,
    guidance      REAL NOT NULL,
    n_images      INTEGER NOT NULL,
    nfe           REAL,
    sampling_cost REAL,
    flops         REAL,
    timestep_spacing TEXT NOT NULL DEFAULT 'leading',
    seed0         INTEGER NOT NULL DEFAULT 0,
    train_step    INTEGER,
    train_compute REAL,
    train_seed    INTEGER,
    metrics       TEXT NOT NULL,
    protocol      TEXT NOT NULL,
    provenance    TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS cells_group ON cells (model_hash, sampler, steps);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(ValueError):
    """A results store that cannot be opened, read or written; the message says why."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class ResultsStore:
    """SQLite results store at ``path`` (created on first use). Single writer, many readers.

    Use one instance per process; ``with ResultsStore(p) as s:`` closes it at the end.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.exists() and self.path.is_dir():
            raise StoreError(
                f"results store {self.path} is a folder; give a file path, e.g. results.sqlite"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=60.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_DDL)
            self._conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        except sqlite3.DatabaseError as e:
            raise StoreError(
                f"cannot open results store {self.path}: {e}; is it an SQLite file written by ldmscale?"
            ) from e
        version = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if version and int(version[0]) > SCHEMA_VERSION:
            raise StoreError(
                f"results store {self.path} has schema version {version[0]}, this ldmscale reads "
                f"up to {SCHEMA_VERSION}; read it with the newer ldmscale that wrote it or start "
                "a new store"
            )
        if version and int(version[0]) < SCHEMA_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        """Bring an older file to :data:`SCHEMA_VERSION` in one transaction (idempotent: the
        columns are re-checked inside the lock, so two processes opening it at once are safe)."""
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            have = {r[1] for r in cur.execute("PRAGMA table_info(cells)")}
            for name, sql_type in V2_COLUMNS:
                if name not in have:
                    cur.execute(f"ALTER TABLE cells ADD COLUMN {name} {sql_type}")
            if "seed0" not in have:  # old rows: the first seed of their stored seed list
                for seq, prov in cur.execute("SELECT seq, provenance FROM cells").fetchall():
                    seeds = (json.loads(prov) or {}).get("seeds") or [0]
                    cur.execute("UPDATE cells SET seed0 = ? WHERE seq = ?", (int(seeds[0]), seq))
            cur.execute(
                "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),)
            )
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # -- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------
    def put(self, row: dict[str, Any]) -> bool:
        """Insert one cell row in its own transaction. Returns False if ``cell_id`` was present."""
        missing = [k for k in REQUIRED if row.get(k) is None]
        if missing:
            raise StoreError(f"row for the results store lacks {missing}: {sorted(row)}")
        unknown = set(row) - set(SCALAR_COLUMNS) - set(JSON_COLUMNS) - {"created_at"}
        if unknown:
            raise StoreError(f"row has unknown key(s) {sorted(unknown)}")
        metrics = row["metrics"]
        for name, m in metrics.items():
            if not isinstance(m, dict) or "value" not in m:
                raise StoreError(f"metric {name!r} must be a dict with value/lo/hi/n, got {m!r}")
        row = {**row, **_defaults(row)}
        values = [row.get(k) for k in SCALAR_COLUMNS]
        values += [json.dumps(row.get(k) or {}, sort_keys=True, default=str) for k in JSON_COLUMNS]
        values.append(row.get("created_at") or _now())
        cols = ", ".join((*SCALAR_COLUMNS, *JSON_COLUMNS, "created_at"))
        marks = ", ".join("?" * len(values))
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute(
                f"INSERT INTO cells ({cols}) VALUES ({marks}) ON CONFLICT(cell_id) DO NOTHING",
                values,
            )
            inserted = cur.rowcount == 1
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise
        return inserted

    # -- reading ---------------------------------------------------------------------
    def __contains__(self, cell_id: str) -> bool:
        q = "SELECT 1 FROM cells WHERE cell_id = ?"
        return self._conn.execute(q, (cell_id,)).fetchone() is not None

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM cells").fetchone()[0])

    def cell_ids(self) -> set[str]:
        return {r[0] for r in self._conn.execute("SELECT cell_id FROM cells")}

    def get(self, cell_id: str) -> dict[str, Any] | None:
        rows = self._select("WHERE cell_id = ?", (cell_id,))
        return rows[0] if rows else None

    def rows(self, **where: Any) -> list[dict[str, Any]]:
        """All rows in insertion order, optionally filtered by equality on scalar columns.

        Example: ``store.rows(sampler="ddim", steps=16)``.
        """
        bad = set(where) - set(SCALAR_COLUMNS)
        if bad:
            raise StoreError(
                f"cannot filter on {sorted(bad)}; filter keys are {list(SCALAR_COLUMNS)}"
            )
        clause = " AND ".join(f"{k} = ?" for k in where)
        return self._select(f"WHERE {clause}" if clause else "", tuple(where.values()))

    def _select(self, clause: str, params: tuple) -> list[dict[str, Any]]:
        cols = (*SCALAR_COLUMNS, *JSON_COLUMNS, "created_at")
        q = f"SELECT {', '.join(cols)} FROM cells {clause} ORDER BY seq"
        out = []
        for rec in self._conn.execute(q, params):
            row = dict(zip(cols, rec))
            for k in JSON_COLUMNS:
                row[k] = json.loads(row[k])
            row["provenance"].setdefault("created_at", row.pop("created_at"))
            row.pop("created_at", None)
            out.append(row)
        return out

    # -- export ----------------------------------------------------------------------
    def export_csv(self, path: str | Path) -> Path:
        """Write the flattened rows (see :func:`flatten_row`) as CSV, atomically."""
        flat = [flatten_row(r) for r in self.rows()]
        header = _header(flat)
        path = Path(path)
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(flat)
        return path

    def export_parquet(self, path: str | Path) -> Path:
        """Write the flattened rows as Parquet (needs ``pyarrow``), atomically."""
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as e:
            raise StoreError(
                "Parquet export needs pyarrow: `pip install pyarrow` (or export CSV with --csv)"
            ) from e
        flat = [flatten_row(r) for r in self.rows()]
        header = _header(flat)
        columns = {k: [r.get(k) for r in flat] for k in header}
        table = (
            pa.table(columns) if flat else pa.table({k: pa.array([], pa.string()) for k in header})
        )
        path = Path(path)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return path


def _defaults(row: dict[str, Any]) -> dict[str, Any]:
    """Values of the version-2 columns a row leaves out: spacing ``leading``, ``seed0`` the first
    of ``provenance["seeds"]`` (else 0)."""
    out: dict[str, Any] = {}
    if row.get("timestep_spacing") is None:
        out["timestep_spacing"] = "leading"
    if row.get("seed0") is None:
        seeds = (row.get("provenance") or {}).get("seeds") or [0]
        out["seed0"] = int(seeds[0])
    return out


def flatten_row(row: dict[str, Any]) -> dict[str, Any]:
    """One flat record for CSV/Parquet: scalar columns, ``metric.<name>``,
    ``metric.<name>.lo``, ``metric.<name>.hi``, ``metric.<name>.n``, and ``protocol`` /
    ``provenance`` as JSON text."""
    flat = {k: row.get(k) for k in SCALAR_COLUMNS} | _defaults(row)
    for name, m in sorted(row["metrics"].items()):
        flat[f"metric.{name}"] = m.get("value")
        flat[f"metric.{name}.lo"] = m.get("lo")
        flat[f"metric.{name}.hi"] = m.get("hi")
        flat[f"metric.{name}.n"] = m.get("n")
    flat["protocol"] = json.dumps(row.get("protocol", {}), sort_keys=True)
    flat["provenance"] = json.dumps(row.get("provenance", {}), sort_keys=True)
    return flat


def _header(flat: Iterable[dict[str, Any]]) -> list[str]:
    metric_cols: list[str] = []
    for r in flat:
        for k in r:
            if k.startswith("metric.") and k not in metric_cols:
                metric_cols.append(k)
    return [*SCALAR_COLUMNS, *sorted(metric_cols), "protocol", "provenance"]
