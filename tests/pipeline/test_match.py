"""The match of one work pixel: fed in chunks, it decides exactly as fed at once; its
change digests are the pandas-hash sums they have always been."""

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lcstore import schema
from lcstore.io.inputs import read_units
from lcstore.io.staging import UNIT_COLUMN
from lcstore.kernels.digests import cell_sums
from lcstore.kernels.embargo import Cutoffs, parse_date
from lcstore.kernels.healpix import SPATIAL_INDEX_COLUMN, pixel_of, spatial_index
from lcstore.pipeline.match import MatchParams, PixelMatch, catalog_rank

ORDER = 4  # one work pixel holds the whole tiny survey
PARAMS = MatchParams(ORDER, 1.5, 10.0, Cutoffs(parse_date("2030-01-01"), parse_date("2030-01-01")))


def _staged(table: pa.Table, unit: int) -> pa.Table:
    index = spatial_index(table.column("ra").to_numpy(), table.column("dec").to_numpy())
    table = table.append_column(UNIT_COLUMN, pa.array(np.full(table.num_rows, unit)))
    return table.append_column(SPATIAL_INDEX_COLUMN, pa.array(index))


@pytest.fixture(scope="module")
def pixel_rows(tiny_survey):
    """The tiny survey's reference sources and detections, as staging holds them."""
    refs = [_staged(t, i) for i, f in enumerate(sorted(tiny_survey.refs_dir.rglob("*.parquet")))
            for _, t in read_units("refs", str(f))]  # fmt: skip
    dets = [_staged(t, i) for i, f in enumerate(sorted(tiny_survey.epochs_dir.rglob("*.parquet")))
            for _, t in read_units("epochs", str(f))]  # fmt: skip
    refs = pa.concat_tables(refs)
    dets = pa.concat_tables(dets)
    pixels = np.unique(pixel_of(dets.column(SPATIAL_INDEX_COLUMN).to_numpy(), ORDER))
    assert len(pixels) == 1
    return refs, dets, int(pixels[0])


def _run(refs: pa.Table, chunks: list[pa.Table], pixel: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    match = PixelMatch(refs, pixel, PARAMS)
    emitted = [match.match(chunk) for chunk in chunks]
    orphans, objects = match.finish()
    return _sorted(pa.concat_tables([*emitted, orphans]).to_pandas(), objects)


def _sorted(dets: pd.DataFrame, objects: pa.Table) -> tuple[pd.DataFrame, pd.DataFrame]:
    index29 = objects.column(SPATIAL_INDEX_COLUMN).to_numpy()
    assert np.all(index29[1:] >= index29[:-1])  # objects come sorted by position
    key = [*schema.DETECTION_KEY, "procversion"]
    return (
        dets.sort_values(key).reset_index(drop=True),
        objects.to_pandas().sort_values(schema.OBJECTID).reset_index(drop=True),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chunks_in_any_order_give_the_same_objects_and_detections(pixel_rows, seed):
    refs, dets, pixel = pixel_rows
    whole_dets, whole_objects = _run(refs, [dets], pixel)
    rng = np.random.default_rng(seed)
    rows = rng.permutation(dets.num_rows)
    cuts = np.sort(rng.choice(np.arange(1, dets.num_rows), size=7, replace=False))
    chunks = [dets.take(pa.array(part)) for part in np.split(rows, cuts)]
    chunked_dets, chunked_objects = _run(refs, chunks, pixel)
    pd.testing.assert_frame_equal(chunked_dets, whole_dets)
    pd.testing.assert_frame_equal(chunked_objects, whole_objects)
    assert len(whole_dets) == dets.num_rows
    assert (~whole_objects[schema.HAS_REF]).sum() > 0  # detection-only objects are exercised


@pytest.mark.parametrize("seed", [0, 1])
def test_rows_left_out_by_a_mask_are_as_if_never_read(pixel_rows, seed):
    """The match step does not filter out the staged rows of excluded units or embargoed
    detections before matching (a copy of the chunk): it passes a mask. The result must be
    that of the filtered chunks."""
    refs, dets, pixel = pixel_rows
    rng = np.random.default_rng(seed)
    chunks = [dets.slice(0, dets.num_rows // 2), dets.slice(dets.num_rows // 2)]
    masks = [rng.random(c.num_rows) < 0.8 for c in chunks]
    filtered = _run(refs, [c.filter(pa.array(m)) for c, m in zip(chunks, masks, strict=True)], pixel)
    match = PixelMatch(refs, pixel, PARAMS)
    emitted = [match.match(c, m) for c, m in zip(chunks, masks, strict=True)]
    orphans, objects = match.finish()
    masked = _sorted(pa.concat_tables([*emitted, orphans]).to_pandas(), objects)
    pd.testing.assert_frame_equal(masked[0], filtered[0])
    pd.testing.assert_frame_equal(masked[1], filtered[1])
    assert len(masked[0]) == sum(m.sum() for m in masks)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 400))
def test_catalog_rank_orders_catalogs_by_their_key(seed, n):
    """The rank decides which source seeds an object: it must follow the key, filters in
    FILTERCODES order (not alphabetical: zg, zr, zi)."""
    rng = np.random.default_rng(seed)
    refs = pd.DataFrame(
        {
            "field": rng.integers(1, 4, n).astype(np.int32) * 300,
            "ccdid": rng.integers(1, 3, n).astype(np.int8),
            "qid": rng.integers(1, 3, n).astype(np.int8),
            "filtercode": pd.array(rng.choice(schema.FILTERCODES, n), dtype="string"),
        }
    )
    table = pa.Table.from_pandas(refs, preserve_index=False)
    keys = refs.assign(filtercode=refs["filtercode"].map({f: i for i, f in enumerate(schema.FILTERCODES)}))
    expected = keys.groupby(list(schema.REF_CATALOG_KEY), sort=True).ngroup().to_numpy()
    assert catalog_rank(table).tolist() == expected.tolist()


def test_cell_sums_are_sums_of_pandas_row_hashes():
    """Digests are stored in releases and compared by the next build: they must not change."""
    rng = np.random.default_rng(5)
    n = 5000
    table = pa.table(
        {
            SPATIAL_INDEX_COLUMN: np.sort(rng.integers(0, 12 << 56, n)),
            "id": rng.integers(-(2**62), 2**62, n),
            "mag": rng.normal(18, 2, n).astype(np.float32),
            "mjd": rng.uniform(58000, 60000, n),
            "flag": rng.random(n) < 0.5,
            "ccd": rng.integers(-128, 128, n).astype(np.int8),
            "version": rng.integers(-(2**15), 2**15, n).astype(np.int16),
        }
    )
    columns = ["id", "mag", "mjd", "flag", "ccd", "version"]
    row_hash = np.zeros(n, dtype=np.uint64)
    for i, c in enumerate(columns):
        values = table.column(c).to_numpy()
        values = (
            values.astype(np.float64).view(np.int64) if values.dtype.kind == "f" else values.astype(np.int64)
        )
        row_hash ^= pd.util.hash_array(values) * np.uint64(2 * i + 1)
    cells = pixel_of(table.column(SPATIAL_INDEX_COLUMN).to_numpy(), 3)
    expected = {
        int(c): (int(row_hash[cells == c].sum(dtype=np.uint64)), int((cells == c).sum()))
        for c in np.unique(cells)
    }
    assert cell_sums(table, columns, 3) == expected
    assert cell_sums(table.take(rng.permutation(n)), columns, 3) == expected  # rows in any order
