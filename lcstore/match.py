"""Match: turn the staged rows of one work pixel into objects and matched detections.

For a work pixel the step reads the staged reference sources and detections of the pixel
and of a margin band around it, so that every decision about a row inside the pixel sees
all the rows that could affect it, across pixel boundaries, the poles and RA = 0/360.
Then, in order:

1. reference sources are associated across catalogs into objects (:mod:`lcstore.associate`);
2. every eligible detection is matched to the nearest object within the radius
   (:mod:`lcstore.crossmatch`);
3. detections that match nothing are clustered into detection-only objects
   (:mod:`lcstore.transients`).

The pixel emits the detections that lie inside it, and the objects whose seed lies inside
it, so each row is emitted by exactly one pixel. An object's ID is the HEALPix order-29
index of its seed position, so the pixels on both sides of a boundary name it alike.

:func:`match_tables` is the computation, on in-memory tables; :func:`match_pixel` adds the
reading and writing around it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from lcstore import schema
from lcstore.associate import associate_references
from lcstore.changes import cell_order
from lcstore.crossmatch import nearest_within
from lcstore.embargo import Cutoffs, eligible
from lcstore.healpix import SPATIAL_INDEX_COLUMN, pixel_of, runs, unit_vectors
from lcstore.index import histogram
from lcstore.ingest import EPOCHS, REFS, UNIT_COLUMN, staged_files
from lcstore.timing import StepTimer
from lcstore.transients import leader_cluster
from lcstore.write import atomic_write_table

#: Order of the row-count histograms the match step returns for partition planning.
HISTOGRAM_ORDER = 12

#: Rows per row group of the detections the match step writes for the write step.
OUTPUT_ROW_GROUP_ROWS = 20_000

REFMAP_COLUMNS = ["ztf_oid", "field", "ccdid", "qid", "filtercode", "refsid", "ra", "dec", "objectid"]


@dataclass(frozen=True)
class MatchParams:
    """Everything a work pixel's match needs besides its data."""

    work_order: int
    radius_arcsec: float
    margin_arcsec: float
    cutoffs: Cutoffs


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


@dataclass(frozen=True)
class Matched:
    """What :func:`match_tables` emits for one pixel."""

    detections: pa.Table
    objects: pd.DataFrame
    refmap: pd.DataFrame


def _unique_ids(ids: np.ndarray) -> np.ndarray:
    """Make IDs unique by bumping repeats (two seeds in one 0.4 mas pixel) deterministically."""
    ids = ids.copy()
    while True:
        order = np.argsort(ids, kind="stable")
        dup = np.flatnonzero(np.diff(ids[order]) == 0) + 1
        if len(dup) == 0:
            return ids
        ids[order[dup]] += 1


def _catalog_rank(refs: pd.DataFrame) -> np.ndarray:
    keys = refs[list(schema.REF_CATALOG_KEY)].copy()
    keys["filtercode"] = keys["filtercode"].map({f: i for i, f in enumerate(schema.FILTERCODES)})
    return keys.groupby(list(keys.columns), sort=True).ngroup().to_numpy()


def _time_order(dets: pd.DataFrame) -> np.ndarray:
    return np.lexsort([dets[c].to_numpy() for c in reversed(["mjd", *schema.DETECTION_KEY])])


