"""lcstore diff tells new deliveries from data whose embargo ended, and from data its
cutoffs moved back embargo again; it compares a release only with a later one."""

import shutil

import pytest

from lcstore.kernels.embargo import Cutoffs, eligible, parse_date
from lcstore.ops.diff import DiffOrderError, diff_releases
from lcstore.simulate import load_truth


def test_new_deliveries_and_newly_public_are_told_apart(tmp_path, build, tiny_survey):
    truth = load_truth(tiny_survey.out_dir).detections
    first_paths = set(truth.loc[truth["mjd"] < 58197, "path"])
    epochs = tmp_path / "epochs"
    for rel in first_paths:
        (epochs / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_survey.out_dir / rel, epochs / rel)
    store = tmp_path / "store"
    # DR1: early files only; private programs embargoed entirely.
    build(epochs, tiny_survey.refs_dir, store, "DR1", "2030-01-01", "2000-01-01")
    shutil.rmtree(epochs)
    shutil.copytree(tiny_survey.epochs_dir, epochs)
    build(epochs, tiny_survey.refs_dir, store, "DR2", "2030-01-01", "2030-01-01")
    changes = diff_releases(str(store), "DR1", "DR2")
    current = truth[truth["current"]]
    early = current["path"].isin(first_paths)
    # Embargo ended: private rows of the early delivery that are still current.
    newly_public = current[early & (current["programid"] != 1)]
    assert changes.detections_newly_public == len(newly_public)
    # New deliveries: current rows of later files that are not reprocessed versions.
    later = current[~early & (current["procversion"] == 1)]
    assert changes.detections_new_data == len(later)
    assert changes.detections_new == len(current)
    assert changes.detections_newly_embargoed == changes.detections_superseded == 0
    # Backwards, the rows newly public in DR2 would be told as superseded: refused.
    with pytest.raises(DiffOrderError, match=f"give the earlier release first: lcstore diff {store} DR1 DR2"):
        diff_releases(str(store), "DR2", "DR1")


def test_cutoffs_moved_back_are_told_as_embargoed_again_not_superseded(tmp_path, build, tiny_survey):
    store = tmp_path / "store"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR1")
    public, private = "2018-03-19", "2018-03-18"
    build(tiny_survey.epochs_dir, tiny_survey.refs_dir, store, "DR2", public, private, force=True)
    changes = diff_releases(str(store), "DR1", "DR2")
    truth = load_truth(tiny_survey.out_dir).detections
    current = truth[truth["current"]]
    cut = Cutoffs(parse_date(public), parse_date(private))
    kept_back = current[~eligible(current["programid"].to_numpy(), current["mjd"].to_numpy(), cut)]
    assert changes.detections_newly_embargoed == len(kept_back) > 0
    assert changes.detections_superseded == changes.detections_withdrawn == 0
    assert (
        changes.detections_new_data == changes.detections_newly_public == changes.detections_reprocessed == 0
    )
    assert changes.detections_new == changes.detections_old - changes.detections_newly_embargoed
    assert f"- {len(kept_back):,} embargoed again (cutoffs moved back)" in changes.summary()
    with pytest.raises(DiffOrderError):
        diff_releases(str(store), "DR2", "DR1")
