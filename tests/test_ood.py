"""The out-of-distribution score: fitted per checkpoint, one pass with the prediction."""

import numpy as np
import pandas as pd
import pytest
from helpers import run_bloodviz, train_tiny
from PIL import Image

from bloodviz.checkpoints import find_checkpoint, list_checkpoints
from bloodviz.ood import (
    Mahalanobis,
    auroc,
    benchmark,
    detector_layers,
    energy_score,
    fit_detector,
    fpr_at_95,
    load_detector,
    logits_and_features,
    stored_scores,
)


def test_mahalanobis_scores_far_points_higher_and_survives_a_round_trip(tmp_path):
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 900)
    centres = rng.normal(0, 5, (3, 20))
    features = centres[labels] + rng.normal(0, 1, (900, 20)) * np.linspace(0.1, 2, 20)
    fitted = Mahalanobis.fit(features, labels)
    near = centres[1] + rng.normal(0, 1, (50, 20)) * np.linspace(0.1, 2, 20)
    far = centres[1] + rng.normal(0, 1, (50, 20)) * 6
    assert auroc(fitted.score(near), fitted.score(far)) > 0.99
    assert fpr_at_95(fitted.score(near), fitted.score(far)) < 0.05
    # the stored statistics give back the very same scores (a transposed view once did not)
    save_file(fitted.to_tensors(), str(tmp_path / "ood.safetensors"))
    loaded = Mahalanobis.from_tensors(load_file(str(tmp_path / "ood.safetensors")))
    assert np.allclose(loaded.score(far), fitted.score(far), rtol=1e-12)
    # every dataset has another one to be told apart from
    from bloodviz.data import DATASETS
    from bloodviz.ood import OTHER_DATASETS

    assert set(DATASETS) - {"bloodmnist"} <= set(OTHER_DATASETS)
    # energy: confident logits score lower (more in-distribution) than flat ones
    assert energy_score(np.array([[10.0, 0, 0]]))[0] < energy_score(np.array([[0.0, 0, 0]]))[0]


def test_features_come_from_the_classifier_input_and_the_first_convolution():
    import torch

    ckpt = find_checkpoint("pbc", "cnn_baseline")
    model = ckpt.load_model()
    layers = detector_layers(model, 64, 8)
    assert isinstance(model.get_submodule(layers["head"]), torch.nn.Linear)
    assert isinstance(model.get_submodule(layers["stem"]), torch.nn.Conv2d)
    cells = np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8)
    logits, feats = logits_and_features(model, ckpt.preprocessing, cells)
    assert logits.shape == (3, 8) and feats["head"].shape[0] == 3
    head = model.get_submodule(layers["head"])
    again = head(torch.as_tensor(feats["head"])).detach().numpy()
    assert np.allclose(again, logits, atol=1e-4)  # the tapped features give the logits
    # the stem part: each channel's mean and spread of the first convolution's output
    conv = model.get_submodule(layers["stem"])
    with torch.no_grad():
        out = conv(ckpt.preprocessing.normalize(cells)).flatten(2)
    expected = torch.cat([out.mean(2), out.std(2, correction=0)], 1).numpy()
    assert feats["stem"].shape == (3, 2 * conv.out_channels)
    assert np.allclose(feats["stem"], expected, atol=1e-4)
    # a pass that needs only the stem stops there and gives the same statistics
    none, stem_only = logits_and_features(model, ckpt.preprocessing, cells, stem_only=True)
    assert none is None and set(stem_only) == {"stem"}
    assert np.allclose(stem_only["stem"], feats["stem"])


def test_a_head_only_detector_from_before_the_stem_part_still_loads(tmp_path):
    import json
    from types import SimpleNamespace

    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    fitted = Mahalanobis.fit(rng.normal(size=(200, 6)), rng.integers(0, 2, 200))
    save_file(fitted.to_tensors(), str(tmp_path / "ood.safetensors"))
    card = {"threshold": 12.5, "feature_layer": "fc", "method": "mahalanobis"}
    (tmp_path / "ood.json").write_text(json.dumps(card))
    detector = load_detector(SimpleNamespace(path=tmp_path))
    assert set(detector.parts) == {"head"} and detector.threshold == 12.5
    probe = rng.normal(size=(4, 6))
    # its score is the head's raw distance, on the scale its threshold was set on
    assert np.allclose(detector.score({"head": probe}), fitted.score(probe))
    with pytest.raises(ValueError, match="did not tap"):
        detector.score({"stem": probe})
    (tmp_path / "ood.safetensors").write_bytes(b"not a safetensors file")
    assert load_detector(SimpleNamespace(path=tmp_path)) is None  # damaged: confidence alone


def test_two_parts_are_scaled_by_validation_and_the_larger_counts():
    from bloodviz.ood import OodDetector

    rng = np.random.default_rng(0)
    head = Mahalanobis.fit(rng.normal(size=(300, 4)), rng.integers(0, 2, 300))
    stem = Mahalanobis.fit(rng.normal(size=(300, 3)) * 10, rng.integers(0, 2, 300))
    detector = OodDetector({"head": head, "stem": stem}, {"head": (4, 9), "stem": (2, 4)}, 1, {})
    scores = detector.combine({"head": np.array([4.0, 9.0, 4.0]), "stem": np.array([2, 2, 8.0])})
    assert scores.tolist() == [0.0, 1.0, 3.0]  # (9-4)/(9-4); (8-2)/(4-2) beats (4-4)/5
    assert detector.flag(scores).tolist() == [False, False, True]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, data_root):
    root, env = train_tiny(tmp_path_factory, limit=20)
    (ckpt,) = list_checkpoints(root)
    detector = fit_detector(ckpt, progress=False, command="test")
    return ckpt, detector, root, env


