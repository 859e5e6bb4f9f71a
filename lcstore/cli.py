"""The ``lcstore`` command: build releases, simulate surveys and query releases.

It sits on the public API only (:func:`lcstore.open`, :func:`lcstore.pipeline.build_release`,
:func:`lcstore.simulate.simulate`). Heavy modules are imported by the subcommand that
needs them, so ``lcstore --help`` answers at once.

Exit codes: 0 success, 2 bad input (a one-line ``lcstore: error: ...`` on stderr), 3 a
``build --strict`` that met quarantined files or conflicts (nothing published, nothing
kept), 4 a ``verify`` that found a release damaged or inconsistent, 5 a ``build`` whose
cutoffs are earlier than the latest release's, without ``--force`` (nothing done).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from lcstore.errors import LcstoreError, MissingDependencyError
from lcstore.io.layout import RELEASE_FILE
from lcstore.io.store import DEFAULT_WORK_ORDER, Store

if TYPE_CHECKING:
    import pandas as pd

#: Exit status of bad input: argparse's own, and that of every LcstoreError.
EXIT_USAGE = 2

#: Exit status of ``build --strict`` when inputs were quarantined or conflicted.
EXIT_STRICT = 3

#: Exit status of ``verify`` when a release has any finding.
EXIT_VERIFY = 4

#: Exit status of ``build`` when a cutoff is earlier than the latest release's (no --force).
EXIT_CUTOFFS = 5

_EXAMPLES = """\
quick start:
  lcstore simulate /tmp/survey --preset tiny
  lcstore build --epochs /tmp/survey/epochs --refs /tmp/survey/refs --store /tmp/store \\
      --release DR1 --public-cutoff 2030-01-01 --private-cutoff 2030-01-01
  lcstore releases /tmp/store
  lcstore cone /tmp/store --ra 150.0 --dec 20.0 --radius 30 --bands zr
  lcstore lightcurve /tmp/store OBJECTID --time 58300 58400 --bad-catflags-mask 32768
  lcstore sql /tmp/store "SELECT count(*) FROM detections"

Angles are degrees (positions) and arcseconds (radii); times are MJD. Run
'lcstore COMMAND --help' for each command's options and examples.
"""

_BUILD_EXAMPLES = """\
Inputs: epochal catalogs (one exposure-quadrant per file) under --epochs, reference
catalogs (one field/ccd/quadrant/filter per file) under --refs; see docs/inputs.md.
New files are ingested into the store, files already ingested are skipped, and a new
immutable release is published and becomes the store's latest.

A detection is in the release if it is from the public survey (programid 1) and observed
on or before --public-cutoff, or from a private program (2, 3) and observed on or before
--private-cutoff (UTC days, inclusive). Cutoffs earlier than the latest release's are
refused (exit status 5, nothing done) unless given --force.

exit status: 0 published; 2 bad input; 3 --strict met bad input (nothing published, none
of the new files kept); 5 a cutoff earlier than the latest release's, without --force.

examples:
  # everything public, on all local cores
  lcstore build --epochs data/epochs --refs data/refs --store /data/store --release DR1 \\
      --public-cutoff 2030-01-01 --private-cutoff 2030-01-01

  # on an existing Dask cluster (workers must see the store on a shared file system)
  lcstore build --epochs data/epochs --refs data/refs --store /data/store --release DR2 \\
      --public-cutoff 2019-06-30 --private-cutoff 2018-12-31 --scheduler tcp://head:8786 --strict
"""

_SIMULATE_EXAMPLES = """\
Writes OUT/epochs, OUT/refs (inputs for 'lcstore build') and OUT/truth (what the
simulation put there, for checking a build).

examples:
  lcstore simulate /tmp/survey                 # the demo survey
  lcstore simulate /tmp/pole --preset pole --seed 7
