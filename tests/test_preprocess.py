import io

import numpy as np
import pytest
from PIL import Image

from bloodviz.data import PBC_CLASSES, get_dataset
from bloodviz.preprocess import Preprocessing, to_rgb


@pytest.fixture()
def cell(data_root) -> Image.Image:
    return Image.open(data_root / "pbc" / "basophil" / "BA_100102.jpg").convert("RGB")


def test_odd_modes_become_rgb(cell):
    arr = np.asarray(cell)
    sixteen = Image.fromarray(arr[..., 0].astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    assert to_rgb(sixteen).mode == "RGB"
    assert np.abs(np.asarray(to_rgb(sixteen))[..., 0].astype(int) - arr[..., 0]).max() <= 2
    rgba = cell.convert("RGBA")
    rgba.putalpha(0)
    assert np.asarray(to_rgb(rgba)).min() == 255  # transparent -> white, not black
    for mode in ("L", "P", "CMYK", "LA"):
        converted = to_rgb(cell.convert(mode))
        assert converted.mode == "RGB" and converted.size == cell.size


def test_exif_orientation_is_applied(cell):
    wide = cell.resize((120, 60))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    wide.save(buffer, format="JPEG", exif=exif.tobytes())
    reopened = Image.open(io.BytesIO(buffer.getvalue()))
    assert to_rgb(reopened).size == (60, 120)


def test_preprocessing_round_trip_and_prepare(tmp_path, cell, data_root):
    prep = get_dataset("pbc", 64, data_root).preprocessing()
    prep.save(tmp_path / "p.json")
    assert Preprocessing.load(tmp_path / "p.json") == prep
    assert prep.class_names == PBC_CLASSES
    out = prep.prepare(cell)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    tensor = prep.normalize(out)
    assert tuple(tensor.shape) == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="framing"):
        prep.prepare(cell, framing="zoomed")
    with pytest.raises(ValueError, match="unknown preprocessing"):
        Preprocessing.from_dict({**prep.to_dict(), "sharpen": True})
