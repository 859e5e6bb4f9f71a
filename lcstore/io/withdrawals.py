"""The store's withdrawal records: ``STORE/withdrawn/<sha256>.json``, one per withdrawn
input file, and ``STORE/withdrawn/restored/`` for the undone ones (see
:mod:`lcstore.ops.withdraw`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

#: Folder of a store that holds the withdrawal records.
WITHDRAWN_DIR = "withdrawn"
#: Its subfolder of undone withdrawals.
RESTORED_DIR = "restored"


@dataclass(frozen=True)
class Withdrawal:
    """A withdrawn file: its content hash, where it was delivered, its units, why, when."""

    sha256: str
    paths: list[str]
    units: int
    reason: str
    time: str  # UTC, ISO 8601


def withdrawals(store: str | Path) -> list[Withdrawal]:
    """Every withdrawal recorded in a store, by content hash."""
    folder = Path(store) / WITHDRAWN_DIR
    return [Withdrawal(**json.loads(f.read_text())) for f in sorted(folder.glob("*.json"))]


def ever_withdrawn(store: str | Path) -> frozenset[str]:
    """Content hashes of every file ever withdrawn from a store, restored since or not."""
    folder = Path(store) / WITHDRAWN_DIR
    records = [*folder.glob("*.json"), *(folder / RESTORED_DIR).glob("*.json")]
    return frozenset(json.loads(f.read_text())["sha256"] for f in records)
