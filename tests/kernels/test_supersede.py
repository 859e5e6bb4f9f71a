"""Which staged units a build uses: lcstore.kernels.supersede.select_units on ledger frames.

The ledgers are written as ledger files and read back with read_ledger, so that the
frame select_units gets has the columns and types a build gives it. The rules
(docs/inputs.md, docs/architecture.md):

* an exposure-quadrant (expid, ccdid, qid) is used at its highest procversion; every
  lower version is superseded;
* two files with different content giving one exposure-quadrant at one procversion, or
  one reference catalog (field, ccdid, qid, filtercode), conflict: the unit of the file
  with the smallest SHA-256 is kept, the others are left out and reported, each message
  naming the file left out and the kept file's hash;
* the units of a withdrawn file are left out before any of this.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore.io.ledger import LEDGER_SCHEMA, read_ledger
from lcstore.kernels.embargo import Cutoffs, parse_date
from lcstore.kernels.supersede import select_units, units_in_use

EQ_KEY = ("expid", "ccdid", "qid")
EVERYTHING = Cutoffs(parse_date("2030-01-01"), parse_date("2030-01-01"))
REF_KEY = ("field", "ccdid", "qid", "filtercode")


def sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def unit_of(digest: str, key: tuple) -> int:
    """A unit ID from the file's content and the unit's key, as ingest makes them."""
    text = digest + ":" + ",".join(str(k) for k in key)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def epoch(digest: str, expid: int, procversion: int, ccdid: int = 1, qid: int = 1, path: str = "") -> dict:
    """Ledger row of one exposure-quadrant of an epoch file."""
    key = (expid, ccdid, qid, procversion)
    return {
        "unit": unit_of(digest, key),
        "kind": "epochs",
        "sha256": digest,
        "path": path or f"/delivery/epochs/{digest[:10]}.parquet",
        "size": 1000,
        "mtime_ns": 0,
        "batch": "b",
        "nrows": 10,
        "expid": expid,
        "field": 600,
        "ccdid": ccdid,
        "qid": qid,
        "filtercode": "zg",
        "procversion": procversion,
        "programid": 1,
        "mjd": 58300.0 + expid,
        "cells": [1],
    }


def ref(digest: str, field: int, filtercode: str, ccdid: int = 1, qid: int = 1, path: str = "") -> dict:
    """Ledger row of one reference catalog."""
    key = (field, ccdid, qid, filtercode)
    return {
        "unit": unit_of(digest, key),
        "kind": "refs",
        "sha256": digest,
        "path": path or f"/delivery/refs/{digest[:10]}.parquet",
        "size": 1000,
        "mtime_ns": 0,
        "batch": "b",
        "nrows": 10,
        "field": field,
        "ccdid": ccdid,
        "qid": qid,
        "filtercode": filtercode,
        "cells": [1],
    }


def ledger(rows: list[dict]):
    """The ledger frame a build reads, holding ``rows`` in this order."""
    with tempfile.TemporaryDirectory() as store:
        folder = Path(store) / "ledger"
        folder.mkdir()
        pq.write_table(pa.Table.from_pylist(rows, schema=LEDGER_SCHEMA), folder / "b.parquet")
        return read_ledger(store)


def select(rows: list[dict], withdrawn: frozenset[str] = frozenset()):
    return select_units(ledger(rows), withdrawn)


def units(*rows: dict) -> list[int]:
    return sorted(r["unit"] for r in rows)


def as_list(array: np.ndarray) -> list[int]:
    return sorted(np.asarray(array, dtype=np.int64).tolist())


# --------------------------------------------------------------------------- examples


def test_an_empty_ledger_selects_nothing_and_reports_nothing(tmp_path):
    empty = read_ledger(tmp_path)
    assert len(empty) == 0
    chosen = select_units(empty, frozenset({sha("gone")}))
    for array in (chosen.superseded, chosen.conflicting, chosen.withdrawn, chosen.excluded):
        assert len(array) == 0
    assert chosen.conflicts == []


@pytest.mark.parametrize("newest_hash", ["smallest", "largest"])
def test_a_later_procversion_supersedes_every_earlier_one(newest_hash):
    """Whatever the hashes: the content hash only breaks ties between equal versions."""
    digests = sorted(sha(f"file {i}") for i in range(3))
    if newest_hash == "largest":
        digests = digests[::-1]
    v3, v2, v1 = (epoch(d, 1, v) for d, v in zip(digests, (3, 2, 1), strict=True))
    other_quadrant = epoch(sha("other quadrant"), 1, 1, qid=2)
    other_exposure = epoch(sha("other exposure"), 2, 1)
    chosen = select([v1, v2, v3, other_quadrant, other_exposure])
    assert as_list(chosen.superseded) == units(v1, v2)
    assert as_list(chosen.excluded) == units(v1, v2)
    assert len(chosen.conflicting) == 0 and chosen.conflicts == []


def test_versions_of_one_file_and_quadrants_of_one_file_are_units_of_their_own():
    """One file (one hash) may hold several exposure-quadrants, even two versions of one."""
    digest = sha("matchfile")
    first, second, older, newer = (
        epoch(digest, 1, 1),
        epoch(digest, 1, 1, qid=3),
        epoch(digest, 2, 1),
        epoch(digest, 2, 2),
    )
    chosen = select([first, second, older, newer])
    assert as_list(chosen.superseded) == units(older)
    assert len(chosen.conflicting) == 0 and chosen.conflicts == []


def test_two_files_giving_one_quadrant_and_version_conflict():
    """The file with the smaller hash is kept; the other is left out, and reported by
    its path with the kept file's hash."""
    kept_hash, dropped_hash = sorted([sha("delivery A"), sha("delivery B")])
    kept = epoch(kept_hash, 7, 2, path="/delivery/a.parquet")
    dropped = epoch(dropped_hash, 7, 2, path="/delivery/b.parquet")
    older = epoch(sha("version 1"), 7, 1)
    for rows in ([kept, dropped, older], [dropped, older, kept]):
        chosen = select(rows)
        assert as_list(chosen.conflicting) == units(dropped)
        assert as_list(chosen.superseded) == units(older)
        assert as_list(chosen.excluded) == units(dropped, older)
        [message] = chosen.conflicts
        assert message.startswith(f"{dropped['path']}: same expid/ccdid/qid/procversion as {kept_hash[:12]}")
        assert kept["path"] not in message.split(":")[0]


