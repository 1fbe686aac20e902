"""Study 003's features + one-vs-one SVM: fitted on real cells, written as a predictions-only
checkpoint that the rest of bloodviz reads like any other."""

import numpy as np
import pytest
import torch
from torch import nn

from bloodviz import svm
from bloodviz.checkpoints import CheckpointError, open_checkpoint
from bloodviz.fit import fit as train
from bloodviz.runcard import TrainConfig


class TinyFeatures(nn.Module):
    """A stand-in for ResNet-50's pooled features (the real one costs minutes on CPU)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 16, 3, stride=2)

    def forward(self, x):
        return torch.relu(self.conv(x)).mean((2, 3))


def test_svm_is_one_vs_one_with_probabilities():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c * 3, 1, (15, 5)) for c in range(4)])
    y = np.repeat(np.arange(4), 15)
    model = svm.make_svm().fit(x, y)
    probs = model.predict_proba(x)
    assert np.allclose(probs.sum(1), 1) and (probs.argmax(1) == y).mean() > 0.9
    svc = model[-1].calibrated_classifiers_[0].estimator
    svc.decision_function_shape = "ovo"  # libsvm's own one-vs-one scores: one per pair
    assert svc.decision_function(model[0].transform(x)).shape == (60, 6)  # 4*3/2 pairs
    assert 0 < svm.support_vectors(model) <= 60


def test_without_a_resnet50_checkpoint_the_error_says_what_to_train(tmp_path, data_root):
    config = TrainConfig.for_model("resnet50_svm", "blood-cells", size=32, limit_per_class=2)
    with pytest.raises(ValueError, match="--model resnet50 --dataset blood-cells"):
        train(config, str(data_root), tmp_path / "ck", progress=False, log=str)


@pytest.mark.slow
@pytest.mark.train
def test_a_fit_on_features_without_a_checkpoint_writes_predictions_only(
    tmp_path, monkeypatch, data_root
):
    monkeypatch.setattr(
        svm, "feature_network", lambda *args: (TinyFeatures(), "a tiny stand-in network", None)
    )
    config = TrainConfig.for_model(
        "resnet50_svm", "blood-cells", size=32, limit_per_class=6, train_limit_per_class=5
    )
    out = train(config, str(data_root), tmp_path / "ck", progress=False, log=str)
    ckpt = open_checkpoint(out)
    # test_dedup comes from test's rows (write_checkpoint derives it): a subset, same numbers
    assert ckpt.splits == ["test", "test_dedup", "test_simple", "val"]
    test, dedup = ckpt.predictions("test"), ckpt.predictions("test_dedup")
    assert set(dedup.ids) < set(test.ids)
    row = list(test.ids).index(dedup.ids[0])
    assert (test.probs[row] == dedup.probs[0]).all()
    assert ckpt.run.n_samples["train"] == 20 and ckpt.run.n_samples["test"] == 24
    assert "pickle" in ckpt.predictions_only_reason and not ckpt.has_weights
    assert "one-vs-one" in ckpt.run.classifier
    test = ckpt.predictions("test")
    assert np.allclose(test.probs.sum(1), 1, atol=1e-6)
    assert ckpt.metrics()["test"]["n"] == 24
    with pytest.raises(CheckpointError, match="predictions-only"):
        ckpt.load_model()


@pytest.mark.parametrize("classes", [2, 3, 8])
def test_the_svm_head_gives_scikit_learns_probabilities_in_torch(classes):
    """SVMHead recomputes the fitted pipeline's predict_proba (scaler, RBF kernel, every
    pair's decision, the one-vs-rest votes, the calibrators); its log-probabilities softmax
    back to them, and an unfitted head passes its features through."""
    from bloodviz.models.svm_head import SVMHead

    rng = np.random.default_rng(classes)
    centres = rng.normal(0, 2, (classes, 12))
    x = np.concatenate([rng.normal(c, 1.5, (25, 12)) for c in centres])
    y = np.repeat(np.arange(classes), 25)
    fitted = svm.make_svm().fit(x, y)
    held_out = np.concatenate([rng.normal(c, 1.5, (10, 12)) for c in centres])
    expected = fitted.predict_proba(held_out)
    head = SVMHead.from_fitted(fitted)
    ours = head.probabilities(torch.from_numpy(held_out)).numpy()
    assert np.abs(ours - expected).max() < 1e-6
    logits = head(torch.from_numpy(held_out).float())
    assert np.abs(torch.softmax(logits.double(), 1).numpy() - expected).max() < 1e-5
    assert head.num_classes == classes
    features = torch.ones(2, 12)
    assert torch.equal(SVMHead()(features), features)


@pytest.mark.slow
@pytest.mark.train
def test_the_svm_ships_as_a_head_on_the_resnet50_checkpoint(tmp_path_factory):
    """Fitted on a real resnet50 checkpoint's features, resnet50_svm ships its head (no
    pickle): it loads as that resnet50 with the SVM as its fc, re-runs to its own cached
    predictions (evaluate --verify), counts both in its memory, and once the resnet50 under it
    changes it is refused with the command that refits it."""
    import json

    from helpers import run_bloodviz, train_tiny

    from bloodviz.checkpoints import load_weights
    from bloodviz.models.svm_head import SVMHead

    root, env = train_tiny(
        tmp_path_factory, datasets=("blood-cells",), size=32, limit=6, models=("resnet50",)
    )
    args = ("--dataset", "blood-cells", "--size", "32", "--limit-per-class", "6", "--quiet")
    run_bloodviz("train", "--model", "resnet50_svm", *args, env=env, check=True)
    ckpt = open_checkpoint(root / "blood-cells-32" / "resnet50_svm")
    features = open_checkpoint(root / "blood-cells-32" / "resnet50")
    assert ckpt.predictions_only_reason == "" and ckpt.features_checkpoint.path == features.path
    stored = load_weights(ckpt.weights_path)
    assert stored and all(key.startswith("fc.") for key in stored)
    assert ckpt.memory_bytes > features.memory_bytes
    model = ckpt.load_model()
    assert isinstance(model.fc, SVMHead) and model.fc.num_classes == 4
    result = run_bloodviz(
        "evaluate",
        "--model",
        "resnet50_svm",
        "--dataset",
        "blood-cells",
        "--size",
        "32",
        "--verify",
        "--json",
        "--checkpoints",
        str(root),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verify"]["ok"]

    run_bloodviz(  # a changed resnet50: the head was fitted on other features
        "train",
        "--model",
        "resnet50",
        *args,
        "--epochs",
        "1",
        "--seed",
        "0",
        "--lr",
        "1e-2",
        "--fresh",
        env=env,
        check=True,
    )
    changed = open_checkpoint(root / "blood-cells-32" / "resnet50_svm")
    with pytest.raises(CheckpointError, match="refit it: python -m bloodviz train --model "):
        changed.load_model()
