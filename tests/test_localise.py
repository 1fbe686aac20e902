"""The white-cell localiser on real BCCD fields, and its box arithmetic."""

import numpy as np
import pytest
from PIL import Image

from bloodviz import localise


def test_iou_and_matching():
    assert localise.iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert localise.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert localise.iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0.0
    truth = [(0, 0, 10, 10), (20, 20, 30, 30)]
    found = [(1, 1, 10, 10), (50, 50, 60, 60)]
    assert localise.match_boxes(truth, found) == (1, 1, 1)


def test_a_field_without_stain_has_no_white_cell():
    grey = np.full((480, 640, 3), 200, np.uint8)
    assert localise.find_white_cells(grey) == []
    with pytest.raises(ValueError, match="RGB"):
        localise.find_white_cells(np.zeros((4, 4)))


def test_held_out_bccd_fields_get_their_white_cell(data_root):
    """Ten held-out (odd) fields: at least nine of their WBC boxes found at IoU 0.5, and
    the same boxes when the field is shrunk whole (the area rule is a share of the field)."""
    pairs = localise.bccd_fields(data_root / "blood-cells", "odd")[:10]
    hits = misses = extra = 0
    for image, xml_file in pairs:
        rgb = np.asarray(Image.open(image).convert("RGB"))
        truth = localise.read_voc_boxes(xml_file)
        found = localise.find_white_cells(rgb)
        h, e, m = localise.match_boxes(truth, [b.corners for b in found])
        hits, extra, misses = hits + h, extra + e, misses + m
    assert hits >= 9 and extra <= 2, (hits, extra, misses)


def test_every_part_is_named_and_disjoint(data_root):
    odd = {p for p, _ in localise.bccd_fields(data_root / "blood-cells", "odd")}
    even = {p for p, _ in localise.bccd_fields(data_root / "blood-cells", "even")}
    assert odd and even and not odd & even
    assert len(localise.bccd_fields(data_root / "blood-cells", "all")) == len(odd) + len(even)


def test_a_cell_is_cropped_at_the_training_share_and_mirrored_at_the_edge():
    field = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    middle = localise.crop_cell(field, localise.Box(300, 200, 400, 300), 0.4)
    assert middle.shape == (250, 250, 3)  # the 100 px box takes 40% of the crop
    assert np.array_equal(middle, field[125:375, 225:475])
    corner = localise.crop_cell(field, localise.Box(0, 0, 100, 100), 0.4)
    assert corner.shape == (250, 250, 3)
    assert np.array_equal(corner[75:, 75:], field[:175, :175])  # the field where it exists
    assert np.array_equal(corner[74, 75:], field[1, :175])  # and its mirror past the edge
    tiny = localise.crop_cell(field[:30, :30], localise.Box(0, 0, 30, 30), 0.1)
    assert tiny.shape == (300, 300, 3)  # more than the field: mirrored again and again


@pytest.mark.parametrize("dataset", ["pbc", "blood-cells"])
def test_the_cell_share_is_what_the_training_cells_show(data_root, dataset):
    """The share the field framing crops at, measured again on real training cells at the
    scale of BCCD's fields (PBC originals' 200 px centre; Kaggle images upscaled x2)."""
    if dataset == "pbc":
        files = [
            p
            for p in sorted((data_root / "pbc-originals").rglob("*.jpg"))
            if p.parent.name not in ("platelet", "erythroblast")
        ][::2]
    else:
        train = data_root / "blood-cells" / "dataset2-master" / "images" / "TRAIN"
        files = [
            sorted((train / c).glob("*.jpeg"))[:10] for c in sorted(p.name for p in train.iterdir())
        ]
        files = [f for group in files for f in group]
    shares = []
    for path in files:
        image = Image.open(path).convert("RGB")
        if dataset == "blood-cells":
            image = image.resize((image.width * 2, image.height * 2), Image.BICUBIC)
        boxes = localise.find_white_cells(np.asarray(image))
        if boxes:
            side = max(boxes[0].x1 - boxes[0].x0, boxes[0].y1 - boxes[0].y0)
            shares.append(side / (200 if dataset == "pbc" else min(image.size)))
    assert len(shares) >= 0.9 * len(files)
    assert np.median(shares) == pytest.approx(localise.CELL_SHARE[dataset], rel=0.1)


def test_a_field_gives_one_row_per_white_cell_with_its_box(data_root, tmp_path):
    from bloodviz.checkpoints import find_checkpoint
    from bloodviz.predict import classify, result_rows, write_csv

    ckpt = find_checkpoint("blood-cells", "resnet18", 64)
    fields = data_root / "blood-cells" / "dataset-master" / "JPEGImages"
    path = fields / "BloodImage_00001.jpg"  # a neutrophil (labels.csv)
    results = classify([(path.name, path.read_bytes())], [ckpt])  # 640x480: a field by size
    assert [r.framing for r in results] == ["field"] * len(results) and results
    assert results[0].name == "BloodImage_00001.jpg #cell1" and results[0].box is not None
    assert ckpt.preprocessing.class_names[int(results[0].per_model["resnet18"].argmax())] == (
        "neutrophil"
    )
    write_csv(
        tmp_path / "p.csv",
        result_rows(results, ckpt.preprocessing.class_names),
        ckpt.preprocessing.class_names,
    )
    import pandas as pd

    table = pd.read_csv(tmp_path / "p.csv")
    assert len(table) == len(results) and (table["framing"] == "field").all()
    assert table[["box_x0", "box_y0", "box_x1", "box_y1"]].notna().all().all()
    x0, y0, x1, y1 = results[0].box
    assert 0 <= x0 < x1 <= 640 and 0 <= y0 < y1 <= 480
    # asked for a field where there is no stained nucleus: said so, nothing guessed
    grey = tmp_path / "grey.png"
    Image.fromarray(np.full((480, 640, 3), 200, np.uint8)).save(grey)
    (blank,) = classify([("grey.png", grey.read_bytes())], [ckpt], framing="field")
    assert "no white cell found" in blank.error
    # by size only: the field-sized blank is classified as a crop, with a note saying why
    (fallback,) = classify([("grey.png", grey.read_bytes())], [ckpt])
    assert fallback.framing == "cell" and "no white cell found" in fallback.warnings["resnet18"][0]
    # a red-cell model has no white cells to find
    malaria = find_checkpoint("malaria", "cnn_baseline", 64)
    (refused,) = classify([(path.name, path.read_bytes())], [malaria], framing="field")
    assert "do not classify white cells" in refused.error


def test_boxes_are_drawn_on_the_field():
    field = np.full((120, 160, 3), 255, np.uint8)
    drawn = localise.draw_boxes(field, [localise.Box(10, 10, 60, 60)], ["#1 neutrophil"])
    assert drawn.shape == field.shape
    assert (drawn[10, 30] != 255).any() and (drawn[100, 120] == 255).all()