def test_three_files_giving_one_quadrant_and_version_keep_the_smallest_hash():
    digests = sorted(sha(f"delivery {i}") for i in range(3))
    rows = [epoch(d, 3, 1, path=f"/delivery/{i}.parquet") for i, d in enumerate(digests)]
    chosen = select(rows[::-1])
    assert as_list(chosen.conflicting) == units(*rows[1:])
    assert sorted(m.split(": same")[0] for m in chosen.conflicts) == [r["path"] for r in rows[1:]]
    assert all(f"as {digests[0][:12]}" in m for m in chosen.conflicts)


def test_a_conflict_between_superseded_versions_is_moot():
    """Two contents of version 1 under a version 2: both are superseded, none conflicts."""
    a, b = epoch(sha("A"), 5, 1), epoch(sha("B"), 5, 1)
    newest = epoch(sha("C"), 5, 2)
    chosen = select([a, b, newest])
    assert as_list(chosen.superseded) == units(a, b)
    assert len(chosen.conflicting) == 0 and chosen.conflicts == []


def test_two_reference_catalogs_of_one_key_conflict_and_the_smallest_hash_is_kept():
    kept_hash, dropped_hash = sorted([sha("ref A"), sha("ref B")])
    kept = ref(kept_hash, 600, "zg", path="/delivery/refs/a.parquet")
    dropped = ref(dropped_hash, 600, "zg", path="/delivery/refs/b.parquet")
    # Another band, quadrant or field is another catalog, and an epoch unit with the same
    # field, ccdid and qid is no reference catalog.
    others = [ref(sha("zr"), 600, "zr"), ref(sha("q2"), 600, "zg", qid=2), ref(sha("601"), 601, "zg")]
    same_place = epoch(sha("epoch"), 1, 1)
    chosen = select([dropped, *others, same_place, kept])
    assert as_list(chosen.conflicting) == units(dropped)
    assert len(chosen.superseded) == 0
    assert as_list(chosen.excluded) == units(dropped)
    [message] = chosen.conflicts
    assert message.startswith(f"{dropped['path']}: same field/ccdid/qid/filtercode as {kept_hash[:12]}")


