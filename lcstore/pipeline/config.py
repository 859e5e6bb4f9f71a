"""What a build is asked to do (:class:`BuildConfig`) and what it did (:class:`BuildReport`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lcstore.io.store import DEFAULT_WORK_ORDER
from lcstore.kernels.embargo import Cutoffs


@dataclass(frozen=True)
class BuildConfig:
    """Parameters of one release build. Angles in arcseconds."""

    epochs_dir: str
    refs_dir: str
    store: str
    release: str
    cutoffs: Cutoffs
    radius_arcsec: float = 1.5
    # The next two are fixed when the store is created; later builds use the store's.
    margin_arcsec: float | None = None  # default: 6 x radius, at least 10"
    work_order: int = DEFAULT_WORK_ORDER
    detection_partition_rows: int = 2_000_000
    object_partition_rows: int = 1_000_000
    batch_bytes: int = 64 << 20  # input bytes per ingest task; bounds its memory (cluster/README.md, Sizing)
    strict: bool = False  # fail before publishing if any input was quarantined or conflicted
    force: bool = False  # publish even if a cutoff is earlier than the latest release's

    @property
    def margin(self) -> float:
        return self.margin_arcsec if self.margin_arcsec is not None else max(6 * self.radius_arcsec, 10.0)


@dataclass
class BuildReport:
    """What a build did; printed at the end and saved in the release's release.json."""

    release: str
    files_seen: int = 0
    files_ingested: int = 0
    files_already_ingested: int = 0
    files_duplicate: int = 0
    #: Files listed but not read, their names not an input format's: by folder ("epochs",
    #: "refs"), then by name pattern ("*.ctlg.gz"), counts.
    files_ignored: dict[str, dict[str, int]] = field(default_factory=dict)
    quarantined: list[dict] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    units_superseded: int = 0
    units_withdrawn: int = 0
    detections: int = 0
    objects: int = 0
    detection_only_objects: int = 0
    reference_sources: int = 0
    work_pixels: int = 0
    detection_partitions: int = 0
    object_partitions: int = 0
    base_release: str | None = None
    work_pixels_matched: int = 0
    partitions_rebuilt: int = 0
    partitions_shared: int = 0
    #: Cutoffs earlier than the previous latest release's, published with ``force``.
    cutoffs_moved_back: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    #: Task seconds summed over all workers, by step (read, index, match, write, ...).
    task_seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"release {self.release}: {self.detections:,} detections, {self.objects:,} objects "
            f"({self.detection_only_objects:,} without a reference source)",
            f"  inputs: {self.files_seen:,} files seen, {self.files_ingested:,} ingested, "
            f"{self.files_already_ingested:,} already in the store, {self.files_duplicate:,} duplicate "
            f"copies skipped, {len(self.quarantined):,} quarantined",
            f"  {self.units_superseded:,} exposure-quadrant versions superseded, "
            f"{len(self.conflicts):,} conflicts, {self.units_withdrawn:,} units of withdrawn files left out",
            f"  partitions: {self.detection_partitions} detections, {self.object_partitions} objects; "
            f"{self.partitions_rebuilt} written, {self.partitions_shared} shared with "
            f"{self.base_release or 'no earlier release'}",
            f"  work pixels: {self.work_pixels_matched} of {self.work_pixels} matched",
            "  time: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()),
            "  task time by step: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.task_seconds.items()),
        ]
        lines[2:2] = [f"  {kind}: {line}" for kind, line in self.ignored_lines().items()]
        lines += [f"  cutoff moved back (forced): {c}" for c in self.cutoffs_moved_back]
        lines += [f"  quarantined {q['path']}: {q['reason']}" for q in self.quarantined]
        lines += [f"  conflict: {c}" for c in self.conflicts]
        return "\n".join(lines)

    def ignored_lines(self) -> dict[str, str]:
        """Per folder with ignored files: "9 files ignored (*.ctlg.gz), names lcstore does
        not read ...", with the count of each pattern when there are several, the five most
        frequent first."""
        out = {}
        for kind, patterns in self.files_ignored.items():
            total = sum(patterns.values())
            if not total:
                continue
            ranked = sorted(patterns.items(), key=lambda item: (-item[1], item[0]))
            which = ranked[0][0] if len(ranked) == 1 else ", ".join(f"{p}: {n:,}" for p, n in ranked[:5])
            which += f", {len(ranked) - 5:,} other patterns" if len(ranked) > 5 else ""
            out[kind] = (
                f"{total:,} file{'s' if total != 1 else ''} ignored ({which}), names lcstore does not "
                "read (docs/inputs.md)"
            )
        return out