"""

_FILTER_HELP = """\
filters (as IRSA's ZTF lightcurve API):
  --bands zg,zr               keep these filter codes (zg, zr, zi)
  --time MJD_MIN MJD_MAX      keep MJD_MIN <= mjd <= MJD_MAX
  --bad-catflags-mask N       drop detections with catflags & N != 0 (e.g. 32768)
"""

_CONE_EXAMPLES = f"""\
Prints the detections of every object whose position lies within the circle, one row
per detection, ordered by object then time (CSV on stdout by default).

{_FILTER_HELP}
examples:
  lcstore cone /data/store --ra 150.0 --dec 20.0 --radius 10
  lcstore cone /data/store --ra 150.0 --dec 20.0 --radius 60 --bands zr --time 58300 58400 \\
      --columns objectid,mjd,mag,magerr --bad-catflags-mask 32768
  lcstore cone /data/store --ra 0.01 --dec -30 --radius 5 --format parquet -o cone.parquet
"""

_LIGHTCURVE_EXAMPLES = f"""\
OBJECTID is an lcstore objectid (from 'lcstore cone' or the objects table) or a ZTF
data-release object id, which is looked up in the release's refmap. An id of no object
of the release is an error (exit status 2); an object without detections that pass the
filters prints the CSV header alone.

{_FILTER_HELP}
examples:
  lcstore lightcurve /data/store 313530376015509133
  lcstore lightcurve /data/store 245210100000177 --bands zg --release DR1 -o lc.csv
"""

_SQL_EXAMPLES = """\
DuckDB SQL over three views: objects (one row per object, per-band statistics),
detections (one row per detection) and refmap (ZTF reference source -> objectid).
One SELECT statement; it can read no file but the release's and write none. A query
that runs past --timeout or needs more than --memory-limit is stopped (exit status 2).

examples:
  lcstore sql /data/store "SELECT filtercode, count(*) AS n FROM detections GROUP BY ALL"
  lcstore sql /data/store "SELECT objectid, ra, dec, nobs FROM objects ORDER BY nobs DESC LIMIT 10"
  lcstore sql /data/store "SELECT * FROM detections WHERE objectid = 313530376015509133" \\
      --format parquet -o lc.parquet
  lcstore sql /data/store "SELECT objectid, count(*) FROM detections GROUP BY ALL" \\
      --timeout 60 --memory-limit 2GB --threads 2
"""

_RELEASES_EXAMPLES = """\
Lists the published releases, oldest first; '*' marks the latest, which queries use
unless given --release.

example:
  lcstore releases /data/store
"""

_SERVE_EXAMPLES = """\
Serves the store's releases over HTTP at the path of IRSA's ZTF lightcurve API,
/cgi-bin/ZTF/nph_light_curves, so that a client of IRSA's API works by changing the host.

parameters (as IRSA's; angles in degrees, times MJD):
  ID=OBJECTID[,OBJECTID...]        lcstore objectids or ZTF oids (may repeat)
  POS=CIRCLE RA DEC RADIUS         or CIRCLE=RA DEC RADIUS; RADIUS <= 0.1667
  BANDNAME=g,r,i  MAG=MIN MAX  NUM_OBS=N  TIME=MJD_MIN MJD_MAX  BAD_CATFLAGS_MASK=N
  COLLECTION=NAME                  a release (default: the latest, looked up per request)
  FORMAT=VOTABLE|IPAC_TABLE|CSV|TSV|HTML   (default: VOTABLE)

limits (each refusal is a one-line 'ERROR: ...' body):
  an answer of more than --max-rows rows       400, never a truncated table
  a request longer than --timeout seconds      504
  more than --max-concurrent requests at once  503, with Retry-After: 1
  IDs that name no object                      404 if none does; otherwise the rows of the
                                               others, and the unknown ones in the header
                                               X-Lcstore-Unknown-Ids
  a release deleted from disk                  400

examples:
  lcstore serve /data/store --host 0.0.0.0 --port 8000
  curl 'http://127.0.0.1:8000/cgi-bin/ZTF/nph_light_curves?POS=CIRCLE+150.0+20.0+0.0028&FORMAT=CSV'
  curl 'http://127.0.0.1:8000/cgi-bin/ZTF/nph_light_curves?ID=245210100000177&COLLECTION=DR1'
"""

_DIFF_EXAMPLES = """\
Summarises what changed from release OLD to release NEW: detections from new
exposures, detections whose embargo ended, reprocessed exposures and the older versions
they superseded, and objects added or removed.

examples:
  lcstore diff /data/store DR5 DR6
  lcstore diff /data/store DR5 DR6 --json
"""

_WITHDRAW_EXAMPLES = """\
Withdraws an ingested file from every later release: the next build leaves out its rows,
as if it had never been delivered (an older procversion it superseded counts again; a
conflict it won goes to the other file). Published releases do not change. The file is
named by its path, if it still exists, or by the leading hex digits (8 or more) of its
SHA-256, as build reports print them. The same bytes delivered again are skipped as
already in the store, so they stay withdrawn until --undo: the next build then shows the
file's rows again (the undone record is kept in STORE/withdrawn/restored/).

examples:
  lcstore withdraw /tmp/store /data/epochs/ztf_20200101_000245_zr_c10_q1_v2.parquet \\
      --reason "wrong zero point, see ops ticket 123"
  lcstore withdraw /tmp/store 3fa29c1b0e --reason "conflict: the other file is right"
  lcstore withdraw /tmp/store --list
  lcstore withdraw /tmp/store 3fa29c1b0e --undo --reason "the zero point was right"
"""

_VERIFY_EXAMPLES = """\
Checks published releases against what their build recorded and against the store's
ledger: HATS validity of objects/ and detections/, every file's size and SHA-256 against
the release's checksums.json (missing and unlisted files too), row counts against the
ledger units the release shows, those units against the ones the ledger gives the
release (none left out, none extra), no embargoed detection under the release's
cutoffs, no duplicate detection key, every detection's object present with nobs equal
to its detections. Prints one report per release, each finding with its check and file.

exit status:
  0  every release checked is ok
  4  at least one finding (the report says which release, check and file)
  2  bad input: no such store or release

examples:
  lcstore verify /data/store                  # every published release
  lcstore verify /data/store --release DR6
"""

log = logging.getLogger("lcstore.cli")


# --- argument types ---------------------------------------------------------------------


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date of the form YYYY-MM-DD") from err


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from err
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from err
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _seconds_or_zero(text: str) -> float:
    """A time limit in seconds; 0 for none."""
    try:
        if float(text) == 0:
            return 0.0
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from err
    return _positive_float(text)


def _directory(text: str) -> str:
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return text


def _columns(text: str) -> list[str]:
    return [c.strip() for c in text.split(",") if c.strip()]


# --- output -------------------------------------------------------------------------------


def _emit(frame: pd.DataFrame, args: argparse.Namespace) -> None:
    """Write a result as CSV or Parquet, to ``-o FILE`` or stdout."""
    if args.format == "csv":
        frame.to_csv(args.output if args.output else sys.stdout, index=False)
    elif args.output:
        frame.to_parquet(args.output, index=False)
    elif sys.stdout.isatty():
        args.parser.error("will not write binary Parquet to a terminal; give -o FILE or redirect stdout")
    else:
        frame.to_parquet(sys.stdout.buffer, index=False)
    if args.output:
        log.info("wrote %d rows to %s", len(frame), args.output)


# --- subcommands --------------------------------------------------------------------------


def _build(args: argparse.Namespace) -> int:
    from lcstore.errors import CutoffsMovedBackError, ReleaseExistsError, StrictBuildError
    from lcstore.kernels.embargo import Cutoffs
    from lcstore.pipeline import BuildConfig, build_release, dask_client
    from lcstore.pipeline.publish import check_cutoffs, interrupted_publish

    optional = {
        "work_order": args.work_order,
        "detection_partition_rows": args.detection_partition_rows,
        "object_partition_rows": args.object_partition_rows,
    }
    config = BuildConfig(
        epochs_dir=args.epochs,
        refs_dir=args.refs,
        store=args.store,
        release=args.release,
        cutoffs=Cutoffs(public=args.public_cutoff, private=args.private_cutoff),
        radius_arcsec=args.radius,
        strict=args.strict,
        force=args.force,
        **{k: v for k, v in optional.items() if v is not None},
    )
    # Dask logs every worker start and stop at INFO (its import sets that): only with -v.
    logging.getLogger("distributed").setLevel(args.log_level)
    store = Store(args.store)
    if store.release_dir(args.release).exists() and not interrupted_publish(store, args.release):
        raise ReleaseExistsError(
            f"release {args.release!r} is already published in {args.store}; choose a new name"
        )
    try:
        # Checked again by the build, under the store's lock; here, before starting workers.
        check_cutoffs(store, args.release, config.cutoffs, config.force)
        with dask_client(args.workers, args.scheduler) as client:
            try:
                build_release(config, client)
            except StrictBuildError as err:
                print(f"lcstore: {err}", file=sys.stderr)
                return EXIT_STRICT
    except CutoffsMovedBackError as err:
        print(f"lcstore: error: {err}", file=sys.stderr)
        return EXIT_CUTOFFS
    return 0


def _optional(module: str, extra: str, command: str) -> ModuleType:
    """``module``, which needs the optional dependencies of lcstore's ``extra``.

    Raises
    ------
    MissingDependencyError
        If one of them is not installed; the message says what to install.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is None or err.name.split(".")[0] == "lcstore":
            raise
        raise MissingDependencyError(
            f"{command} needs the package {err.name!r}, which is not installed: "
            f"pip install 'lcstore[{extra}]'"
        ) from err


def _simulate(args: argparse.Namespace) -> int:
    from dataclasses import replace

    simulation = _optional("lcstore.simulate", "simulate", "lcstore simulate")
    presets, simulate = simulation.PRESETS, simulation.simulate

    if args.preset not in presets:
        args.parser.error(f"unknown preset {args.preset!r}; presets: {', '.join(presets)}")
    spec = presets[args.preset]
    if args.seed is not None:
        spec = replace(spec, seed=args.seed)
    try:
        survey = simulate(args.out, spec)
    except ValueError as err:
        raise LcstoreError(f"cannot simulate preset {args.preset!r}: {err}") from err
    print(f"simulated survey {args.preset!r} (seed {spec.seed}) in {survey.out_dir}")
    print(f"  epochs: {survey.epochs_dir} ({survey.n_files:,} files, {survey.n_detections:,} detections)")
    print(f"  refs:   {survey.refs_dir} ({survey.n_ref_files:,} files)")
    print(f"  truth:  {survey.truth_dir} ({survey.n_sources:,} sources, {survey.n_transients:,} transients)")
    print(
        f"next: lcstore build --epochs {survey.epochs_dir} --refs {survey.refs_dir} --store STORE "
        "--release DR1 --public-cutoff 2030-01-01 --private-cutoff 2030-01-01"
    )
    return 0


def _filters(args: argparse.Namespace) -> dict:
    return {
        "bands": args.bands,
        "time": tuple(args.time) if args.time else None,
        "bad_catflags_mask": args.bad_catflags_mask,
        "columns": args.columns,
    }


def _cone(args: argparse.Namespace) -> int:
    import lcstore

    release = lcstore.open(args.store, args.release)
    _emit(release.cone(args.ra, args.dec, args.radius, **_filters(args)), args)
    return 0


def _lightcurve(args: argparse.Namespace) -> int:
    import lcstore

    release = lcstore.open(args.store, args.release)
    _emit(release.lightcurve(args.objectid, **_filters(args)), args)
    return 0


def _sql(args: argparse.Namespace) -> int:
    import lcstore

    # Unset limits keep the library's defaults; a timeout of 0 means none.
    limits = {"memory_limit": args.memory_limit, "threads": args.threads}
    limits = {k: v for k, v in limits.items() if v is not None}
    if args.timeout is not None:
        limits["timeout"] = args.timeout or None
    _emit(lcstore.open(args.store, args.release).sql(args.query, **limits), args)
    return 0


def _releases(args: argparse.Namespace) -> int:
    import pandas as pd

    from lcstore.io.store import Store

    store = Store(args.store)
    store.config()
    names = store.releases()
    if not names:
        print(f"store {store.path} has no published release yet", file=sys.stderr)
        return 0
    latest = store.latest()
    rows = []
    for name in names:
        info = json.loads((store.release_dir(name) / RELEASE_FILE).read_text())
        report = info.get("report", {})
        rows.append(
            {
                "": "*" if name == latest else "",
                "name": name,
                "created": info["created"][:19].replace("T", " "),
                "public_cutoff": info["public_cutoff"],
                "private_cutoff": info["private_cutoff"],
                "detections": report.get("detections"),
                "objects": report.get("objects"),
            }
        )
    print(pd.DataFrame(rows).to_string(index=False))
    return 0


def _serve(args: argparse.Namespace) -> int:
    if args.port > 65535:
        args.parser.error(f"--port must be at most 65535, got {args.port}")
    service = _optional("lcstore.service", "service", "lcstore serve")
    limits = {"max_rows": args.max_rows, "timeout": args.timeout, "max_concurrent": args.max_concurrent}
    service.serve(args.store, host=args.host, port=args.port, **{k: v for k, v in limits.items() if v})
    return 0


def _diff(args: argparse.Namespace) -> int:
    from lcstore.ops.diff import diff_releases

    changes = diff_releases(args.store, args.old, args.new)
    print(json.dumps(changes.as_dict(), indent=2) if args.json else changes.summary())
    return 0


def _withdraw(args: argparse.Namespace) -> int:
    from lcstore.io.withdrawals import withdrawals
    from lcstore.ops.withdraw import restore, withdraw

    if args.list:
        Store(args.store).config()
        for w in withdrawals(args.store):
            print(f"{w.sha256[:12]}  {w.time}  {w.units} unit(s)  {', '.join(w.paths)}: {w.reason}")
        return 0
    if args.file is None or args.reason is None:
        args.parser.error("give FILE and --reason, or --list")
    if args.undo:
        w = restore(args.store, args.file, args.reason)
        print(
            f"restored {', '.join(w.paths)} (sha256 {w.sha256[:12]}…, withdrawn {w.time}: {w.reason}); "
            "the next build shows its rows again"
        )
        return 0
    w = withdraw(args.store, args.file, args.reason)
    print(
        f"withdrew {', '.join(w.paths)} (sha256 {w.sha256[:12]}…, {w.units} unit(s)); "
        "the next build leaves its rows out"
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from lcstore.ops.verify import verify_store

    store = Store(args.store)
    store.config()
    names = [args.release] if args.release else store.releases()
    if not names:
        print(f"store {store.path} has no published release yet; nothing to verify", file=sys.stderr)
        return 0
    reports = verify_store(store, names)
    for report in reports:
        print(report.summary())
    return 0 if all(r.ok for r in reports) else EXIT_VERIFY


# --- parser -------------------------------------------------------------------------------


def _add_output(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format", choices=["csv", "parquet"], default="csv", help="output format (default: csv)"
    )
    parser.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument("--release", metavar="NAME", help="release to query (default: the latest)")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bands", metavar="LIST", help="comma-separated filter codes, e.g. zg,zr")
    parser.add_argument(
        "--time", nargs=2, type=float, metavar=("MJD_MIN", "MJD_MAX"), help="inclusive MJD range"
    )
    parser.add_argument("--bad-catflags-mask", type=int, metavar="N", help="drop rows with catflags & N != 0")
    parser.add_argument(
        "--columns", type=_columns, metavar="LIST", help="comma-separated columns to output (default: all)"
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``lcstore`` command."""
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="lcstore",
        description="lcstore: a lightcurve datastore for ZTF-like surveys.",
        epilog=_EXAMPLES,
        formatter_class=raw,
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log messages (-v info, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, epilog: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=summary, epilog=epilog, formatter_class=raw)
        p.set_defaults(parser=p)
        return p

    p = command("build", "ingest new input files and publish a new release", _BUILD_EXAMPLES)
    p.add_argument("--epochs", required=True, type=_directory, metavar="DIR", help="epochal catalogs")
    p.add_argument("--refs", required=True, type=_directory, metavar="DIR", help="reference catalogs")
    p.add_argument("--store", required=True, metavar="STORE", help="store directory (created if needed)")
    p.add_argument("--release", required=True, metavar="NAME", help="name of the new release, e.g. DR1")
    p.add_argument(
        "--public-cutoff",
        required=True,
        type=_date,
        metavar="YYYY-MM-DD",
        help="last UTC day (inclusive) of public-survey detections (programid 1) in the release",
    )
    p.add_argument(
        "--private-cutoff",
        required=True,
        type=_date,
        metavar="YYYY-MM-DD",
        help="last UTC day (inclusive) of private-program detections (programid 2, 3)",
    )
    p.add_argument(
        "--radius", type=_positive_float, default=1.5, metavar="ARCSEC", help="match radius (default: 1.5)"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--workers", type=_positive_int, metavar="N", help="local worker processes (default: one per CPU)"
    )
    where.add_argument("--scheduler", metavar="ADDRESS", help="address of a running Dask scheduler")
    p.add_argument(
        "--detection-partition-rows",
        type=_positive_int,
        metavar="N",
        help="most rows in one detections partition (default: 2,000,000)",
    )
    p.add_argument(
        "--object-partition-rows",
        type=_positive_int,
        metavar="N",
        help="most rows in one objects partition (default: 1,000,000)",
    )
    p.add_argument(
        "--work-order",
        type=int,
        metavar="K",
        help=f"HEALPix order of the work pixels, for a new store only (default: {DEFAULT_WORK_ORDER})",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit status 3, nothing published, none of the new files kept) if any file would "
        "be quarantined or conflicts",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="publish even if a cutoff is earlier than the latest release's, leaving out detections "
        "it shows (without it: exit status 5, nothing done)",
    )
    p.set_defaults(run=_build)

    p = command("simulate", "write a simulated survey to try lcstore on", _SIMULATE_EXAMPLES)
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--preset", default="demo", help="survey preset (default: demo)")
    p.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    p.set_defaults(run=_simulate)

    p = command("cone", "detections of the objects within a circle", _CONE_EXAMPLES)
    p.add_argument("store", metavar="STORE", help="store directory")
    p.add_argument("--ra", type=float, required=True, metavar="DEG", help="centre right ascension, degrees")
    p.add_argument("--dec", type=float, required=True, metavar="DEG", help="centre declination, degrees")
    p.add_argument("--radius", type=float, required=True, metavar="ARCSEC", help="radius, arcseconds")
    _add_filters(p)
    _add_output(p)
    p.set_defaults(run=_cone)

    p = command("lightcurve", "the detections of one object", _LIGHTCURVE_EXAMPLES)
    p.add_argument("store", metavar="STORE", help="store directory")
    p.add_argument("objectid", type=int, metavar="OBJECTID", help="lcstore objectid or ZTF object id")
    _add_filters(p)
    _add_output(p)
    p.set_defaults(run=_lightcurve)

    p = command("sql", "run a DuckDB SQL query over a release", _SQL_EXAMPLES)
    p.add_argument("store", metavar="STORE", help="store directory")
    p.add_argument("query", metavar="QUERY")
    p.add_argument(
        "--timeout",
        type=_seconds_or_zero,
        metavar="SECONDS",
        help="stop the query after this long (default: 300; 0 for no limit)",
    )
    p.add_argument(
        "--memory-limit",
        metavar="SIZE",
        help="DuckDB's memory limit, e.g. 2GB; nothing spills to disk (default: 4GB or half the memory)",
    )
    p.add_argument("--threads", type=_positive_int, metavar="N", help="DuckDB threads (default: up to 4)")
    _add_output(p)
    p.set_defaults(run=_sql)

    p = command("releases", "list the published releases of a store", _RELEASES_EXAMPLES)
    p.add_argument("store", metavar="STORE", help="store directory")
    p.set_defaults(run=_releases)

    p = command("serve", "serve the releases over HTTP, as IRSA's ZTF lightcurve API", _SERVE_EXAMPLES)
    p.add_argument("store", metavar="STORE", help="store directory")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=_positive_int, default=8000, help="TCP port (default: 8000)")
    p.add_argument(
        "--max-rows",
        type=_positive_int,
        metavar="N",
        help="most rows in one answer; more is refused with 400 (default: 1000000)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="time limit of one request; then 504 (default: 120)",
    )
    p.add_argument(
        "--max-concurrent",
        type=_positive_int,
        metavar="N",
        help="requests answered at once; one more gets 503 (default: 8)",
    )
    p.set_defaults(run=_serve)

    p = command("diff", "what changed between two releases", _DIFF_EXAMPLES)
    p.add_argument("store", metavar="STORE", help="store directory")
    p.add_argument("old", metavar="OLD", help="the earlier release")
    p.add_argument("new", metavar="NEW", help="the later release")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p.set_defaults(run=_diff)

    p = command("withdraw", "leave an ingested file out of every later release", _WITHDRAW_EXAMPLES)
    p.add_argument("store", metavar="STORE", help="store directory")
    p.add_argument("file", nargs="?", metavar="FILE", help="the file's path, or its SHA-256's leading digits")
    p.add_argument("--reason", metavar="TEXT", help="why, for the record")
    p.add_argument("--list", action="store_true", help="list the store's withdrawn files instead")
    p.add_argument("--undo", action="store_true", help="undo the file's withdrawal instead")
    p.set_defaults(run=_withdraw)

    p = command("verify", "check published releases against their checksums and the ledger", _VERIFY_EXAMPLES)
    p.add_argument("store", metavar="STORE", help="store directory")
    p.add_argument("--release", metavar="NAME", help="release to check (default: every published release)")
    p.set_defaults(run=_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``lcstore`` command; return its exit status.

    Usage errors and ``--help`` end in argparse's ``SystemExit``; it is turned into the
    returned status, so that callers in Python (tests, notebooks) get an int either way.
    """
    try:
        args = build_parser().parse_args(argv)
        level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
        logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
        args.log_level = level
        return args.run(args)
    except SystemExit as exit_:
        code = exit_.code
        return 0 if code is None else code if isinstance(code, int) else EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (``lcstore cone ... | head``): stop quietly, and keep Python
        # from failing again while flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (LcstoreError, OSError) as err:
        # OSError: unreadable or unwritable paths, unreachable scheduler; bad input, not a bug.
        print(f"lcstore: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
