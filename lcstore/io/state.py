"""What a release remembers about how it was built, so the next one can build on it.

Next to its catalogs a release keeps:

* ``state.json``: the build parameters' fingerprint salt, both partition lists, the
  ledger batches delivered by then and the files withdrawn by then;
* ``pixels.parquet``: for every work pixel, the fingerprint of its inputs, its counts,
  the histograms of the rows it emitted (to plan partitions without re-reading them) and
  the ZTF fields of its reference sources (the refmap files it feeds);
* ``units.parquet``: the IDs of the ledger units it shows (for ``lcstore diff``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from lcstore.io.layout import DETECTIONS, PIXELS_FILE, STATE_FILE, UNITS_FILE, common_metadata


@dataclass(frozen=True)
class ReleaseState:
    """The build state of one release."""

    name: str
    salt: str
    fingerprints: dict[int, str]
    pixels: dict[int, PixelResult]
    detection_partitions: list[tuple[int, int]]
    object_partitions: list[tuple[int, int]]
    detection_schema: pa.Schema | None
    units: np.ndarray
    #: Ledger batches the build knew of: what had been delivered by then.
    batches: list[str]
    #: SHA-256 of the files withdrawn when it was built; None if its state.json does not
    #: record them (releases of lcstore 0.5.0 and older).
    withdrawn: list[str] | None = None


def write_state(folder: Path, state: ReleaseState) -> None:
    """Write a release's state files into its (unpublished) folder."""
    (folder / STATE_FILE).write_text(
        json.dumps(
            {
                "name": state.name,
                "salt": state.salt,
                "detection_partitions": state.detection_partitions,
                "object_partitions": state.object_partitions,
                "batches": sorted(state.batches),
                **({"withdrawn": sorted(state.withdrawn)} if state.withdrawn is not None else {}),
            }
        )
    )
    pixels = sorted(state.fingerprints)
    rows = [state.pixels[p] for p in pixels]
    table = pa.table(
        {
            "pixel": pa.array(pixels, pa.int64()),
            "fingerprint": [state.fingerprints[p] for p in pixels],
            "detections": [r.detections for r in rows],
            "matched": [r.matched for r in rows],
            "objects": [r.objects for r in rows],
            "detection_only": [r.detection_only for r in rows],
            "det_hist_pixels": [r.detection_hist[0].tolist() for r in rows],
            "det_hist_counts": [r.detection_hist[1].tolist() for r in rows],
            "obj_hist_pixels": [r.object_hist[0].tolist() for r in rows],
            "obj_hist_counts": [r.object_hist[1].tolist() for r in rows],
            "output_digests": [json.dumps(r.output_digests, sort_keys=True) for r in rows],
            "refmap_fields": pa.array([list(r.refmap_fields or ()) for r in rows], pa.list_(pa.int64())),
        }
    )
    pq.write_table(table, folder / PIXELS_FILE)
    pq.write_table(pa.table({"unit": pa.array(state.units, pa.int64())}), folder / UNITS_FILE)


def read_units(folder: Path) -> np.ndarray:
    """IDs of the ledger units a release shows."""
    return pq.read_table(folder / UNITS_FILE).column("unit").to_numpy()


def read_state(folder: Path) -> ReleaseState | None:
    """The state of a published release, or None if it has none."""
    if not (folder / STATE_FILE).is_file():
        return None
    meta = json.loads((folder / STATE_FILE).read_text())
    table = pq.read_table(folder / PIXELS_FILE).to_pylist()
    pixels = {
        row["pixel"]: PixelResult(
            pixel=row["pixel"],
            detections=row["detections"],
            matched=row["matched"],
            objects=row["objects"],
            detection_only=row["detection_only"],
            detection_hist=(
                np.array(row["det_hist_pixels"], np.int64),
                np.array(row["det_hist_counts"], np.int64),
            ),
            object_hist=(
                np.array(row["obj_hist_pixels"], np.int64),
                np.array(row["obj_hist_counts"], np.int64),
            ),
            output_digests=json.loads(row["output_digests"]),
            seconds={},
            refmap_fields=tuple(row["refmap_fields"]) if "refmap_fields" in row else None,
        )
        for row in table
    }
    common = common_metadata(folder / DETECTIONS)
    return ReleaseState(
        name=meta["name"],
        salt=meta["salt"],
        fingerprints={row["pixel"]: row["fingerprint"] for row in table},
        pixels=pixels,
        detection_partitions=[tuple(p) for p in meta["detection_partitions"]],
        object_partitions=[tuple(p) for p in meta["object_partitions"]],
        detection_schema=pq.read_schema(common) if common.is_file() else None,
        units=read_units(folder),
        batches=meta.get("batches", []),
        withdrawn=meta.get("withdrawn"),
    )


@dataclass(frozen=True)
class PixelResult:
    """Summary of one work pixel's match, for planning and reporting."""

    pixel: int
    detections: int
    matched: int
    objects: int
    detection_only: int
    detection_hist: tuple[np.ndarray, np.ndarray]
    object_hist: tuple[np.ndarray, np.ndarray]
    #: Content digest of the detections this pixel emitted, per owner work pixel, and of
    #: the objects and refmap rows it emitted: a later build compares them to see which
    #: partitions really changed.
    output_digests: dict[str, str]
    #: Seconds spent per step in this task.
    seconds: dict[str, float]
    #: ZTF fields of the reference sources this pixel emitted (the refmap files it feeds);
    #: None in the state of releases published before lcstore 0.4.
    refmap_fields: tuple[int, ...] | None
