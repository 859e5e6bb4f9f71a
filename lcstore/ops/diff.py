"""What changed between two releases: detections added, superseded and newly public.

Detections are accounted per ledger unit (an exposure-quadrant version), which is how
they enter and leave releases; objects are compared by ID. The older release comes first:
the counts name changes in the order releases are published (new exposures, reprocessing,
embargoes that ended), so the other order is refused rather than described in those words.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import pyarrow.dataset as pds

from lcstore import schema
from lcstore.errors import LcstoreError
from lcstore.io.layout import OBJECTS, RELEASE_FILE, STATE_FILE, dataset_dir
from lcstore.io.ledger import read_ledger
from lcstore.io.state import read_units
from lcstore.io.store import Store
from lcstore.io.withdrawals import withdrawals
from lcstore.kernels.embargo import Cutoffs, eligible, parse_date
from lcstore.schema import EPOCHS


class DiffOrderError(LcstoreError, ValueError):
    """The release given as the older one was published after the other."""


@dataclass(frozen=True)
class ReleaseDiff:
    """Differences between release ``old`` and release ``new`` (counts of rows)."""

    old: str
    new: str
    detections_old: int
    detections_new: int
    detections_new_data: int  # exposures delivered since the old release was built
    detections_newly_public: int  # exposures delivered then, but kept back by its cutoffs
    detections_reprocessed: int  # new versions of exposures the old release showed
    detections_superseded: int  # old versions those replaced
    detections_newly_embargoed: int  # shown by old, kept back by new's earlier cutoffs (--force)
    detections_withdrawn: int  # rows of files withdrawn since (lcstore withdraw)
    detections_restored: int  # rows shown again: versions a withdrawn file had replaced
    objects_added: int
    objects_removed: int

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return "\n".join(
            [
                f"{self.old} -> {self.new}",
                f"  detections: {self.detections_old:,} -> {self.detections_new:,}",
                f"    + {self.detections_new_data:,} from new exposures",
                f"    + {self.detections_newly_public:,} newly public (embargo ended)",
                f"    + {self.detections_reprocessed:,} reprocessed, replacing "
                f"{self.detections_superseded:,} superseded",
                f"    - {self.detections_withdrawn:,} of withdrawn files, "
                f"+ {self.detections_restored:,} of the versions they had replaced",
                f"    - {self.detections_newly_embargoed:,} embargoed again (cutoffs moved back)",
                f"  objects: + {self.objects_added:,} added, - {self.objects_removed:,} removed",
            ]
        )


def _cutoffs(info: dict) -> Cutoffs:
    return Cutoffs(parse_date(info["public_cutoff"]), parse_date(info["private_cutoff"]))


def _objectids(folder) -> np.ndarray:
    dataset = pds.dataset(dataset_dir(folder / OBJECTS), format="parquet")
    return dataset.to_table(columns=[schema.OBJECTID]).column(schema.OBJECTID).to_numpy()


def diff_releases(store: str, old: str, new: str) -> ReleaseDiff:
    """Compare two published releases of a store, ``old`` published before ``new``.

    Raises
    ------
    DiffOrderError
        If ``old`` was published after ``new``.
    ReleaseNotFoundError
        If either is not a release of the store.
    """
    st = Store(store)
    old_dir, new_dir = st.resolve(old), st.resolve(new)
    old_info = json.loads((old_dir / RELEASE_FILE).read_text())
    new_info = json.loads((new_dir / RELEASE_FILE).read_text())
    if old_info["created"] > new_info["created"]:
        raise DiffOrderError(
            f"{old} was published after {new}: diff compares a release with a later one, "
            f"and its counts (new exposures, newly public, superseded) mean nothing backwards; "
            f"give the earlier release first: lcstore diff {store} {new} {old}"
        )
    ledger = read_ledger(st.path).drop_duplicates("unit")  # a unit recorded twice counts once
    epochs = ledger[ledger["kind"] == EPOCHS].set_index("unit")
    old_units = epochs.loc[epochs.index.intersection(read_units(old_dir))]
    new_units = epochs.loc[epochs.index.intersection(read_units(new_dir))]
    added = new_units.loc[new_units.index.difference(old_units.index)]
    gone = old_units.loc[old_units.index.difference(new_units.index)]
    quadrant = list(schema.EXPOSURE_QUADRANT_KEY)
    old_quadrants = pd.MultiIndex.from_frame(old_units[quadrant])
    reprocessed = pd.MultiIndex.from_frame(added[quadrant]).isin(old_quadrants)

    old_cut, new_cut = _cutoffs(old_info), _cutoffs(new_info)
    # Newly public: delivered by the time the old release was built, but embargoed in it.
    delivered = added["batch"].isin(set(json.loads((old_dir / STATE_FILE).read_text())["batches"]))
    was_embargoed = delivered.to_numpy() & ~eligible(
        added["programid"].to_numpy(), added["mjd"].to_numpy(), old_cut
    )
    # Delivered and shown-able then, yet not shown: superseded by a file since withdrawn.
    restored = delivered.to_numpy() & ~was_embargoed
    withdrawn = gone["sha256"].isin({w.sha256 for w in withdrawals(st.path)}).to_numpy()
    # Shown by the old release, kept back by the new one's cutoffs (a build with --force).
    embargoed = ~withdrawn & ~eligible(gone["programid"].to_numpy(), gone["mjd"].to_numpy(), new_cut)
    old_ids, new_ids = _objectids(old_dir), _objectids(new_dir)
    return ReleaseDiff(
        old=old,
        new=new,
        detections_old=int(old_units["nrows"].sum()),
        detections_new=int(new_units["nrows"].sum()),
        detections_new_data=int(added.loc[~reprocessed & ~was_embargoed & ~restored, "nrows"].sum()),
        detections_newly_public=int(added.loc[~reprocessed & was_embargoed, "nrows"].sum()),
        detections_reprocessed=int(added.loc[reprocessed & ~restored, "nrows"].sum()),
        detections_superseded=int(gone.loc[~withdrawn & ~embargoed, "nrows"].sum()),
        detections_newly_embargoed=int(gone.loc[embargoed, "nrows"].sum()),
        detections_withdrawn=int(gone.loc[withdrawn, "nrows"].sum()),
        detections_restored=int(added.loc[restored, "nrows"].sum()),
        objects_added=len(np.setdiff1d(new_ids, old_ids)),
        objects_removed=len(np.setdiff1d(old_ids, new_ids)),
    )
