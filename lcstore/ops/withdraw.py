"""Withdraw an ingested file, so that later releases leave its rows out.

The store keeps every file it was given (docs/inputs.md). A file found wrong after it
was ingested (bad data, rows of the wrong program, the winner of a conflict that should
have lost) is withdrawn by its content. Published releases do not change. The next build
leaves out every unit of the file, as if it had never been delivered: an older
procversion that it superseded counts again, and a conflict that it won goes to the
other file.

Each withdrawal is a record ``STORE/withdrawn/<sha256>.json``, written atomically while
holding the store's lock. The same bytes delivered again are skipped as already in the
store, so they stay withdrawn until :func:`restore` undoes the withdrawal: the next build
shows the file's rows again. The undone record is kept in ``STORE/withdrawn/restored/``,
with why and when it was undone.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path

from lcstore.errors import StoreError
from lcstore.io.atomic import write_text_atomic
from lcstore.io.inputs import hash_file
from lcstore.io.ledger import read_ledger
from lcstore.io.store import Store
from lcstore.io.withdrawals import RESTORED_DIR, WITHDRAWN_DIR, Withdrawal, withdrawals

#: Fewest hex digits of a content hash accepted to name a file.
MIN_HASH_PREFIX = 8


def withdraw(store: Store | str | Path, target: str, reason: str) -> Withdrawal:
    """Withdraw an ingested file from every later release of ``store``.

    Parameters
    ----------
    store : Store, str or Path
        The store.
    target : str
        The file (its path, if it still exists: it is hashed) or at least
        :data:`MIN_HASH_PREFIX` leading hex digits of its SHA-256.
    reason : str
        Why, for the record and the build reports.

    Raises
    ------
    StoreError
        If ``store`` is not a store, another build holds its lock, or ``target`` names no
        single file of its ledger.
    """
    st = store if isinstance(store, Store) else Store(store)
    st.config()
    with st.lock():
        ledger = read_ledger(st.path)
        sha = _content_of(target, set(ledger["sha256"]), "file", st.path)
        rows = ledger[ledger["sha256"] == sha]
        record = Withdrawal(
            sha256=sha,
            paths=sorted(set(rows["path"])),
            units=len(rows),
            reason=reason,
            time=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        )
        folder = st.path / WITHDRAWN_DIR
        folder.mkdir(exist_ok=True)
        write_text_atomic(folder / f"{sha}.json", json.dumps(asdict(record), indent=2))
    return record


def restore(store: Store | str | Path, target: str, reason: str) -> Withdrawal:
    """Undo the withdrawal of a file: later releases of ``store`` show its rows again.

    Parameters
    ----------
    store : Store, str or Path
        The store.
    target : str
        The withdrawn file (its path, if it still exists) or at least
        :data:`MIN_HASH_PREFIX` leading hex digits of its SHA-256.
    reason : str
        Why, for the record.

    Returns
    -------
    Withdrawal
        The withdrawal undone.

    Raises
    ------
    StoreError
        If ``store`` is not a store, another build holds its lock, or ``target`` names no
        single withdrawn file.
    """
    st = store if isinstance(store, Store) else Store(store)
    st.config()
    with st.lock():
        folder = st.path / WITHDRAWN_DIR
        sha = _content_of(target, {w.sha256 for w in withdrawals(st.path)}, "withdrawn file", st.path)
        record = folder / f"{sha}.json"
        undone = json.loads(record.read_text())
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        kept = folder / RESTORED_DIR / f"{sha}-{now.replace(':', '')}.json"
        kept.parent.mkdir(exist_ok=True)
        write_text_atomic(kept, json.dumps(undone | {"restore_reason": reason, "restored": now}, indent=2))
        record.unlink()
    return Withdrawal(**undone)


def _content_of(target: str, known: set[str], kind: str, store: Path) -> str:
    """The SHA-256, among ``known`` (the hashes of the store's files of ``kind``), of the
    file that ``target`` names."""
    if Path(target).is_file():
        sha = hash_file(target).sha256
        if sha not in known:
            raise StoreError(f"{target}: no {kind} of store {store} has this content")
        return sha
    prefix = target.lower()
    if len(prefix) < MIN_HASH_PREFIX or any(c not in "0123456789abcdef" for c in prefix):
        raise StoreError(
            f"{target}: neither an existing file nor a SHA-256 prefix of {MIN_HASH_PREFIX}+ hex digits"
        )
    matches = sorted(s for s in known if s.startswith(prefix))
    if len(matches) != 1:
        found = f"no {kind}" if not matches else f"{len(matches)} files"
        raise StoreError(f"{target}: {found} of store {store} with a SHA-256 starting so; give more digits")
    return matches[0]
