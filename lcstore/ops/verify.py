"""Verify: check a published release against its manifest, its checksums and the ledger.

A release is immutable once published, so anything that differs from what the build
wrote is damage (a disk, a copy, a hand edit) or a build bug. The checks, each named in
the findings it reports:

* ``hats``: ``objects/`` and ``detections/`` are valid HATS catalogs (strict).
* ``checksums``: every file has the size and SHA-256 that ``checksums.json`` recorded at
  build time, no listed file is missing and no file is unlisted.
* ``manifest``: ``state.json`` lists the partitions that ``partition_info.csv`` lists.
* ``readable``: every partition file is Parquet with the columns a release has.
* ``counts``: detections and refmap rows equal the ledger's row counts of the units the
  release shows (``units.parquet``), in total and per exposure-quadrant version.
* ``units``: the release shows the units the ledger gives it: those
  :func:`lcstore.kernels.supersede.units_in_use` picks from the ledger batches it was
  built from, the files withdrawn by then and its cutoffs. A unit left out wrongly (taken
  for a conflict with its own content, say) is rows missing from the release, which the
  counts against ``units.parquet`` cannot see.
* ``embargo``: every detection is eligible under the release's cutoffs.
* ``duplicates``: no detection key (expid, ccdid, qid, sourceid, procversion) repeats.
* ``partitioning``: every row lies in the sky area of the partition file that holds it.
* ``objects``: every detection's object exists, objectids are unique, each object's
  ``nobs`` is its number of detections, the objects' ``nrefs`` add up to the refmap's
  reference sources, and each refmap file holds the ZTF oids of its own field only.

Data are read column-wise, one partition file at a time. A detection sits at its
object's position (both carry the object's ``_healpix_29``), so each objects partition
is checked against the detections read from that same area. Duplicate keys are looked
for within each partition, where one detection emitted twice would land (same object,
same place); a copy elsewhere shows as an excess in its exposure-quadrant's count.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from hats.io import paths
from hats.io.validation import is_valid_catalog
from hats.pixel_math import HealpixPixel

from lcstore import schema
from lcstore.io.checksums import CHECKSUMS_FILE, read_checksums, release_files
from lcstore.io.inputs import hash_file
from lcstore.io.layout import CATALOGS, OBJECTS_MARGIN, RELEASE_FILE, STATE_FILE, UNITS_FILE, partition_info
from lcstore.io.ledger import read_ledger
from lcstore.io.refmap import LEGACY_REFMAP, field_of_file, refmap_files
from lcstore.io.store import Store
from lcstore.io.withdrawals import ever_withdrawn, withdrawals
from lcstore.kernels.cone import in_ranges
from lcstore.kernels.embargo import Cutoffs, eligible, parse_date
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN, index_range
from lcstore.kernels.partitions import Partitions
from lcstore.kernels.supersede import select_units, units_in_use
from lcstore.kernels.ztf_oid import FIELD_FACTOR
from lcstore.schema import EPOCHS, REFS

_REFMAP = "refmap"

#: A release shows one processing version of each exposure-quadrant, so a detection key
#: (without the version) appears at most once in it.
DETECTION_KEY = list(schema.DETECTION_KEY)
_UNIT_KEY = list(schema.EPOCH_UNIT_KEY)

_DETECTION_COLUMNS = list(
    dict.fromkeys([schema.OBJECTID, *DETECTION_KEY, *_UNIT_KEY, "programid", "mjd", SPATIAL_INDEX_COLUMN])
)
_OBJECT_COLUMNS = [schema.OBJECTID, "nobs", "nrefs", SPATIAL_INDEX_COLUMN]

#: How many examples a finding quotes.
_EXAMPLES = 3


@dataclass(frozen=True)
class Finding:
    """One thing wrong with a release.

    ``check`` names the check that found it, ``file`` the file concerned (relative to the
    release directory; None if the finding is about the release as a whole).
    """

    check: str
    message: str
    file: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"[{self.check}] {where}{self.message}"


@dataclass
class VerifyReport:
    """What :func:`verify_release` checked and found."""

    release: str
    path: str
    findings: list[Finding] = field(default_factory=list)
    files: int = 0  # files compared with checksums.json
    bytes_hashed: int = 0  # bytes read to compare; files shared with a release verified before count once
    detection_partitions: int = 0
    detections: int = 0
    object_partitions: int = 0
    objects: int = 0
    units: int = 0  # ledger units the release shows
    refmap_rows: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        status = "ok" if self.ok else f"FAILED, {len(self.findings)} finding(s)"
        lines = [
            f"release {self.release} ({self.path}): {status}",
            f"  files: {self.files:,} checked against {CHECKSUMS_FILE}, "
            f"{self.bytes_hashed / 1e6:,.1f} MB read",
            f"  rows: {self.detections:,} detections in {self.detection_partitions} partitions, "
            f"{self.objects:,} objects in {self.object_partitions} partitions, "
            f"{self.refmap_rows:,} refmap rows; {self.units:,} ledger units; {self.seconds:.1f}s",
        ]
        return "\n".join(lines + [f"  {f}" for f in self.findings])


# --------------------------------------------------------------------------- checksums


class _Hasher:
    """SHA-256 of files, each inode read once: releases share unchanged files by hard links."""

    def __init__(self) -> None:
        self._known: dict[tuple, str] = {}

    def sha256(self, path: Path, st: os.stat_result, report: VerifyReport) -> str:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._known:
            self._known[key] = hash_file(str(path)).sha256
            report.bytes_hashed += st.st_size
        return self._known[key]


def _check_files(folder: Path, report: VerifyReport, hasher: _Hasher) -> None:
    try:
        listed = read_checksums(folder)
    except FileNotFoundError:
        report.findings.append(
            Finding("checksums", f"no {CHECKSUMS_FILE}: the release predates 'lcstore verify'", None)
        )
        return
    except (ValueError, KeyError, TypeError) as err:
        report.findings.append(Finding("checksums", f"unreadable listing ({err!r})", CHECKSUMS_FILE))
        return
    present = set(release_files(folder))
    for rel in sorted(set(listed) - present):
        report.findings.append(Finding("checksums", f"listed in {CHECKSUMS_FILE} but missing", rel))
    for rel in sorted(present - set(listed)):
        report.findings.append(Finding("checksums", f"present but not listed in {CHECKSUMS_FILE}", rel))
    for rel in sorted(present & set(listed)):
        want = listed[rel]
        st = os.stat(folder / rel)
        report.files += 1
        if st.st_size != want["size"]:
            message = f"size {st.st_size:,} bytes, {CHECKSUMS_FILE} says {want['size']:,}"
            report.findings.append(Finding("checksums", message, rel))
            continue
        got = hasher.sha256(folder / rel, st, report)
        if got != want["sha256"]:
            message = f"content changed: sha256 {got[:16]}…, {CHECKSUMS_FILE} says {want['sha256'][:16]}…"
            report.findings.append(Finding("checksums", message, rel))


# --------------------------------------------------------------------------- HATS


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(" ".join(record.getMessage().split()))


def hats_problems(catalog_dir: Path) -> list[str]:
    """Why a catalog is not a valid HATS catalog (strict validation); empty if it is.

    ``hats`` reports its reasons as warnings on the root logger; they are collected here
    instead of going to the application's log handlers (the root logger is borrowed for
    the duration: not for use while other threads log).
    """
    collect = _Collect()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers = [collect]
    root.setLevel(logging.WARNING)  # setLevel, not .level =: it clears the loggers' level caches
    try:
        valid = is_valid_catalog(catalog_dir, strict=True)
    except Exception as err:  # any failure to read the catalog is a finding, not a crash
        valid, collect.messages = False, [*collect.messages, f"cannot be read: {err!r}"]
    finally:
        root.handlers = handlers
        root.setLevel(level)
    if valid:
        return []
    return collect.messages or ["not a valid HATS catalog"]


def _check_hats(folder: Path, report: VerifyReport) -> None:
    # Releases built before lcstore 0.3 have no margin cache.
    margin = [OBJECTS_MARGIN] if (folder / OBJECTS_MARGIN).is_dir() else []
    for catalog in [*CATALOGS, *margin]:
        for message in hats_problems(folder / catalog):
            report.findings.append(Finding("hats", f"invalid HATS catalog: {message}", catalog))


# --------------------------------------------------------------------------- data


def duplicate_rows(keys: list[np.ndarray]) -> np.ndarray:
    """Indices of the rows whose key (one array per key column) repeats an earlier row's."""
    n = len(keys[0]) if keys else 0
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    order = np.lexsort(keys[::-1])
    same = np.ones(n - 1, dtype=bool)
    for key in keys:
        ordered = key[order]
        same &= ordered[1:] == ordered[:-1]
    return np.sort(order[1:][same])


