"""Stain and scale robustness (#16 part 2): the augmentation, the normalisation, and a robust
checkpoint that carries its normalisation into every inference path."""

import json

import numpy as np
import pytest
import torch
from helpers import run_bloodviz, store_env

from bloodviz.checkpoints import checkpoint_name, open_checkpoint
from bloodviz.data import get_dataset
from bloodviz.preprocess import Preprocessing
from bloodviz.runcard import TrainConfig
from bloodviz.stain import RobustAugment, StainNormaliser, robust_augment

STILL = RobustAugment(scale=(1.0, 1.0), shift=0.0, stain=0.0, hue=0.0, saturation=0.0, lowres=0)


def _disc(size: int = 64, radius: float = 16) -> torch.Tensor:
    """A dark purple disc on a light background, float NCHW in [0, 255]."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    inside = (xx**2 + yy**2) <= radius**2
    image = np.where(inside[..., None], [90.0, 40.0, 140.0], [235.0, 220.0, 210.0])
    return torch.from_numpy(image).permute(2, 0, 1)[None].float()


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_a_batch_is_augmented_the_same_way_from_the_same_seed():
    batch = _disc().repeat(4, 1, 1, 1)
    first = robust_augment(batch, _generator(3))
    assert first.shape == batch.shape
    assert float(first.min()) >= 0 and float(first.max()) <= 255
    assert torch.equal(first, robust_augment(batch, _generator(3)))
    assert not torch.equal(first, robust_augment(batch, _generator(4)))


def test_with_every_perturbation_off_a_centred_disc_is_unchanged():
    # any angle and a mirror leave a centred disc as it was (up to interpolation at its rim)
    disc = _disc()
    out = robust_augment(disc, _generator(), STILL)
    assert float((out - disc).abs().mean()) < 2.0


def test_the_scale_range_shrinks_the_cell():
    disc = _disc()
    half = RobustAugment(scale=(0.5, 0.5), shift=0.0, stain=0, hue=0, saturation=0, lowres=0)
    out = robust_augment(disc, _generator(), half)
    dark = lambda x: int((x[0, 0] < 160).sum())  # noqa: E731 - the disc's pixels
    # mirrored at the border, a shrunk centred disc is a quarter of its area in the middle
    middle = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    assert dark(out[middle]) == pytest.approx(dark(disc) / 4, rel=0.15)


def test_hue_and_stain_jitter_change_colour_but_keep_grey_grey():
    grey = torch.full((2, 3, 8, 8), 128.0)
    hue_only = RobustAugment(scale=(1, 1), shift=0, stain=0, hue=0.25, saturation=0, lowres=0)
    assert torch.allclose(robust_augment(grey, _generator(), hue_only), grey, atol=1e-3)
    disc = _disc()
    stain_only = RobustAugment(scale=(1, 1), shift=0, stain=0.3, hue=0, saturation=0, lowres=0)
    coloured = robust_augment(disc, _generator(1), stain_only)
    assert float((coloured - disc).abs().mean()) > 2.0


def test_reinhard_moves_an_image_to_the_target_statistics(data_root):
    cells = get_dataset("pbc", 64, data_root).load_split("val", limit=5, progress=False).images
    normaliser = StainNormaliser.fit(cells)
    again = StainNormaliser.from_dict(json.loads(json.dumps(normaliser.to_dict())))
    kaggle = get_dataset("blood-cells", 64, data_root).load_split("val", limit=2, progress=False)
    out = again(kaggle.images)
    assert out.shape == kaggle.images.shape and out.dtype == np.uint8
    # each normalised image now has the PBC cells' mean colour, not its own lab's
    target = np.asarray(cells, dtype=np.float64).reshape(-1, 3).mean(0)
    before = np.asarray(kaggle.images, dtype=np.float64).reshape(-1, 3).mean(0)
    after = np.asarray(out, dtype=np.float64).reshape(-1, 3).mean(0)
    assert np.abs(after - target).mean() < 0.35 * np.abs(before - target).mean()
    flat = np.full((16, 16, 3), 200, dtype=np.uint8)
    assert np.array_equal(again(flat), flat)  # no spread to standardise: left alone
    with pytest.raises(ValueError, match="unknown stain normalisation"):
        StainNormaliser.from_dict({"method": "macenko"})


def test_preprocessing_applies_its_stain_in_both_photometric_paths(data_root):
    cells = get_dataset("pbc", 64, data_root).load_split("val", limit=2, progress=False).images
    plain = Preprocessing(size=64, class_names=("a", "b"))
    stained = Preprocessing(
        size=64, class_names=("a", "b"), stain=StainNormaliser.fit(cells[:4]).to_dict()
    )
    assert "stain" not in plain.to_dict()
    assert Preprocessing.from_dict(json.loads(json.dumps(stained.to_dict()))) == stained
    other = get_dataset("blood-cells", 64, data_root).load_split("val", limit=1, progress=False)
    numpy_path = stained.to_array(other.images)
    torch_path = stained.normalize(other.images).numpy()
    assert np.allclose(numpy_path, torch_path, atol=1e-5)
    assert not np.allclose(numpy_path, plain.to_array(other.images), atol=0.05)


def test_a_robust_run_is_named_beside_the_plain_one():
    assert TrainConfig("cnn_baseline", "pbc").checkpoint_name == "cnn_baseline"
    robust = TrainConfig("cnn_baseline", "pbc", robust_augment=RobustAugment().to_dict())
    assert robust.checkpoint_name == "cnn_baseline-robust"
    both = TrainConfig("cnn_baseline", "pbc", robust_augment={}, stain_normalise="reinhard")
    assert both.checkpoint_name == "cnn_baseline-robust-reinhard"
    assert checkpoint_name("resnet18", True, "robust") == "resnet18@imagenet-robust"
    # a card written before these settings existed still matches a plain config
    assert TrainConfig("cnn_baseline", "pbc").matches({"model": "cnn_baseline", "dataset": "pbc"})


@pytest.mark.slow
@pytest.mark.train
def test_a_robust_checkpoint_carries_its_stain_normalisation(tmp_path, data_root):
    env = store_env(tmp_path / "ck", tmp_path / "runs")
    args = ["--model", "cnn_baseline", "--dataset", "pbc", "--size", "28"]
    run_bloodviz(
        "train",
        *args,
        "--epochs",
        "1",
        "--limit-per-class",
        "6",
        "--robust-augment",
        "--stain-normalise",
        "reinhard",
        "--quiet",
        env=env,
        check=True,
    )
    ckpt = open_checkpoint(tmp_path / "ck" / "pbc-28" / "cnn_baseline-robust-reinhard")
    assert ckpt.name == "cnn_baseline-robust-reinhard"
    assert ckpt.preprocessing.stain["method"] == "reinhard"
    assert ckpt.run.config["robust_augment"] == RobustAugment().to_dict()
    # the cached predictions are reproduced through the normalisation (evaluate --verify)
    args[1] = "cnn_baseline-robust-reinhard"
    verify = run_bloodviz("evaluate", *args, "--verify", env=env)
    assert verify.returncode == 0 and "verify: OK" in verify.stdout, verify.stdout + verify.stderr
