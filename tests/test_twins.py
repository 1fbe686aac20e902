"""The Kaggle twins: matching an image to its BCCD field, the leakage table, test_dedup."""

import numpy as np
import pytest

from bloodviz import twins
from bloodviz.checkpoints import Predictions, add_derived_splits
from bloodviz.data import subset_rows, with_derived_splits


def match(image, split, label, field, inliers=40, runner_up=4, field_label=None):
    return twins.SourceMatch(
        image=image,
        split=split,
        label=label,
        field=field,
        inliers=inliers,
        runner_up=runner_up,
        field_label=field_label if field_label is not None else label,
        affine=(2.0, 0.0, 0.0, 0.0, 2.0, 0.0) if field is not None else (),
    )


TOY = [
    match("TRAIN/A/1", "train", "eosinophil", 1),
    match("TRAIN/A/2", "train", "eosinophil", 1),
    match("TEST/A/1", "test", "eosinophil", 1),  # twin of two TRAIN images
    match("TEST/A/2", "test", "eosinophil", 2),  # field 2 has no TRAIN image
    match("TEST/B/1", "test", "monocyte", None, inliers=9, runner_up=8),  # unmatched
    match("TEST_SIMPLE/A/1", "test_simple", "eosinophil", 1, field_label="neutrophil"),
]


def test_acceptance_needs_enough_inliers_and_a_clear_margin():
    assert twins.accept(30, 4)
    assert not twins.accept(14, 0)  # too few
    assert not twins.accept(30, 16)  # another field nearly as good


def test_dedup_keeps_only_matched_test_images_without_a_train_twin():
    assert twins.dedup_ids(TOY) == ["TEST/A/2"]
    assert twins.twinned_ids(TOY) == ["TEST/A/1"]
    assert [m.image for m in twins.twins_of(TOY, "TEST/A/1")] == ["TRAIN/A/1", "TRAIN/A/2"]
    assert twins.twins_of(TOY, "TEST/B/1") == []


def test_leakage_table_counts_twins_per_class_and_label_agreement():
    rows = {(r["split"], r["class"]): r for r in twins.leakage_table(TOY)}
    everything = rows[("test", "all")]
    assert (everything["images"], everything["matched"], everything["with_train_twin"]) == (3, 2, 1)
    assert everything["twin_share"] == 0.5
    assert rows[("test", "monocyte")]["matched"] == 0
    assert rows[("test_simple", "all")]["label_agreement"] == 0.0


def test_sources_round_trip_through_the_gzipped_csv(tmp_path):
    path = twins.write_sources(TOY, tmp_path / "sources.csv.gz")
    first = path.read_bytes()
    assert twins.read_sources(path) == tuple(TOY)
    twins.write_sources(TOY, path)
    assert path.read_bytes() == first  # no timestamp: rebuilding changes nothing in git


def test_a_missing_sources_file_says_how_to_rebuild_it(tmp_path):
    from bloodviz.paths import DataNotFoundError

    with pytest.raises(DataNotFoundError, match="bloodviz twins"):
        twins.read_sources(tmp_path / "absent.csv.gz")


def preds(ids, n_classes=4):
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(n_classes), size=len(ids))
    return Predictions(
        ids=np.asarray(ids),
        labels=np.arange(len(ids)) % n_classes,
        probs=probs,
        class_names=("eosinophil", "lymphocyte", "monocyte", "neutrophil"),
    )


def test_subset_rows_keeps_the_parent_order_and_every_array():
    p = preds(["a", "b", "c", "d"])
    sub = subset_rows(p, frozenset({"d", "b"}))
    assert list(sub.ids) == ["b", "d"]
    np.testing.assert_array_equal(sub.probs, p.probs[[1, 3]])
    np.testing.assert_array_equal(sub.labels, p.labels[[1, 3]])


def test_blood_cells_checkpoints_get_test_dedup_from_the_shipped_sources():
    shipped = twins.read_sources()
    dedup = twins.dedup_ids(shipped)
    test_ids = [m.image for m in shipped if m.split == "test"]
    by_split, metrics = add_derived_splits("blood-cells", {"test": preds(test_ids)}, {}, seed=0)
    assert list(by_split["test_dedup"].ids) == dedup
    assert metrics["test_dedup"]["n"] == len(dedup)
    # other datasets have no derived split
    assert set(with_derived_splits("pbc", {"test": preds(["x"])})) == {"test"}


def test_shipped_sources_cover_every_kaggle_image_and_agree_with_the_field_labels():
    shipped = twins.read_sources()
    counts = {s: sum(m.split == s for m in shipped) for s in ("train", "test", "test_simple")}
    assert counts == {"train": 9957, "test": 2487, "test_simple": 71}
    matched = [m for m in shipped if m.matched and m.field_label]
    agree = np.mean([m.field_label == m.label for m in matched])
    assert agree > 0.95, agree  # the field's label is never used in matching


@pytest.mark.slow
def test_an_image_and_its_mirror_match_their_field_among_others(data_root, tmp_path):
    """Real images: three TEST images and their fields, among twelve other fields."""
    shipped = [m for m in twins.read_sources() if m.split == "test" and m.matched]
    chosen = shipped[::700][:3]
    fields_root = twins.find_bccd_fields(data_root / "blood-cells")
    import shutil

    import cv2

    from bloodviz.data import find_kaggle_images

    subset = tmp_path / "JPEGImages"
    subset.mkdir()
    all_fields = sorted((fields_root / "JPEGImages").glob("*.jpg"))
    keep = {m.field for m in chosen}
    others = [p for p in all_fields if twins.field_number(p) not in keep][::30][:12]
    for path in [p for p in all_fields if twins.field_number(p) in keep] + others:
        shutil.copy(path, subset / path.name)
    index = twins.FieldIndex(subset, progress=False)
    root = find_kaggle_images(data_root / "blood-cells")
    for m in chosen:
        grey = cv2.imread(str(root / m.image), cv2.IMREAD_GRAYSCALE)
        field, inliers, runner_up, affine = index.match(grey)
        assert field == m.field and twins.accept(inliers, runner_up)
        mirrored, *_ = index.match(np.ascontiguousarray(grey[:, ::-1]))
        assert mirrored == m.field


def test_overlapping_fields_form_one_source_and_carry_twins_across():
    regions = twins.regions_of([1, 2, 3, 4], [(2, 4, 30), (4, 2, 28)])
    assert regions == {1: 1, 2: 2, 3: 3, 4: 2}
    toy = twins.with_regions(
        [
            match("TRAIN/A/9", "train", "eosinophil", 4),  # field 4 photographs field 2's spot
            match("TEST/A/2", "test", "eosinophil", 2),
            match("TEST/A/3", "test", "eosinophil", 3),
        ],
        regions,
    )
    assert twins.dedup_ids(toy) == ["TEST/A/3"]
    assert [m.image for m in twins.twins_of(toy, "TEST/A/2")] == ["TRAIN/A/9"]


def test_grouped_interval_is_wider_than_the_per_image_one_for_copied_sources():
    from bloodviz.metrics import grouped_accuracy_ci

    rng = np.random.default_rng(0)
    # 20 sources, 30 copies each, each source right or wrong as a whole
    source_right = rng.random(20) < 0.8
    correct = np.repeat(source_right, 30)
    groups = np.repeat(np.arange(20), 30)
    lo, hi = grouped_accuracy_ci(correct, groups, seed=0)
    lo1, hi1 = grouped_accuracy_ci(correct, np.arange(len(correct)), seed=0)
    assert lo <= correct.mean() <= hi
    assert (hi - lo) > 3 * (hi1 - lo1)