def test_a_withdrawn_files_units_are_left_out_and_supersede_nothing():
    digest = sha("withdrawn reprocessing")
    newer, newer_other_quadrant = epoch(digest, 1, 2), epoch(digest, 1, 2, qid=4)
    older, older_other_quadrant = epoch(sha("v1 q1"), 1, 1), epoch(sha("v1 q4"), 1, 1, qid=4)
    chosen = select([older, newer, older_other_quadrant, newer_other_quadrant], frozenset({digest}))
    assert as_list(chosen.withdrawn) == units(newer, newer_other_quadrant)
    assert as_list(chosen.excluded) == units(newer, newer_other_quadrant)
    assert len(chosen.superseded) == 0 and len(chosen.conflicting) == 0
    # Without the withdrawal, the reprocessing supersedes the version-1 units.
    assert as_list(select([older, newer, older_other_quadrant, newer_other_quadrant]).superseded) == units(
        older, older_other_quadrant
    )


def test_a_withdrawn_file_wins_no_conflict():
    winner_hash, loser_hash = sorted([sha("conflict A"), sha("conflict B")])
    winner, loser = epoch(winner_hash, 9, 1), epoch(loser_hash, 9, 1)
    ref_winner_hash, ref_loser_hash = sorted([sha("ref conflict A"), sha("ref conflict B")])
    ref_winner, ref_loser = ref(ref_winner_hash, 600, "zi"), ref(ref_loser_hash, 600, "zi")
    chosen = select([winner, loser, ref_winner, ref_loser], frozenset({winner_hash, ref_winner_hash}))
    assert as_list(chosen.withdrawn) == units(winner, ref_winner)
    assert as_list(chosen.excluded) == units(winner, ref_winner)
    assert len(chosen.conflicting) == 0 and chosen.conflicts == []


def test_a_withdrawal_of_a_file_not_in_the_ledger_changes_nothing():
    rows = [epoch(sha("A"), 1, 1), ref(sha("R"), 600, "zg")]
    chosen = select(rows, frozenset({sha("never delivered")}))
    assert len(chosen.excluded) == 0 and chosen.conflicts == []


def test_the_same_epoch_content_seen_twice_is_no_conflict_with_itself():
    digest = sha("one exposure-quadrant")
    first = epoch(digest, 4, 1, path="/delivery/night1/a.parquet")
    again = epoch(digest, 4, 1, path="/delivery/redelivered/copy.parquet")
    assert first["unit"] == again["unit"]
    chosen = select([first, again])
    assert chosen.conflicts == []
    assert len(chosen.excluded) == 0, "the unit was left out of the release"


def test_the_same_reference_catalog_seen_twice_is_no_conflict_with_itself():
    digest = sha("one reference catalog")
    first = ref(digest, 600, "zr", path="/delivery/refs/a.parquet")
    again = ref(digest, 600, "zr", path="/delivery/refs/copy.parquet")
    chosen = select([first, again])
    assert chosen.conflicts == []
    assert len(chosen.excluded) == 0, "the reference catalog was left out of the release"


