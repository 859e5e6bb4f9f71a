"""Withdrawing a file, and undoing it: how it is named, recorded and refused. What a build
then leaves out is tested in test_incremental.py and test_bad_inputs.py (conflicts)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from lcstore.cli import EXIT_USAGE, main
from lcstore.errors import StoreError
from lcstore.io.ledger import read_ledger
from lcstore.io.withdrawals import RESTORED_DIR, WITHDRAWN_DIR, withdrawals
from lcstore.ops.withdraw import restore, withdraw


@pytest.fixture
def store(query_store: Path, tmp_path: Path) -> Path:
    """A copy of the query store, so that withdrawals stay in this test."""
    return Path(shutil.copytree(query_store, tmp_path / "store"))


def test_a_file_is_named_by_path_or_hash_prefix_and_recorded(store: Path, capsys) -> None:
    ledger = read_ledger(store)
    first, second = ledger.drop_duplicates("sha256").iloc[:2].itertuples()
    by_path = withdraw(store, first.path, "bad zero point")
    assert (by_path.sha256, by_path.paths, by_path.reason) == (first.sha256, [first.path], "bad zero point")
    assert main(["withdraw", str(store), second.sha256[:10], "--reason", "wrong program"]) == 0
    assert second.path in capsys.readouterr().out
    assert {w.sha256 for w in withdrawals(store)} == {first.sha256, second.sha256}
    assert main(["withdraw", str(store), "--list"]) == 0
    listing = capsys.readouterr().out
    assert "bad zero point" in listing and "wrong program" in listing
    again = withdraw(store, first.sha256, "still bad")  # idempotent: one record per file
    assert again.reason == "still bad" and len(list((store / WITHDRAWN_DIR).iterdir())) == 2


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("0123", "SHA-256 prefix of 8"),
        ("not-hex-at-all", "neither an existing file"),
        ("ffffffffffffffff", "no file of store"),
    ],
)
def test_a_target_that_names_no_single_file_is_refused(store: Path, target: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        withdraw(store, target, "x")
    assert not (store / WITHDRAWN_DIR).exists()


def test_a_file_never_ingested_is_refused_by_name(store: Path, tmp_path: Path, capsys) -> None:
    stranger = tmp_path / "stranger.parquet"
    stranger.write_bytes(b"not in the store")
    assert main(["withdraw", str(store), str(stranger), "--reason", "x"]) == EXIT_USAGE
    assert f"{stranger}: no file of store {store} has this content" in capsys.readouterr().err


def test_withdraw_needs_a_reason(store: Path, capsys) -> None:
    sha = read_ledger(store)["sha256"].iloc[0]
    assert main(["withdraw", str(store), sha]) == EXIT_USAGE
    assert "--reason" in capsys.readouterr().err


def test_a_withdrawal_is_undone_by_its_hash_and_kept_on_record(store: Path, capsys) -> None:
    ledger = read_ledger(store)
    first, second = ledger.drop_duplicates("sha256").iloc[:2].itertuples()
    withdraw(store, first.path, "bad zero point")
    withdraw(store, second.path, "wrong program")
    restored = restore(store, first.sha256[:12], "the zero point was right after all")
    assert (restored.sha256, restored.reason) == (first.sha256, "bad zero point")
    assert {w.sha256 for w in withdrawals(store)} == {second.sha256}
    [record] = (store / WITHDRAWN_DIR / RESTORED_DIR).glob(f"{first.sha256}-*.json")
    kept = json.loads(record.read_text())
    assert (
        kept["reason"] == "bad zero point" and kept["restore_reason"] == "the zero point was right after all"
    )
    assert main(["withdraw", str(store), second.sha256[:10], "--undo", "--reason", "fixed upstream"]) == 0
    assert "shows its rows again" in capsys.readouterr().out
    assert withdrawals(store) == []


def test_undoing_a_file_that_is_not_withdrawn_is_refused(store: Path, capsys) -> None:
    sha = read_ledger(store)["sha256"].iloc[0]
    with pytest.raises(StoreError, match="no withdrawn file"):
        restore(store, sha, "x")
    assert main(["withdraw", str(store), sha[:10], "--undo", "--reason", "x"]) == EXIT_USAGE
    assert "no withdrawn file" in capsys.readouterr().err
