"""Proprietary periods."""

import datetime as dt

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lcstore.kernels.embargo import Cutoffs, eligible, mjd_of_date, parse_date


def test_mjd_of_date():
    assert mjd_of_date(dt.date(1858, 11, 17)) == 0.0
    assert mjd_of_date(dt.date(2018, 3, 17)) == 58194.0


def test_cutoff_day_is_inclusive():
    c = Cutoffs(public=dt.date(2018, 3, 17), private=dt.date(2018, 3, 1))
    mjd = np.array([58194.0, 58194.999, 58195.0, 58178.5, 58179.0])
    prog = np.array([1, 1, 1, 2, 3])
    assert eligible(prog, mjd, c).tolist() == [True, True, False, True, False]


def test_unknown_program_is_never_eligible():
    c = Cutoffs(public=dt.date(2030, 1, 1), private=dt.date(2030, 1, 1))
    assert not eligible(np.array([0, 4]), np.array([58000.0, 58000.0]), c).any()


@given(
    public=st.dates(dt.date(2018, 1, 1), dt.date(2022, 1, 1)),
    private=st.dates(dt.date(2018, 1, 1), dt.date(2022, 1, 1)),
    mjd=st.floats(58000, 59700),
    prog=st.sampled_from([1, 2, 3]),
)
def test_eligible_matches_definition(public, private, mjd, prog):
    day = dt.date(1858, 11, 17) + dt.timedelta(days=int(np.floor(mjd)))
    want = day <= (public if prog == 1 else private)
    assert eligible(np.array([prog]), np.array([mjd]), Cutoffs(public, private))[0] == want


def test_parse_date_rejects_garbage():
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        parse_date("31/12/2020")
