"""lcstore diff tells new deliveries from data whose embargo ended."""

import shutil

from lcstore.ops.diff import diff_releases
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
