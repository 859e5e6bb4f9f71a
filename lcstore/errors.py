"""Exceptions raised by lcstore.

Each one names what went wrong and what to do about it, so that callers (the CLI, the
HTTP service, notebooks) can show the message as it is.
"""

from __future__ import annotations


class LcstoreError(Exception):
    """Base class of every error lcstore raises on purpose."""


class InputFileError(LcstoreError):
    """An input catalog file cannot be ingested.

    Parameters
    ----------
    path : str
        The offending file.
    reason : str
        Why it was refused, in words an operator can act on.
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class StoreError(LcstoreError):
    """A store is missing, malformed, or in a state that forbids the operation."""


class ReleaseNotFoundError(StoreError):
    """The named release does not exist in the store."""


class ReleaseExistsError(StoreError):
    """A release of that name is already published; releases are immutable."""


class DamagedFileError(StoreError):
    """A release file cannot be read back as written: its bytes changed on disk.

    Parameters
    ----------
    path : str
        The damaged file.
    reason : str
        What the reader found (a page checksum that does not match, say).
    """

    def __init__(self, path: str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(
            f"{self.path}: cannot be read back ({reason}); the release is damaged on disk: run "
            "'lcstore verify' on the store and restore the file from a backup or rebuild the release"
        )


class QueryError(LcstoreError, ValueError):
    """A query's arguments are out of range (radius, declination, band, ...), or the query
    went past a limit (rows, memory)."""


class QueryTimeoutError(QueryError):
    """A query ran longer than its time limit and was stopped."""


class StoreLockedError(StoreError):
    """Another process is building in this store."""


class StrictBuildError(LcstoreError):
    """A ``--strict`` build met bad input; nothing was published, and nothing it ingested
    was kept."""


class CutoffsMovedBackError(StoreError):
    """A build's cutoffs are earlier than those of the store's latest release.

    Such a release would drop detections the latest release shows: nothing can bring them
    back but a later release. The build refuses before it ingests anything, unless it is
    forced (``BuildConfig(force=True)``, ``lcstore build --force``).
    """


class MissingDependencyError(LcstoreError, ImportError):
    """A feature needs an optional dependency that is not installed; the message names the
    extra to install (``pip install 'lcstore[service]'``)."""
