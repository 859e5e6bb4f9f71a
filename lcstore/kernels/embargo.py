"""Proprietary periods: which detections a release may show.

A detection is public in a release if it is from the public survey (programid 1) and was
observed on or before the release's public cutoff date, or from a private program
(programid 2 or 3) and observed on or before the private cutoff date. Cutoff dates are
UTC calendar days and inclusive: everything observed during that day is in.

Pure functions; no I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from lcstore import schema

_MJD_EPOCH = dt.date(1858, 11, 17)


def mjd_of_date(day: dt.date) -> float:
    """MJD at 00:00 UTC of a calendar day."""
    return float((day - _MJD_EPOCH).days)


def parse_date(text: str) -> dt.date:
    """A cutoff date given as YYYY-MM-DD."""
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cutoff {text!r} is not a date of the form YYYY-MM-DD") from err


@dataclass(frozen=True)
class Cutoffs:
    """The two observation-date cutoffs of a release (inclusive UTC days)."""

    public: dt.date
    private: dt.date

    @property
    def public_mjd_end(self) -> float:
        """First MJD after the public cutoff day (exclusive bound)."""
        return mjd_of_date(self.public) + 1.0

    @property
    def private_mjd_end(self) -> float:
        """First MJD after the private cutoff day (exclusive bound)."""
        return mjd_of_date(self.private) + 1.0

    def as_dict(self) -> dict[str, str]:
        return {"public_cutoff": self.public.isoformat(), "private_cutoff": self.private.isoformat()}

    def moved_back(self, previous: Cutoffs) -> list[str]:
        """The cutoffs earlier here than in ``previous``, in words ("public cutoff
        2020-06-30, earlier than 2021-01-31"); empty if neither moved back."""
        pairs = (("public", self.public, previous.public), ("private", self.private, previous.private))
        return [f"{kind} cutoff {new}, earlier than {old}" for kind, new, old in pairs if new < old]


def eligible(programid: np.ndarray, mjd: np.ndarray, cutoffs: Cutoffs) -> np.ndarray:
    """Boolean mask of the detections a release with ``cutoffs`` may show.

    Parameters
    ----------
    programid : numpy.ndarray
        Program of each detection (1 public, 2 partnership, 3 Caltech); any other value,
        or a value that is not a whole number, is never eligible.
    mjd : numpy.ndarray
        Observation time of each detection, MJD.
    cutoffs : Cutoffs
    """
    # Each program's end of observation time, looked up: three passes over the rows
    # instead of a membership test and a comparison per program class.
    ends = np.full(max(schema.PROGRAMIDS) + 2, -np.inf)  # the last slot: any other program
    ends[list(schema.PUBLIC_PROGRAMS)] = cutoffs.public_mjd_end
    ends[list(schema.PRIVATE_PROGRAMS)] = cutoffs.private_mjd_end
    program = np.asarray(programid)
    if program.dtype.kind != "i":
        with np.errstate(invalid="ignore"):
            program = np.where(program % 1 == 0, program, -1).astype(np.int64)
    return np.asarray(mjd, dtype=np.float64) < ends[np.clip(program, -1, len(ends) - 1)]