def match_tables(
    refs: pd.DataFrame, dets: pa.Table, pixel: int, params: MatchParams, timer: StepTimer | None = None
) -> Matched:
    """Associate, match and cluster the rows of one work pixel and its margin.

    Parameters
    ----------
    refs : pandas.DataFrame
        Reference sources of the pixel and its margin (input schema plus ``_healpix_29``).
    dets : pyarrow.Table
        Eligible detections of the pixel and its margin (input schema plus ``_healpix_29``).
    pixel : int
        The work pixel, at ``params.work_order``.
    params : MatchParams
    timer : StepTimer, optional
        Receives the seconds spent associating, matching and clustering.

    Returns
    -------
    Matched
        Detections inside the pixel with their object columns; objects seeded inside it;
        reference sources inside it with their object.
    """
    order = params.work_order
    timer = timer or StepTimer()
    # 1. Reference objects.
    with timer.step("associate"):
        assoc = associate_references(
            refs["ra"].to_numpy(), refs["dec"].to_numpy(), _catalog_rank(refs), params.radius_arcsec
        )
    seed_refs = refs.iloc[assoc.seed]
    ref_obj = pd.DataFrame(
        {
            "ra": seed_refs["ra"].to_numpy(),
            "dec": seed_refs["dec"].to_numpy(),
            "index29": seed_refs[SPATIAL_INDEX_COLUMN].to_numpy(),
            "has_ref": True,
            "nrefs": np.bincount(assoc.source_object, minlength=len(assoc.seed)).astype(np.int16),
        }
    )
    # 2. Detections to reference objects.
    dra = dets.column("ra").to_numpy()
    ddec = dets.column("dec").to_numpy()
    dxyz = unit_vectors(dra, ddec)
    with timer.step("match"):
        ref_xyz = unit_vectors(ref_obj["ra"], ref_obj["dec"])
        obj_of_det, _ = nearest_within(dxyz, ref_xyz, params.radius_arcsec)
    # 3. The rest cluster, in time order, into detection-only objects.
    with timer.step("cluster"):
        orphans = np.flatnonzero(obj_of_det < 0)
        keys = dets.select(["mjd", *schema.DETECTION_KEY]).to_pandas().iloc[orphans]
        orphans = orphans[_time_order(keys)]
        seed_of = orphans[leader_cluster(dxyz[orphans], params.radius_arcsec)]
    seeds, cluster = np.unique(seed_of, return_inverse=True)
    det_index29 = dets.column(SPATIAL_INDEX_COLUMN).to_numpy()
    new_obj = pd.DataFrame(
        {
            "ra": dra[seeds],
            "dec": ddec[seeds],
            "index29": det_index29[seeds],
            "has_ref": False,
            "nrefs": np.int16(0),
        }
    )
    obj_of_det[orphans] = len(ref_obj) + cluster
    objects = pd.concat([ref_obj, new_obj], ignore_index=True)
    objects[schema.OBJECTID] = _unique_ids(objects["index29"].to_numpy())

    # Emit what lies inside the pixel.
    inside = pixel_of(det_index29, order) == pixel
    det_obj = objects.iloc[obj_of_det[inside]]
    out = dets.filter(pa.array(inside)).drop_columns([UNIT_COLUMN, SPATIAL_INDEX_COLUMN])
    out = out.add_column(0, schema.OBJECTID, pa.array(det_obj[schema.OBJECTID].to_numpy()))
    out = out.append_column(schema.HAS_REF, pa.array(det_obj["has_ref"].to_numpy()))
    out = out.append_column(schema.OBJECT_RA, pa.array(det_obj["ra"].to_numpy()))
    out = out.append_column(schema.OBJECT_DEC, pa.array(det_obj["dec"].to_numpy()))
    out = out.append_column(SPATIAL_INDEX_COLUMN, pa.array(det_obj["index29"].to_numpy()))

    own = objects[pixel_of(objects["index29"].to_numpy(), order) == pixel]
    own = own.rename(columns={"index29": SPATIAL_INDEX_COLUMN})
    own = own[[schema.OBJECTID, "ra", "dec", schema.HAS_REF, "nrefs", SPATIAL_INDEX_COLUMN]]

    ref_inside = pixel_of(refs[SPATIAL_INDEX_COLUMN].to_numpy(), order) == pixel
    refmap = refs.loc[ref_inside, ["field", "ccdid", "qid", "filtercode", "refsid", "ra", "dec"]].copy()
    refmap["filtercode"] = refmap["filtercode"].astype(pd.ArrowDtype(pa.string()))
    refmap[schema.OBJECTID] = objects[schema.OBJECTID].to_numpy()[assoc.source_object[ref_inside]]
    refmap.insert(
        0,
        "ztf_oid",
        [
            schema.ztf_objectid(*k)
            for k in refmap[["field", "filtercode", "ccdid", "qid", "refsid"]].itertuples(index=False)
        ],
    )
    return Matched(detections=out, objects=own.reset_index(drop=True), refmap=refmap[REFMAP_COLUMNS])


def _read_with_margin(
    store: str, kind: str, pixel: int, batches: set[str], excluded: np.ndarray, params: MatchParams
) -> pa.Table | None:
    """Staged rows of ``kind`` in the pixel and in its margin band (staged at ingest)."""
    files = staged_files(store, kind, pixel, batches) + staged_files(store, kind, pixel, batches, margin=True)
    tables = [pq.read_table(f) for f in files]
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="permissive")
    keep = ~np.isin(table.column(UNIT_COLUMN).to_numpy(), excluded)
    return table.filter(pa.array(keep))