def test_the_same_content_seen_twice_beside_a_real_conflict_is_reported_once():
    kept_hash, dropped_hash = sorted([sha("conflict X"), sha("conflict Y")])
    kept, again = epoch(kept_hash, 8, 1), epoch(kept_hash, 8, 1, path="/delivery/copy.parquet")
    dropped = epoch(dropped_hash, 8, 1)
    chosen = select([kept, again, dropped])
    assert as_list(chosen.excluded) == units(dropped)
    assert [m.split(": same")[0] for m in chosen.conflicts] == [dropped["path"]]


def test_a_unit_recorded_by_two_batches_is_read_from_the_smallest_batch_id():
    """Each copy's staging rows are the same; the build reads the unit's rows once, from
    one batch, and Selection.repeats names the batch whose copy it skips."""
    digest = sha("staged twice")
    first = epoch(digest, 4, 1) | {"batch": "b7"}
    again = epoch(digest, 4, 1) | {"batch": "b3"}
    other = epoch(sha("other"), 5, 1) | {"batch": "b7"}
    frame = ledger([first, again, other])
    chosen = select_units(frame)
    assert chosen.conflicts == [] and len(chosen.excluded) == 0
    assert list(chosen.repeats) == ["b7"] and chosen.repeats["b7"].tolist() == [first["unit"]]
    used = units_in_use(frame, chosen, EVERYTHING)
    assert sorted(zip(used["unit"], used["batch"], strict=True)) == sorted(
        [(first["unit"], "b3"), (other["unit"], "b7")]
    )


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_recording_units_again_in_other_batches_changes_no_choice(data):
    """Copies of ledger rows in other batches (the same content and key again, as a dead
    build's ingest could leave) select exactly what the ledger without them selects."""
    rows, withdrawn = data.draw(ledgers())
    copied = data.draw(st.lists(st.sampled_from(rows), unique_by=lambda r: r["unit"])) if rows else []
    batches = data.draw(st.lists(st.sampled_from(["a", "c"]), min_size=len(copied), max_size=len(copied)))
    copies = [r | {"batch": b} for r, b in zip(copied, batches, strict=True)]
    plain, doubled = select(rows, withdrawn), select(rows + copies, withdrawn)
    for name in ("superseded", "conflicting", "withdrawn", "excluded"):
        assert as_list(getattr(plain, name)) == as_list(getattr(doubled, name)), name
    assert sorted(plain.conflicts) == sorted(doubled.conflicts)
    # The copies in batch "a" are read, those of "b" they repeat are not; copies in "c" are not read.
    want: dict[str, set[int]] = defaultdict(set)
    for r in copies:
        want["b" if r["batch"] == "a" else "c"].add(r["unit"])
    assert {b: set(u.tolist()) for b, u in doubled.repeats.items()} == dict(want)
    used = units_in_use(ledger(rows + copies), doubled, EVERYTHING)
    assert not used["unit"].duplicated().any()
    assert sorted(used["unit"]) == sorted(units_in_use(ledger(rows), plain, EVERYTHING)["unit"])


# --------------------------------------------------------------------------- properties


def expected_selection(rows: list[dict], withdrawn: frozenset[str]) -> dict:
    """The rules, stated plainly, for ledgers where each (file, unit key) appears once."""
    gone = {r["unit"] for r in rows if r["sha256"] in withdrawn}
    live = [r for r in rows if r["sha256"] not in withdrawn]
    superseded, conflicting, reported = set(), set(), set()
    groups = defaultdict(list)
    for r in live:
        key = tuple(r[k] for k in (EQ_KEY if r["kind"] == "epochs" else REF_KEY))
        groups[r["kind"], key].append(r)
    for (kind, _), group in groups.items():
        top = max(r.get("procversion") or 0 for r in group) if kind == "epochs" else None
        if kind == "epochs":
            superseded |= {r["unit"] for r in group if r["procversion"] < top}
            group = [r for r in group if r["procversion"] == top]
        kept = min(r["sha256"] for r in group)
        for r in group:
            if r["sha256"] != kept:
                conflicting.add(r["unit"])
                reported.add((r["path"], kept[:12]))
    return {"superseded": superseded, "conflicting": conflicting, "withdrawn": gone, "reported": reported}


