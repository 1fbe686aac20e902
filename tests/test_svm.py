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
def test_fit_writes_a_predictions_only_checkpoint(tmp_path, monkeypatch, data_root):
    monkeypatch.setattr(
        svm, "feature_network", lambda *args: (TinyFeatures(), "a tiny stand-in network")
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