@pytest.mark.slow
def test_fit_stores_a_threshold_that_passes_95_percent_of_validation(fitted):
    ckpt, detector, _, _ = fitted
    val = stored_scores(ckpt, "val")
    assert detector.threshold > 0
    assert np.mean(val["ood_score"] <= detector.threshold) == pytest.approx(0.95, abs=0.03)
    assert load_detector(ckpt).threshold == detector.threshold
    assert set(ckpt.predictions("test").ids) <= set(stored_scores(ckpt, "test")["sample_id"])
    result = benchmark(ckpt, progress=False, command="test")
    assert {"gaussian noise", "blank", "natural photos", "blood-cells cells"} <= set(result["sets"])
    row = result["sets"]["gaussian noise"]
    assert 0 <= row["auroc_mahalanobis"] <= 1 and 0 <= row["fpr95_energy"] <= 1


@pytest.mark.slow
def test_onnx_and_pytorch_score_alike_and_the_csv_flags(fitted, tmp_path, data_root):
    from bloodviz.predict import Runner

    ckpt, _, root, env = fitted
    cells = np.random.default_rng(1).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)
    by_torch = Runner(ckpt, backend="pytorch")
    by_onnx = Runner(ckpt, backend="onnx")
    (p1, s1), (p2, s2) = by_torch.predict(cells), by_onnx.predict(cells)
    assert np.allclose(p1, p2, atol=1e-4) and np.allclose(s1, s2, rtol=1e-3)
    # the export left the network in eval mode: batch statistics never leak in
    assert not by_torch._model.training
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(
        noise
    )
    out = tmp_path / "p.csv"
    result = run_bloodviz(
        "predict",
        str(noise),
        "--dataset",
        "pbc",
        "--model",
        "cnn_baseline",
        "--abstain",
        "--csv",
        str(out),
        env=env,
    )
    assert result.returncode == 0, result.stderr
    row = pd.read_csv(out).iloc[0]
    assert row["flagged"] and row["abstained"] and pd.isna(row["predicted"])
    assert row["ood_score"] > load_detector(ckpt).threshold
    assert "unlike the training data" in result.stdout


@pytest.mark.slow
def test_ood_command_prints_the_benchmark(tmp_path_factory):
    _, env = train_tiny(tmp_path_factory, limit=12)
    result = run_bloodviz("ood", "--dataset", "pbc", "--model", "cnn_baseline", "--quiet", env=env)
    assert result.returncode == 0, result.stderr
    assert "fitted on" in result.stdout and "gaussian noise" in result.stdout
    assert "AUROC maha" in result.stdout
    missing = run_bloodviz("ood", "--dataset", "pbc", "--model", "resnet18", env=env)
    assert missing.returncode == 2 and "error:" in missing.stderr


def test_risk_coverage_keeps_the_most_trusted_first():
    from bloodviz.metrics import risk_coverage

    correct = np.array([1, 0, 1, 1, 0])
    trust = np.array([0.9, 0.1, 0.8, 0.7, 0.95])
    coverage, accuracy = risk_coverage(correct, trust)
    assert coverage.tolist() == [0.2, 0.4, 0.6, 0.8, 1.0]
    # kept in order 0.95 (wrong), 0.9, 0.8, 0.7, 0.1 (wrong)
    assert accuracy.tolist() == pytest.approx([0.0, 0.5, 2 / 3, 0.75, 0.6])


@pytest.mark.slow
def test_pages_show_the_score_its_benchmark_and_risk_coverage(fitted, monkeypatch):
    from helpers import app_test

    from bloodviz.compare import ood_table

    ckpt, _, root, _ = fitted
    benchmark(ckpt, progress=False)
    table = ood_table([ckpt])
    assert list(table["model"]) == ["cnn_baseline"] and 0 <= table["blank"].iloc[0] <= 1
    app = app_test(monkeypatch, root).run()
    assert not app.exception
    assert any(e.label == "Out-of-distribution detection" for e in app.expander)
    app.switch_page("app_pages/report.py")
    app.query_params["report_view"] = "Trust"  # only the open tab runs
    app.run()
    assert not app.exception
    assert any("**Out-of-distribution score**" in m.value for m in app.markdown)
    assert any("least confident" in c.value for c in app.caption)
    app.switch_page("app_pages/gradcam.py").run()
    assert any(c.value.startswith("OOD score") for c in app.caption)


@pytest.mark.slow
def test_refitting_the_stem_keeps_the_head_and_its_stored_scores(fitted):
    ckpt, detector, _, _ = fitted
    before = stored_scores(ckpt, "val").set_index("sample_id")
    again = fit_detector(ckpt, progress=False, command="stem again", reuse_head=True)
    after = stored_scores(ckpt, "val").set_index("sample_id").loc[before.index]
    assert again.card["head_reused_from"] == detector.card["command"]
    assert np.allclose(after["head"], before["head"], rtol=1e-5)
    assert np.allclose(again.parts["head"].precision, detector.parts["head"].precision)
    assert np.mean(after["ood_score"] <= again.threshold) == pytest.approx(0.95, abs=0.03)
    assert load_detector(ckpt).scales == again.scales
