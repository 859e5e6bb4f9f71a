"""The ledger: ``STORE/ledger/<batch>.parquet``, one row per unit an ingest batch staged
(its file, content hash, key, rows and sky cells). A batch counts only once its ledger
file exists.

An ingest task writes its batch's ledger file into its build's own folder; the build's
driver, which holds the store's lock, commits it: :func:`commit_batch` renames it into
``STORE/ledger`` (see :mod:`lcstore.pipeline.ingest` for why no task writes there)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lcstore.errors import StoreError
from lcstore.io.layout import LEDGER_DIR
from lcstore.io.staging import remove_uncommitted

LEDGER_SCHEMA = pa.schema(
    [
        ("unit", pa.int64()),
        ("kind", pa.string()),  # "epochs" or "refs"
        ("sha256", pa.string()),  # of the whole file
        ("path", pa.string()),
        ("size", pa.int64()),  # bytes, and
        ("mtime_ns", pa.int64()),  # modification time, when ingested
        ("batch", pa.string()),
        ("nrows", pa.int64()),
        ("expid", pa.int64()),
        ("field", pa.int32()),
        ("ccdid", pa.int8()),
        ("qid", pa.int8()),
        ("filtercode", pa.string()),
        ("procversion", pa.int16()),
        ("programid", pa.int8()),  # epochs: the exposure's program
        ("mjd", pa.float64()),  # epochs: the exposure's time
        ("cells", pa.list_(pa.int64())),  # cells (see lcstore.kernels.changes) the unit's rows fall in
    ]
)


def read_ledger(store: str | Path) -> pd.DataFrame:
    """Every unit ever staged in the store (empty frame if none).

    Raises
    ------
    StoreError
        If the ledger was written by an incompatible version of lcstore.
    """
    files = sorted((Path(store) / LEDGER_DIR).glob("*.parquet"))
    if not files:
        return _ledger_frame(LEDGER_SCHEMA.empty_table())
    tables = [pq.read_table(f) for f in files]
    for f, t in zip(files, tables, strict=True):
        if not t.schema.equals(LEDGER_SCHEMA):
            raise StoreError(
                f"ledger file {f} has another layout than this lcstore writes; the store was made "
                "by an incompatible version: rebuild it into a new store"
            )
    return _ledger_frame(pa.concat_tables(tables))


def _ledger_frame(table: pa.Table) -> pd.DataFrame:
    """The ledger as pandas, its ``cells`` lists left in Arrow: as numpy arrays they
    would cost a Python object a unit in the client's memory, and the ledger holds a row
    per unit ever staged (18.5 million for ZTF's images)."""
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


def withdraw_batches(store: str | Path, batches: Iterable[str]) -> None:
    """Undo the ingest of ``batches``: their ledger files first (a batch counts only through
    its ledger file), then their staging files. Call only while holding the store's lock."""
    for batch in batches:
        (Path(store) / LEDGER_DIR / f"{batch}.parquet").unlink(missing_ok=True)
    remove_uncommitted(store)


def pending_ledger_file(pending_dir: str | Path, batch: str) -> Path:
    """Where an ingest task writes the ledger file of ``batch``, in its build's folder
    ``pending_dir``, for the build's driver to commit (:func:`commit_batch`)."""
    return Path(pending_dir) / f"{batch}.parquet"


def commit_batch(store: str | Path, pending_dir: str | Path, batch: str) -> Path:
    """Commit an ingest batch: rename its ledger file from ``pending_dir`` into
    ``STORE/ledger``, which makes its staging files count. One rename: the batch counts
    whole or not at all.

    Call only from the build that holds the store's lock, for a batch its own task staged
    into its own ``pending_dir``. Returns the committed ledger file.
    """
    target = Path(store) / LEDGER_DIR / f"{batch}.parquet"
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(pending_ledger_file(pending_dir, batch), target)
    return target