def _rel(folder: Path, catalog: str, part: tuple[int, int]) -> str:
    full = Path(str(paths.pixel_catalog_file(str(folder / catalog), HealpixPixel(*part))))
    return full.relative_to(folder).as_posix()


def _key_text(table: pa.Table, row: int, columns: list[str]) -> str:
    return " ".join(f"{c}={table.column(c)[row].as_py()}" for c in columns)


@dataclass
class _Partitions:
    """A release's partitions, as its manifest (state.json) lists them."""

    detections: list[tuple[int, int]]
    objects: list[tuple[int, int]]
    unreadable: set[str] = field(default_factory=set)  # relative paths that could not be read
    object_refs: int = 0  # sum of the objects' nrefs: reference sources they absorbed


def _read_manifest(folder: Path, report: VerifyReport) -> _Partitions | None:
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        parts = _Partitions(
            [tuple(p) for p in state["detection_partitions"]], [tuple(p) for p in state["object_partitions"]]
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        report.findings.append(
            Finding("manifest", f"cannot read the partition lists ({err!r})", "state.json")
        )
        return None
    for catalog, listed in zip(CATALOGS, (parts.objects, parts.detections), strict=True):
        info = partition_info(folder / catalog)
        if not info.is_file():
            continue  # the HATS check reports it
        table = pd.read_csv(info)
        in_info = set(zip(table["Norder"].astype(int), table["Npix"].astype(int), strict=True))
        if in_info != set(listed):
            message = (
                f"partition_info.csv lists {len(in_info)} partitions, state.json {len(set(listed))}; "
                f"only in partition_info.csv: {sorted(in_info - set(listed))[:_EXAMPLES]}, "
                f"only in state.json: {sorted(set(listed) - in_info)[:_EXAMPLES]}"
            )
            report.findings.append(Finding("manifest", message, f"{catalog}/partition_info.csv"))
    return parts


def _read(folder: Path, rel: str, columns: list[str], report: VerifyReport, parts: _Partitions, **kw):
    """One partition file's columns, or None (with a finding) if it cannot be read."""
    path = folder / rel
    if not path.is_file():
        parts.unreadable.add(rel)  # the checksums and HATS checks report it missing
        return None
    try:
        return pq.read_table(path, columns=columns, page_checksum_verification=True, **kw)
    except (OSError, pa.ArrowException) as err:
        parts.unreadable.add(rel)
        report.findings.append(Finding("readable", f"cannot read {columns} from Parquet: {err}", rel))
        return None


def _check_detections(
    folder: Path, parts: _Partitions, cutoffs: Cutoffs, report: VerifyReport
) -> pd.DataFrame:
    """Per-partition checks of the detections; returns the row count of each epoch unit key."""
    # The objects partitions' index ranges, sorted: where a detection's object may live.
    areas = np.array(sorted(index_range(*p) for p in parts.objects), dtype=np.int64).reshape(-1, 2)
    per_unit = []
    for part in parts.detections:
        rel = _rel(folder, "detections", part)
        table = _read(folder, rel, _DETECTION_COLUMNS, report, parts)
        if table is None:
            continue
        report.detection_partitions += 1
        report.detections += table.num_rows
        index = table.column(SPATIAL_INDEX_COLUMN).to_numpy()
        lo, hi = index_range(*part)
        outside = np.flatnonzero((index < lo) | (index >= hi))
        if len(outside):
            message = (
                f"{len(outside):,} row(s) outside the partition's sky area (order {part[0]} pixel "
                f"{part[1]}); first: {_key_text(table, outside[0], DETECTION_KEY)}"
            )
            report.findings.append(Finding("partitioning", message, rel))
        ok = eligible(table.column("programid").to_numpy(), table.column("mjd").to_numpy(), cutoffs)
        leaked = np.flatnonzero(~ok)
        if len(leaked):
            message = (
                f"{len(leaked):,} detection(s) not eligible under the release's cutoffs "
                f"(public <= {cutoffs.public}, private <= {cutoffs.private}); first: "
                f"{_key_text(table, leaked[0], [*DETECTION_KEY, 'programid', 'mjd'])}"
            )
            report.findings.append(Finding("embargo", message, rel))
        repeats = duplicate_rows([table.column(c).to_numpy() for c in DETECTION_KEY])
        if len(repeats):
            message = (
                f"{len(repeats):,} row(s) repeat a detection key; first: "
                f"{_key_text(table, repeats[0], DETECTION_KEY)}"
            )
            report.findings.append(Finding("duplicates", message, rel))
        homeless = np.flatnonzero(~in_ranges(index, areas[:, 0], areas[:, 1]))
        if len(homeless):
            message = (
                f"{len(homeless):,} detection(s) whose position no objects partition covers, so their "
                f"object is missing; first: objectid={table.column(schema.OBJECTID)[homeless[0]].as_py()}"
            )
            report.findings.append(Finding("objects", message, rel))
        keys = table.select(_UNIT_KEY).to_pandas()
        per_unit.append(keys.value_counts().rename("rows").reset_index())
    if not per_unit:
        return pd.DataFrame({**{c: pd.Series(dtype=np.int64) for c in _UNIT_KEY}, "rows": []})
    merged = pd.concat(per_unit, ignore_index=True).astype(np.int64)
    return merged.groupby(_UNIT_KEY, as_index=False)["rows"].sum()


def _check_objects(folder: Path, parts: _Partitions, report: VerifyReport) -> None:
    """Each objects partition against the detections in its area: objects exist, nobs agree."""
    try:
        detections = Partitions(parts.detections)
    except ValueError as err:
        report.findings.append(
            Finding("detections", f"state.json lists overlapping detections partitions ({err})", "state.json")
        )
        return
    for part in parts.objects:
        rel = _rel(folder, "objects", part)
        objects = _read(folder, rel, _OBJECT_COLUMNS, report, parts)
        if objects is None:
            continue
        report.object_partitions += 1
        report.objects += objects.num_rows
        parts.object_refs += int(objects.column("nrefs").to_numpy().sum())
        obj_ids = objects.column(schema.OBJECTID).to_numpy()
        repeats = duplicate_rows([obj_ids])
        if len(repeats):
            message = f"{len(repeats):,} repeated objectid(s); first: {obj_ids[repeats[0]]}"
            report.findings.append(Finding("objects", message, rel))
        lo, hi = index_range(*part)
        area = [(SPATIAL_INDEX_COLUMN, ">=", lo), (SPATIAL_INDEX_COLUMN, "<", hi)]
        det_ids, complete = [], True
        for det_part in detections.overlapping(*part):
            det_rel = _rel(folder, "detections", det_part)
            if det_rel in parts.unreadable:
                complete = False
                continue
            dets = _read(folder, det_rel, [schema.OBJECTID], report, parts, filters=area)
            if dets is None:
                complete = False
                continue
            ids = dets.column(schema.OBJECTID).to_numpy()
            orphans = ~np.isin(ids, obj_ids)
            if orphans.any():
                missing = np.unique(ids[orphans])
                message = (
                    f"{int(orphans.sum()):,} detection(s) of {len(missing):,} objectid(s) absent from "
                    f"{rel}, the objects partition of their position; first: "
                    f"{', '.join(str(i) for i in missing[:_EXAMPLES])}"
                )
                report.findings.append(Finding("objects", message, det_rel))
            det_ids.append(ids)
        if not complete:
            continue  # nobs cannot be checked without all the detections; their loss is reported
        all_ids = np.concatenate(det_ids) if det_ids else np.zeros(0, np.int64)
        expected = pd.Series(all_ids).value_counts().reindex(obj_ids, fill_value=0).to_numpy()
        nobs = objects.column("nobs").to_numpy()
        wrong = np.flatnonzero(nobs != expected)
        if len(wrong):
            first = wrong[0]
            message = (
                f"{len(wrong):,} object(s) whose nobs is not their number of detections; first: "
                f"objectid={obj_ids[first]} nobs={nobs[first]}, {expected[first]} detection(s)"
            )
            report.findings.append(Finding("objects", message, rel))


def _unit_text(row) -> str:
    return " ".join(f"{c}={int(getattr(row, c))}" for c in _UNIT_KEY)


def _check_counts(
    ledger: pd.DataFrame, folder: Path, parts: _Partitions, per_unit: pd.DataFrame, report: VerifyReport
) -> np.ndarray | None:
    """Rows of the release against the ledger's counts for the units it shows; returns
    those units (None if units.parquet cannot be read)."""
    try:
        units = pq.read_table(folder / UNITS_FILE).column("unit").to_numpy()
    except (OSError, pa.ArrowException, KeyError) as err:
        report.findings.append(Finding("counts", f"cannot read the release's units ({err})", "units.parquet"))
        return None
    report.units = len(units)
    # One row per unit: a store may record a unit twice (lcstore.kernels.supersede), and
    # its rows count once.
    ledger = ledger.drop_duplicates("unit").set_index("unit")
    unknown = np.setdiff1d(units, ledger.index.to_numpy())
    if len(unknown):
        message = (
            f"{len(unknown):,} unit(s) not in the store's ledger; first: "
            f"{', '.join(str(u) for u in unknown[:_EXAMPLES])}"
        )
        report.findings.append(Finding("counts", message, "units.parquet"))
    shown = ledger.loc[np.intersect1d(units, ledger.index.to_numpy())]
    epochs = shown[shown["kind"] == EPOCHS]
    refs = shown[shown["kind"] == REFS]

    want = int(epochs["nrows"].sum())
    if want != report.detections:
        message = (
            f"{report.detections:,} detection rows, but the {len(epochs):,} epoch units in units.parquet "
            f"hold {want:,} rows in the ledger"
        )
        report.findings.append(Finding("counts", message, "detections"))
    expected = epochs[[*_UNIT_KEY, "nrows"]].astype(np.int64).groupby(_UNIT_KEY, as_index=False).sum()
    both = expected.merge(per_unit, on=_UNIT_KEY, how="outer").fillna(0)
    differ = both[both["nrows"] != both["rows"]]
    unlisted = differ[differ["nrows"] == 0]
    if len(unlisted):
        message = (
            f"{int(unlisted['rows'].sum()):,} detection(s) from {len(unlisted):,} exposure-quadrant "
            f"version(s) that units.parquet does not list (superseded, embargoed or unknown); first: "
            f"{_unit_text(next(unlisted.itertuples()))}"
        )
        report.findings.append(Finding("counts", message, "detections"))
    miscounted = differ[differ["nrows"] > 0]
    if len(miscounted):
        examples = "; ".join(
            f"{_unit_text(r)}: {int(r.rows):,} rows, ledger {int(r.nrows):,}"
            for r in miscounted.head(_EXAMPLES).itertuples()
        )
        message = (
            f"{len(miscounted):,} exposure-quadrant version(s) whose row count differs from the "
            f"ledger's: {examples}"
        )
        report.findings.append(Finding("counts", message, "detections"))

    want = int(refs["nrows"].sum())
    if _REFMAP not in parts.unreadable and want != report.refmap_rows:
        message = (
            f"{report.refmap_rows:,} rows, but the {len(refs):,} reference catalogs in units.parquet "
            f"hold {want:,} sources in the ledger"
        )
        report.findings.append(Finding("counts", message, _REFMAP))
    return units


def _unit_name(row) -> str:
    """A ledger unit, for a finding: its file and key."""
    columns = _UNIT_KEY if row.kind == EPOCHS else list(schema.REF_CATALOG_KEY)
    values = [getattr(row, c) for c in columns]
    key = " ".join(f"{c}={v if isinstance(v, str) else int(v)}" for c, v in zip(columns, values, strict=True))
    return f"{row.path} ({key})"


def _check_units(
    ledger: pd.DataFrame,
    folder: Path,
    shown: np.ndarray,
    cutoffs: Cutoffs,
    store: Store,
    report: VerifyReport,
) -> None:
    """The units the release shows against those the ledger gives it.

    The ledger is taken as the build saw it: the batches ``state.json`` lists. So are the
    withdrawals, if ``state.json`` records them; for a release that does not, the units of
    an exposure-quadrant or a reference catalog that a file ever withdrawn touches are not
    compared.
    """
    try:
        state = json.loads((folder / STATE_FILE).read_text())
        info = json.loads((folder / RELEASE_FILE).read_text())
    except (OSError, ValueError) as err:
        report.findings.append(Finding("units", f"cannot read the build's state ({err!r})", STATE_FILE))
        return
    if not state.get("batches"):
        return  # an older lcstore's release: which batches its build saw is unknown
    seen = ledger[ledger["batch"].isin(set(state["batches"]))]
    recorded = state.get("withdrawn")
    withdrawn = (
        frozenset(recorded) if recorded is not None else frozenset(w.sha256 for w in withdrawals(store.path))
    )
    expected = units_in_use(seen, select_units(seen, withdrawn), cutoffs).set_index("unit")
    once = seen.drop_duplicates("unit").set_index("unit")
    missing = once.loc[np.setdiff1d(expected.index.to_numpy(), shown)]
    extra = once.loc[np.intersect1d(np.setdiff1d(shown, expected.index.to_numpy()), once.index.to_numpy())]
    if recorded is None and len(missing) + len(extra):
        uncertain = once[once["sha256"].isin(ever_withdrawn(store.path))]
        for kind, key in ((EPOCHS, list(schema.EXPOSURE_QUADRANT_KEY)), (REFS, list(schema.REF_CATALOG_KEY))):
            touched = pd.MultiIndex.from_frame(uncertain.loc[uncertain["kind"] == kind, key])
            missing = missing[
                ~((missing["kind"] == kind) & pd.MultiIndex.from_frame(missing[key]).isin(touched))
            ]
            extra = extra[~((extra["kind"] == kind) & pd.MultiIndex.from_frame(extra[key]).isin(touched))]
    if len(missing):
        # A conflict message names the file left out and the hash of the file kept.
        conflicts = info.get("report", {}).get("conflicts", [])
        selfish = [
            u
            for u in missing.itertuples()
            if any(m.startswith(f"{u.path}: same ") and f" as {u.sha256[:12]}" in m for m in conflicts)
        ]
        rows = int(missing.loc[missing["kind"] == EPOCHS, "nrows"].sum())
        sources = int(missing.loc[missing["kind"] == REFS, "nrows"].sum())
        message = (
            f"{len(missing):,} unit(s) that the ledger gives this release are left out: "
            f"{rows:,} detection(s) and {sources:,} reference source(s) missing"
            + (f"; {len(selfish):,} of them reported as a conflict with their own content" if selfish else "")
            + f"; first: {'; '.join(_unit_name(u) for u in missing.head(_EXAMPLES).itertuples())}"
        )
        report.findings.append(Finding("units", message, UNITS_FILE))
    if len(extra):
        message = (
            f"{len(extra):,} unit(s) in units.parquet that the ledger does not give this release "
            f"(superseded, conflicting, withdrawn or embargoed); first: "
            f"{'; '.join(_unit_name(u) for u in extra.head(_EXAMPLES).itertuples())}"
        )
        report.findings.append(Finding("units", message, UNITS_FILE))


def _check_refmap(folder: Path, parts: _Partitions, report: VerifyReport) -> None:
    """Every reference source in the refmap was absorbed by an object (its ``nrefs``), and
    each field's file holds the oids of that field only (a lookup reads no other)."""
    report.refmap_rows = 0
    for path in refmap_files(folder):
        rel = path.relative_to(folder).as_posix()
        try:
            metadata = pq.ParquetFile(path).metadata
        except (OSError, pa.ArrowException) as err:
            parts.unreadable.add(_REFMAP)
            report.findings.append(Finding("readable", f"cannot read Parquet: {err}", rel))
            continue
        report.refmap_rows += metadata.num_rows
        if path.name == LEGACY_REFMAP or not metadata.num_rows:
            continue
        field = field_of_file(path)
        j = metadata.schema.names.index("ztf_oid")
        stats = [metadata.row_group(g).column(j).statistics for g in range(metadata.num_row_groups)]
        lo, hi = field * FIELD_FACTOR, (field + 1) * FIELD_FACTOR
        if not all(st is not None and st.has_min_max and lo <= st.min and st.max < hi for st in stats):
            message = f"holds ztf_oid values outside field {field} ({lo:,} <= oid < {hi:,})"
            report.findings.append(Finding("objects", message, rel))
    if _REFMAP in parts.unreadable or any(rel.startswith("objects/") for rel in parts.unreadable):
        return  # files lost are reported already; the objects' nrefs or the refmap's rows are unknown
    if parts.object_refs != report.refmap_rows:
        message = (
            f"the objects' nrefs add up to {parts.object_refs:,} reference sources, but the refmap "
            f"maps {report.refmap_rows:,}: objects are missing or nrefs is wrong"
        )
        report.findings.append(Finding("objects", message, _REFMAP))


def _read_cutoffs(folder: Path, report: VerifyReport) -> Cutoffs | None:
    try:
        info = json.loads((folder / RELEASE_FILE).read_text())
        return Cutoffs(parse_date(info["public_cutoff"]), parse_date(info["private_cutoff"]))
    except (OSError, ValueError, KeyError) as err:
        report.findings.append(Finding("manifest", f"cannot read the cutoffs ({err!r})", "release.json"))
        return None


# --------------------------------------------------------------------------- entry points


def verify_release(
    store: Store | str | Path, release: str, *, _hasher: _Hasher | None = None
) -> VerifyReport:
    """Check one published release; see the module docstring for the checks.

    Parameters
    ----------
    store : Store, str or Path
    release : str
        Name of a published release.

    Returns
    -------
    VerifyReport
        ``ok`` if nothing was found.

    Raises
    ------
    ReleaseNotFoundError
        If the store has no such release.
    """
    start = time.perf_counter()
    store = store if isinstance(store, Store) else Store(store)
    folder = store.resolve(release)
    report = VerifyReport(release=release, path=str(folder))
    _check_hats(folder, report)
    _check_files(folder, report, _hasher or _Hasher())
    parts = _read_manifest(folder, report)
    cutoffs = _read_cutoffs(folder, report)
    if parts is not None and cutoffs is not None:
        per_unit = _check_detections(folder, parts, cutoffs, report)
        _check_objects(folder, parts, report)
        _check_refmap(folder, parts, report)
        ledger = read_ledger(store.path)
        shown = _check_counts(ledger, folder, parts, per_unit, report)
        if shown is not None:
            _check_units(ledger, folder, shown, cutoffs, store, report)
    report.seconds = round(time.perf_counter() - start, 3)
    return report


def verify_store(store: Store | str | Path, releases: list[str] | None = None) -> list[VerifyReport]:
    """Check several releases of a store (default: every published one, oldest first).

    A file that releases share (a hard link) is read once, and compared against each
    release's own checksum listing.
    """
    store = store if isinstance(store, Store) else Store(store)
    store.config()
    hasher = _Hasher()
    names = store.releases() if releases is None else releases
    return [verify_release(store, name, _hasher=hasher) for name in names]
