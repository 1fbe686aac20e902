"""Tables the pages show, as pure functions of the checkpoint store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bloodviz.checkpoints import list_checkpoints


def checkpoint_table(root: Path | None = None) -> pd.DataFrame:
    """One row per shipped checkpoint and evaluation split, with metrics and provenance."""
    rows = []
    for ckpt in list_checkpoints(root):
        run = ckpt.run
        reason = ckpt.predictions_only_reason
        for split, m in ckpt.eval_metrics().items():
            rows.append(
                {
                    "dataset": ckpt.dataset_key,
                    "model": run.display_name or ckpt.model,
                    "split": split,
                    "accuracy": m["accuracy"],
                    "acc 95% CI": f"{m['accuracy_ci95'][0]:.3f}–{m['accuracy_ci95'][1]:.3f}",
                    "macro F1": m["macro_f1"],
                    "F1 95% CI": f"{m['macro_f1_ci95'][0]:.3f}–{m['macro_f1_ci95'][1]:.3f}",
                    "AUC": m["auc_ovr"],
                    "ECE": m["ece"],
                    "n": m["n"],
                    "parameters": run.parameters,
                    "pretrained": run.pretrained_label,
                    "epochs": run.epochs_run,
                    "train images": run.train_images,
                    "weights": f"predictions only: {reason}" if reason else "shipped",
                    "trained on": run.trained_on,
                    "trained at": run.finished_at,
                    "command": run.command,
                }
            )
    return pd.DataFrame(rows)
