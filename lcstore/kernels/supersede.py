"""Which staged units count: reprocessing supersedes, conflicts are resolved and reported.

* An exposure-quadrant delivered with a higher ``procversion`` supersedes every older
  version of itself entirely, whatever release the older one was in.
* Two different files claiming the same exposure-quadrant *and* ``procversion`` conflict:
  one is kept (the one with the smallest content hash, so the choice never depends on
  delivery order) and the conflict is reported.
* A reference catalog (field, ccdid, qid, filtercode) delivered in several versions keeps
  the same deterministic choice and reports it.
* The units of a withdrawn file (:mod:`lcstore.ops.withdraw`) are left out before any of the
  above: they supersede nothing and win no conflict.
* The same content recorded twice is one unit, not a conflict with itself. A unit's ID is
  a hash of its file's content and its key, so two ledger rows with one ID hold the same
  rows; each is read once, from the batch with the smallest ID (:attr:`Selection.repeats`
  names the others). A build records each content once, but a store can hold a unit
  twice, recorded by lcstore 0.5.0 or older when a killed build's ingest tasks committed
  after the next build had read the ledger.

Pure pandas; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lcstore import schema
from lcstore.kernels.embargo import Cutoffs, eligible
from lcstore.schema import EPOCHS, REFS


@dataclass(frozen=True)
class Selection:
    """The outcome of superseding: unit IDs to leave out, and why."""

    superseded: np.ndarray  # older procversions
    conflicting: np.ndarray  # same key and version as a kept unit, different content
    conflicts: list[str] = field(default_factory=list)
    withdrawn: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # withdrawn files
    #: Units recorded again by another batch than the one they are read from: batch ->
    #: sorted unit IDs whose rows in that batch's staging files are copies, not to be read.
    repeats: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def excluded(self) -> np.ndarray:
        return np.union1d(np.union1d(self.superseded, self.conflicting), self.withdrawn)


def _pick(units: pd.DataFrame, key: list[str], version: str | None) -> tuple[pd.Series, pd.Series, list[str]]:
    sort_cols = [*key, *([version] if version else []), "sha256"]
    ascending = [True] * len(key) + ([False] if version else []) + [True]
    ordered = units.sort_values(sort_cols, ascending=ascending, kind="stable")
    best = ordered.groupby(key, sort=False).head(1)
    rest = ordered.drop(best.index)
    group_key = [*key, version] if version else key
    same_version = rest.merge(best[[*group_key, "sha256"]], on=group_key, suffixes=("", "_kept"))
    conflicts = [
        f"{row.path}: same {'/'.join(group_key)} as {row.sha256_kept[:12]}… but different content; "
        f"kept the other file"
        for row in same_version.itertuples()
    ]
    conflicting = same_version["unit"]
    superseded = rest.loc[~rest["unit"].isin(conflicting), "unit"]
    return superseded, conflicting, conflicts


def _repeated_records(ledger: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The ledger rows that record a unit another row records too, but for the one of
    the smallest batch ID (a boolean mask over the rows, in their order), and the units
    that batches other than that one hold copies of (batch -> unit IDs)."""
    units = ledger["unit"].to_numpy()
    twice = ledger["unit"].duplicated(keep=False).to_numpy()
    again = np.zeros(len(ledger), dtype=bool)
    if not twice.any():  # the common case costs one hash pass
        return again, {}
    rows = np.flatnonzero(twice)
    copies = pd.DataFrame({"unit": units[rows], "batch": ledger["batch"].to_numpy()[rows], "row": rows})
    copies = copies.sort_values(["unit", "batch", "row"], kind="stable")
    kept_batch = copies.groupby("unit", sort=False)["batch"].transform("first")
    repeated = copies["unit"].duplicated()
    again[copies.loc[repeated, "row"].to_numpy()] = True
    elsewhere = copies[repeated & (copies["batch"] != kept_batch)]
    return again, {
        str(b): np.unique(g["unit"].to_numpy(dtype=np.int64)) for b, g in elsewhere.groupby("batch")
    }


def _repeated_mask(ledger: pd.DataFrame, repeats: dict[str, np.ndarray]) -> np.ndarray:
    """The rows of ``ledger`` that :attr:`Selection.repeats` names."""
    mask = np.zeros(len(ledger), dtype=bool)
    if repeats:
        batch, unit = ledger["batch"].to_numpy(), ledger["unit"].to_numpy()
        for b, units in repeats.items():
            mask |= (batch == b) & np.isin(unit, units)
    return mask


def select_units(ledger: pd.DataFrame, withdrawn: frozenset[str] = frozenset()) -> Selection:
    """Decide which staged units a build uses.

    Parameters
    ----------
    ledger : pandas.DataFrame
        The store's ledger (see :func:`lcstore.io.ledger.read_ledger`).
    withdrawn : frozenset of str
        SHA-256 of the withdrawn files.
    """
    gone = ledger["sha256"].isin(withdrawn).to_numpy()
    # A unit recorded twice (same content, same key) is one unit: its other records are
    # no other content, and must not be taken for a conflict with itself.
    again, repeats = _repeated_records(ledger)
    # Only the columns the choice reads: each step below copies its frame, and the ledger
    # has a row per unit ever staged (18.5 million for ZTF's images).
    keys = [*schema.EXPOSURE_QUADRANT_KEY, "procversion", *schema.REF_CATALOG_KEY]
    narrow = ledger[list(dict.fromkeys(["unit", "sha256", "path", *keys]))]
    kind = ledger["kind"].to_numpy()
    epochs = narrow[~gone & ~again & (kind == EPOCHS)]
    refs = narrow[~gone & ~again & (kind == REFS)]
    e_sup, e_conf, e_msgs = _pick(epochs, list(schema.EXPOSURE_QUADRANT_KEY), "procversion")
    r_sup, r_conf, r_msgs = _pick(refs, list(schema.REF_CATALOG_KEY), None)
    # A reference catalog has no version: any other content for the same key is a conflict.
    return Selection(
        superseded=np.sort(e_sup.to_numpy(dtype=np.int64)),
        conflicting=np.sort(np.concatenate([e_conf, r_sup, r_conf]).astype(np.int64)),
        conflicts=e_msgs + r_msgs,
        withdrawn=np.unique(ledger.loc[gone, "unit"].to_numpy(dtype=np.int64)),
        repeats=repeats,
    )


def units_in_use(ledger: pd.DataFrame, selection: Selection, cutoffs: Cutoffs) -> pd.DataFrame:
    """The ledger rows of the units a release uses, one row per unit: the current
    reference catalogs, and the current exposure-quadrants that ``cutoffs`` let it show.

    Parameters
    ----------
    ledger : pandas.DataFrame
        The ledger ``selection`` was made from (:func:`select_units`).
    selection : Selection
    cutoffs : Cutoffs
        The release's cutoffs.
    """
    current = ledger[~ledger["unit"].isin(selection.excluded) & ~_repeated_mask(ledger, selection.repeats)]
    current = current.drop_duplicates("unit")  # copies within one batch, if any
    is_ref = current["kind"] == REFS
    ok = eligible(current["programid"].fillna(0).to_numpy(), current["mjd"].fillna(0).to_numpy(), cutoffs)
    return current[is_ref | ok]
