"""Evaluation of a checkpoint from its cached predictions, and verification of the cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bloodviz.checkpoints import find_checkpoint
from bloodviz.data import get_dataset
from bloodviz.inference import predict_probs
from bloodviz.metrics import classification_summary

# Probabilities recomputed on another machine or BLAS may differ in the last digits; the
# cache stores six decimals.
VERIFY_TOLERANCE = 1e-3


def evaluate_checkpoint(
    dataset: str,
    model: str,
    size: int | None = None,
    split: str = "test",
    verify: bool = False,
    data_root: str | None = None,
    checkpoints: Path | None = None,
    n_boot: int = 1000,
) -> dict:
    ckpt = find_checkpoint(dataset, model, size, checkpoints)
    preds = ckpt.predictions(split)
    seed = ckpt.run.seed
    summary = classification_summary(
        preds.labels, preds.probs, ckpt.preprocessing.class_names, n_boot=n_boot, seed=seed
    )
    report = {
        "dataset": dataset,
        "size": ckpt.size,
        "model": model,
        "split": split,
        **summary,
        "checkpoint": str(ckpt.path),
        "trained": {
            "device": ckpt.run.device,
            "finished_at": ckpt.run.finished_at,
            "epochs_run": ckpt.run.epochs_run,
            "command": ckpt.run.command,
        },
    }
    if verify:
        report["verify"] = verify_predictions(ckpt, split, data_root)
    return report


def verify_predictions(ckpt, split: str, data_root: str | None = None) -> dict:
    """Re-run the stored weights on the split's images and compare with the cached predictions."""
    dataset = get_dataset(ckpt.dataset, ckpt.size, data_root)
    problems = []
    # the dataset builds the arrays; a stain normalisation is the checkpoint's own next step
    own = {k: v for k, v in ckpt.preprocessing.to_dict().items() if k != "stain"}
    if dataset.preprocessing().to_dict() != own:
        problems.append("the dataset's preprocessing differs from the checkpoint's")
    cached = ckpt.predictions(split)
    config = ckpt.run.config
    data = dataset.load_split(
        split, limit=config.get("limit_per_class"), seed=config.get("seed", 0), progress=False
    )
    position = {sid: i for i, sid in enumerate(data.ids)}
    missing = [sid for sid in cached.ids if sid not in position]
    if missing:
        problems.append(f"{len(missing)} cached sample id(s) not in the data, e.g. {missing[0]}")
        return {"ok": False, "problems": problems, "n": len(cached.ids)}
    order = np.asarray([position[sid] for sid in cached.ids])
    if not np.array_equal(data.labels[order], cached.labels):
        problems.append("labels in the cache differ from the data's labels")
    probs = predict_probs(ckpt.load_model(), ckpt.preprocessing, data.images[order])
    max_diff = float(np.abs(probs - cached.probs).max()) if len(probs) else 0.0
    same = probs.argmax(1) == cached.predicted
    # the cache keeps 6 decimals: where the top two classes are closer than the tolerance, the
    # rounding alone may pick the other one, which is not a change of prediction
    top2 = np.sort(probs, axis=1)[:, -2:] if len(probs) and probs.shape[1] > 1 else None
    if top2 is not None:
        same |= (top2[:, 1] - top2[:, 0]) <= VERIFY_TOLERANCE
    agree = float(np.mean(same)) if len(probs) else 1.0
    if max_diff > VERIFY_TOLERANCE:
        problems.append(f"probabilities differ by up to {max_diff:.2e} (> {VERIFY_TOLERANCE})")
    if agree < 1.0:
        problems.append(f"predicted labels agree on only {agree:.2%} of samples")
    return {
        "ok": not problems,
        "problems": problems,
        "n": int(len(probs)),
        "max_abs_prob_diff": max_diff,
        "label_agreement": agree,
    }


def format_report(report: dict) -> str:
    lo, hi = report["accuracy_ci95"]
    flo, fhi = report["macro_f1_ci95"]
    lines = [
        f"{report['model']} on {report['dataset']}-{report['size']} / {report['split']} "
        f"(n={report['n']})",
        f"  accuracy    {report['accuracy']:.4f}  95% CI [{lo:.4f}, {hi:.4f}]",
        f"  macro F1    {report['macro_f1']:.4f}  95% CI [{flo:.4f}, {fhi:.4f}]",
        f"  weighted F1 {report['weighted_f1']:.4f}",
        f"  ROC-AUC OvR {report['auc_ovr']:.4f}",
        f"  ECE (15 b.) {report['ece']:.4f}",
        "",
        f"  {'class':22s} {'precision':>9s} {'recall':>7s} {'f1':>7s} {'support':>8s}",
    ]
    for name, row in report["per_class"].items():
        lines.append(
            f"  {name:22s} {row['precision']:9.4f} {row['recall']:7.4f} {row['f1']:7.4f} "
            f"{row['support']:8d}"
        )
    lines += ["", "  confusion matrix (rows = truth, columns = prediction)"]
    names = report["class_names"]
    width = max([6, *map(len, names)])
    lines.append("  " + " " * width + " " + " ".join(f"{n[:6]:>6s}" for n in names))
    for name, row in zip(names, report["confusion_matrix"]):
        lines.append(f"  {name:{width}s} " + " ".join(f"{v:6d}" for v in row))
    if "verify" in report:
        v = report["verify"]
        status = "OK" if v["ok"] else "FAILED: " + "; ".join(v["problems"])
        extra = (
            f" (max |dp| {v['max_abs_prob_diff']:.2e}, agreement {v['label_agreement']:.2%})"
            if "max_abs_prob_diff" in v
            else ""
        )
        lines += ["", f"  verify: {status}{extra} on {v['n']} samples"]
    return "\n".join(lines)