def match_pixel(
    pixel: int,
    store: str,
    batches: set[str],
    excluded_units: np.ndarray,
    params: MatchParams,
    work_dir: str,
) -> PixelResult:
    """Run :func:`match_tables` on one work pixel of a store and write its output.

    Output files, in ``work_dir``::

        detections/<owner pixel>/<pixel>.parquet   (owner = work pixel of the object)
        objects/<pixel>.parquet
        refmap/<pixel>.parquet
    """
    timer = StepTimer()
    with timer.step("read"):
        refs_table = _read_with_margin(store, REFS, pixel, batches, excluded_units, params)
        dets = _read_with_margin(store, EPOCHS, pixel, batches, excluded_units, params)
    refs = (
        refs_table.to_pandas()
        if refs_table is not None
        else pd.DataFrame(
            {c: pd.Series(dtype=t.to_pandas_dtype()) for c, t in schema.REF_COLUMNS.items()}
            | {SPATIAL_INDEX_COLUMN: pd.Series(dtype=np.int64)}
        )
    )
    if dets is None:
        dets = _empty_detections()
    else:
        mask = eligible(dets.column("programid").to_numpy(), dets.column("mjd").to_numpy(), params.cutoffs)
        dets = dets.filter(pa.array(mask))
    result = match_tables(refs, dets, pixel, params, timer)

    work = Path(work_dir)
    out = result.detections
    with timer.step("write"):
        # Sorted by object position, in row groups: the write step reads each partition's
        # share of an owner's file by row-group statistics, not the whole file.
        out = out.sort_by(SPATIAL_INDEX_COLUMN)
        owners = pixel_of(out.column(SPATIAL_INDEX_COLUMN).to_numpy(), params.work_order)
        for start, end in runs(owners):
            path = work / "detections" / str(int(owners[start])) / f"{pixel}.parquet"
            atomic_write_table(out.slice(start, end - start), path, row_group_size=OUTPUT_ROW_GROUP_ROWS)
        objects = pa.Table.from_pandas(result.objects, preserve_index=False)
        atomic_write_table(objects, work / "objects" / f"{pixel}.parquet")
        atomic_write_table(
            pa.Table.from_pandas(result.refmap, preserve_index=False), work / "refmap" / f"{pixel}.parquet"
        )
    with timer.step("digest"):
        cells = cell_order(params.work_order)
        digests = {
            f"detections/{c}": d for c, d in cell_digests(out, DETECTION_DIGEST_COLUMNS, cells).items()
        }
        digests |= {f"objects/{c}": d for c, d in cell_digests(objects, OBJECT_DIGEST_COLUMNS, cells).items()}
        digests["refmap"] = file_digest(work / "refmap" / f"{pixel}.parquet")
    det_idx = out.column(SPATIAL_INDEX_COLUMN).to_numpy()
    obj_idx = result.objects[SPATIAL_INDEX_COLUMN].to_numpy()
    return PixelResult(
        pixel=pixel,
        detections=out.num_rows,
        matched=int(out.column(schema.HAS_REF).to_numpy().sum()),
        objects=len(result.objects),
        detection_only=int((~result.objects[schema.HAS_REF]).sum()),
        detection_hist=histogram(det_idx, HISTOGRAM_ORDER),
        object_hist=histogram(obj_idx, HISTOGRAM_ORDER),
        output_digests=digests,
        seconds=timer.seconds,
    )


#: Columns whose values define a detection row, for change detection (the others follow
#: from the exposure-quadrant version, which the key holds).
DETECTION_DIGEST_COLUMNS = [
    schema.OBJECTID, *schema.DETECTION_KEY, "procversion", "mjd", "ra", "dec", "mag", "magerr",
    "catflags", schema.HAS_REF, schema.OBJECT_RA, schema.OBJECT_DEC,
]  # fmt: skip
OBJECT_DIGEST_COLUMNS = [schema.OBJECTID, "ra", "dec", schema.HAS_REF, "nrefs"]


def _as_int64(values: np.ndarray) -> np.ndarray:
    """Exact int64 image of a column: integers as they are, floats by their bits."""
    if np.issubdtype(values.dtype, np.floating):
        return values.astype(np.float64).view(np.int64)
    return values.astype(np.int64)


def cell_digests(table: pa.Table, columns: list[str], order: int) -> dict[int, str]:
    """Digest of the rows in each cell (pixel of ``order`` holding the row's ``_healpix_29``).

    Each row is hashed (64-bit, over its values in ``columns``) and a cell's digest is the
    wrapping sum of its rows' hashes and its row count: equal row sets give equal digests
    whatever their order, at the cost of one vectorised pass.
    """
    if table.num_rows == 0:
        return {}
    cells = pixel_of(table.column(SPATIAL_INDEX_COLUMN).to_numpy(), order)
    row_hash = np.zeros(table.num_rows, dtype=np.uint64)
    for i, c in enumerate(columns):
        values = _as_int64(table.column(c).to_numpy(zero_copy_only=False))
        # Distinct multipliers per column so that swapping two columns' values shows.
        row_hash ^= pd.util.hash_array(values) * np.uint64(2 * i + 1)
    order_ = np.argsort(cells, kind="stable")
    cells, row_hash = cells[order_], row_hash[order_]
    starts = np.flatnonzero(np.r_[True, np.diff(cells) != 0])
    sums = np.add.reduceat(row_hash, starts)
    counts = np.diff(np.r_[starts, len(cells)])
    return {int(cells[s]): f"{int(h):016x}-{n}" for s, h, n in zip(starts, sums, counts, strict=True)}


def file_digest(path: Path) -> str:
    """Digest of a file's bytes. Parquet writing is deterministic, so equal tables written
    with the same library give equal digests."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()[:32]


def _empty_detections() -> pa.Table:
    fields = [pa.field(c, t) for c, t in schema.EPOCH_COLUMNS.items()]
    fields += [pa.field(UNIT_COLUMN, pa.int64()), pa.field(SPATIAL_INDEX_COLUMN, pa.int64())]
    return pa.schema(fields).empty_table()