def reported(messages: list[str], rows: list[dict]) -> set[tuple[str, str]]:
    """(path of the file left out, kept hash prefix) named by each conflict message."""
    hashes = {r["sha256"][:12] for r in rows}
    out = set()
    for m in messages:
        path, _, rest = m.partition(": same ")
        named = {h for h in hashes if f" as {h}" in rest}
        assert len(named) == 1, m
        out.add((path, named.pop()))
    return out


@st.composite
def ledgers(draw) -> tuple[list[dict], frozenset[str]]:
    """A ledger of a few files: epoch files of one or more exposure-quadrants (some at
    several versions) and reference catalogs, over few keys so that they collide; each
    (file, unit key) once. Returns its rows and the hashes of withdrawn files."""
    rows, seen, hashes = [], set(), []
    for i in range(draw(st.integers(0, 8))):
        digest = sha(f"file {i}")
        hashes.append(digest)
        if draw(st.booleans()):
            keys = draw(
                st.lists(
                    st.tuples(st.integers(1, 2), st.integers(1, 2), st.integers(1, 2)), min_size=1, max_size=3
                )
            )
            for expid, qid, version in keys:
                if (digest, expid, qid, version) not in seen:
                    seen.add((digest, expid, qid, version))
                    rows.append(epoch(digest, expid, version, qid=qid))
        else:
            field, band = draw(st.sampled_from([600, 601])), draw(st.sampled_from(["zg", "zr"]))
            rows.append(ref(digest, field, band))
    withdrawn = frozenset(draw(st.lists(st.sampled_from(hashes), max_size=2)) if hashes else [])
    return rows, withdrawn


@settings(max_examples=60, deadline=None)
@given(ledgers())
def test_selection_follows_the_rules(case):
    rows, withdrawn = case
    chosen = select(rows, withdrawn)
    want = expected_selection(rows, withdrawn)
    assert set(as_list(chosen.superseded)) == want["superseded"]
    assert set(as_list(chosen.conflicting)) == want["conflicting"]
    assert set(as_list(chosen.withdrawn)) == want["withdrawn"]
    assert set(as_list(chosen.excluded)) == want["superseded"] | want["conflicting"] | want["withdrawn"]
    assert len(chosen.conflicts) == len(want["conflicting"])
    assert reported(chosen.conflicts, rows) == want["reported"]
    # What is left: one unit per exposure-quadrant and per reference catalog key.
    kept = [r for r in rows if r["unit"] not in set(as_list(chosen.excluded))]
    eq = [tuple(r[k] for k in EQ_KEY) for r in kept if r["kind"] == "epochs"]
    refs = [tuple(r[k] for k in REF_KEY) for r in kept if r["kind"] == "refs"]
    assert len(set(eq)) == len(eq) and len(set(refs)) == len(refs)


@settings(max_examples=40, deadline=None)
@given(ledgers(), st.randoms(use_true_random=False))
def test_selection_does_not_depend_on_the_ledgers_row_order(case, rng):
    rows, withdrawn = case
    frame = ledger(rows)
    order = list(range(len(frame)))
    rng.shuffle(order)
    shuffled = frame.iloc[order].reset_index(drop=True)
    a, b = select_units(frame, withdrawn), select_units(shuffled, withdrawn)
    for name in ("superseded", "conflicting", "withdrawn", "excluded"):
        assert as_list(getattr(a, name)) == as_list(getattr(b, name)), name
    assert sorted(a.conflicts) == sorted(b.conflicts)
