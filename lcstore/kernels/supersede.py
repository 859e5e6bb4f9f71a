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

Pure pandas; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lcstore import schema
from lcstore.schema import EPOCHS, REFS


@dataclass(frozen=True)
class Selection:
    """The outcome of superseding: unit IDs to leave out, and why."""

    superseded: np.ndarray  # older procversions
    conflicting: np.ndarray  # same key and version as a kept unit, different content
    conflicts: list[str] = field(default_factory=list)
    withdrawn: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # withdrawn files

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


def select_units(ledger: pd.DataFrame, withdrawn: frozenset[str] = frozenset()) -> Selection:
    """Decide which staged units a build uses.

    Parameters
    ----------
    ledger : pandas.DataFrame
        The store's ledger (see :func:`lcstore.io.ledger.read_ledger`).
    withdrawn : frozenset of str
        SHA-256 of the withdrawn files.
    """
    gone = ledger["sha256"].isin(withdrawn)
    # Only the columns the choice reads: each step below copies its frame, and the ledger
    # has a row per unit ever staged (18.5 million for ZTF's images).
    keys = [*schema.EXPOSURE_QUADRANT_KEY, "procversion", *schema.REF_CATALOG_KEY]
    narrow = ledger[list(dict.fromkeys(["unit", "sha256", "path", *keys]))]
    epochs = narrow[~gone & (ledger["kind"] == EPOCHS)]
    refs = narrow[~gone & (ledger["kind"] == REFS)]
    e_sup, e_conf, e_msgs = _pick(epochs, list(schema.EXPOSURE_QUADRANT_KEY), "procversion")
    r_sup, r_conf, r_msgs = _pick(refs, list(schema.REF_CATALOG_KEY), None)
    # A reference catalog has no version: any other content for the same key is a conflict.
    return Selection(
        superseded=np.sort(e_sup.to_numpy(dtype=np.int64)),
        conflicting=np.sort(np.concatenate([e_conf, r_sup, r_conf]).astype(np.int64)),
        conflicts=e_msgs + r_msgs,
        withdrawn=np.sort(ledger.loc[gone, "unit"].to_numpy(dtype=np.int64)),
    )
