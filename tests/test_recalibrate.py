"""Batch-norm recalibration to another microscope: a shipped pbc-64 network on Kaggle's cells."""

import threading

import numpy as np
import pytest
from helpers import run_bloodviz

from bloodviz.checkpoints import find_checkpoint
from bloodviz.predict import Runner, classify, framed_cells, recalibrate
from bloodviz.recalibrate import MIN_CELLS, RecalibrationError, estimate_statistics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shipped():
    """The shipped pbc-64 cnn_baseline: trained, with batch norm and a fitted OOD detector."""
    return find_checkpoint("pbc", "cnn_baseline", 64)


@pytest.fixture(scope="module")
def kaggle_files(data_root):
    """Kaggle's TEST_SIMPLE images: another lab's microscope for a PBC model (71 files)."""
    folder = data_root / "blood-cells" / "dataset2-master" / "images" / "TEST_SIMPLE"
    return [(str(p), p.read_bytes()) for p in sorted(folder.glob("*/*.jpeg"))]


@pytest.fixture(scope="module")
def kaggle_cells(shipped, kaggle_files):
    return framed_cells(kaggle_files, [shipped], "field")[shipped.name]


def test_cells_are_framed_as_classify_frames_them(shipped, kaggle_files, kaggle_cells):
    results = classify(kaggle_files[:5], [shipped], framing="field")
    first = framed_cells(kaggle_files[:5], [shipped], "field")[shipped.name]
    assert len(first) == len(results)  # one per white cell found
    assert all(np.array_equal(cell, r.cell) for cell, r in zip(first, results))
    assert len(kaggle_cells) >= len(kaggle_files) - 2  # nearly every image has its cell


def test_recalibration_changes_the_calls_and_leaves_the_network_as_it_was(shipped, kaggle_cells):
    runner = Runner(shipped, backend="pytorch")
    weights = {k: v.clone() for k, v in runner._model.state_dict().items()}
    plain = runner.probs(kaggle_cells)
    adapted = runner.recalibrate(kaggle_cells)
    recalibrated = adapted.probs(kaggle_cells)
    assert np.abs(recalibrated - plain).max() > 0.1
    # the shared network is untouched: same weights, same statistics, same answers
    after = runner._model.state_dict()
    assert all(np.array_equal(weights[k].numpy(), after[k].numpy()) for k in weights)
    assert np.array_equal(runner.probs(kaggle_cells), plain)
    assert "recalibrated on" in adapted.backend


def test_ood_scores_stay_those_of_the_trained_network(shipped, kaggle_cells):
    runner = Runner(shipped, backend="pytorch")
    assert runner.detector is not None
    _, scores = runner.predict(kaggle_cells[:8])
    _, kept = runner.recalibrate(kaggle_cells).predict(kaggle_cells[:8])
    assert np.allclose(kept, scores)


def test_what_cannot_be_recalibrated_says_why(shipped, kaggle_cells):
    runner = Runner(shipped, backend="pytorch")
    with pytest.raises(RecalibrationError, match=f"at least {MIN_CELLS} cells"):
        runner.recalibrate(kaggle_cells[: MIN_CELLS - 1])
    no_batchnorm = find_checkpoint("pbc", "inception_eff3", 64)
    with pytest.raises(RecalibrationError, match="no batch norm"):
        Runner(no_batchnorm, backend="pytorch").recalibrate(kaggle_cells)
    with pytest.raises(RecalibrationError, match="ONNX Runtime"):
        Runner(shipped, backend="onnx").recalibrate(kaggle_cells)
    with pytest.raises(RecalibrationError, match="another network"):
        other = Runner(find_checkpoint("pbc", "resnet18", 64), backend="pytorch")
        stats = estimate_statistics(other._model, shipped.preprocessing, kaggle_cells)
        runner.predict(kaggle_cells[:2], statistics=stats)


def test_one_shared_network_serves_plain_and_recalibrated_passes_at_once(shipped, kaggle_cells):
    """The app's sessions share one network and its lock: a recalibrated pass in one thread
    never leaks its statistics into another's plain pass."""
    runner = Runner(shipped, backend="pytorch")
    plain = runner.probs(kaggle_cells[:16])
    adapted = runner.recalibrate(kaggle_cells)
    expected = adapted.probs(kaggle_cells[:16])
    wrong = []

    def plain_passes():
        for _ in range(15):
            if not np.array_equal(runner.probs(kaggle_cells[:16]), plain):
                wrong.append("plain")

    def recalibrated_passes():
        for _ in range(15):
            if not np.allclose(adapted.probs(kaggle_cells[:16]), expected):
                wrong.append("recalibrated")

    threads = [threading.Thread(target=f) for f in (plain_passes, recalibrated_passes) * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_recalibrate_skips_networks_without_batch_norm(shipped, kaggle_files):
    both = [shipped, find_checkpoint("pbc", "inception_eff3", 64)]
    runners = {c.name: Runner(c, backend="pytorch") for c in both}
    recalibrated, notes = recalibrate(kaggle_files[:30], both, runners, "field")
    assert notes["cnn_baseline"].startswith("batch norm recalibrated on ")
    assert notes["inception_eff3"].startswith("not recalibrated: the network has no batch norm")
    assert recalibrated["inception_eff3"] is runners["inception_eff3"]
    results = classify(kaggle_files[:30], both, recalibrated, "field")
    assert all(set(r.per_model) == {"cnn_baseline", "inception_eff3"} for r in results)


def test_cli_predict_recalibrates_on_the_images_given(data_root, tmp_path):
    folder = data_root / "blood-cells" / "dataset2-master" / "images" / "TEST_SIMPLE"
    out = tmp_path / "p.csv"
    result = run_bloodviz(
        "predict",
        str(folder / "NEUTROPHIL"),
        "--dataset",
        "pbc",
        "--model",
        "cnn_baseline",
        "--framing",
        "field",
        "--recalibrate",
        "--csv",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "cnn_baseline: batch norm recalibrated on " in result.stdout
    assert "[pytorch, recalibrated on " in result.stdout
    import pandas as pd

    assert len(pd.read_csv(out)) >= 40  # 48 neutrophil images, one row per cell found
    too_few = run_bloodviz(
        "predict",
        *[str(p) for p in sorted((folder / "MONOCYTE").iterdir())],
        "--dataset",
        "pbc",
        "--model",
        "cnn_baseline",
        "--recalibrate",
    )
    assert f"not recalibrated: 4 cell(s) found: recalibration needs at least {MIN_CELLS}" in (
        too_few.stdout
    )
