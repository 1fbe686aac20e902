"""The zoo table: every registered model, what its study reported, what we reproduced."""

from __future__ import annotations

from pathlib import Path

from bloodviz.checkpoints import list_checkpoints
from bloodviz.models import create_model, list_models, model_info


def zoo_rows(checkpoints: Path | None = None) -> list[dict]:
    shipped: dict[str, list] = {}
    for ckpt in list_checkpoints(checkpoints):
        shipped.setdefault(ckpt.model, []).append(ckpt)
    rows = []
    for name in list_models():
        info = model_info(name)
        model = create_model(name, num_classes=8, in_size=info.default_size)
        reproduced = {}
        for ckpt in shipped.get(name, []):
            for split, m in ckpt.eval_metrics().items():
                reproduced[f"{ckpt.dataset_key}/{split}"] = {
                    "accuracy": round(100 * m["accuracy"], 2),
                    "macro_f1": round(100 * m["macro_f1"], 2),
                    "pretrained": bool(ckpt.run.get("pretrained")),
                }
        rows.append(
            {
                "model": name,
                "display_name": info.display_name,
                "family": info.family,
                "study": info.study,
                "input_size": info.default_size,
                "parameters_8_classes": sum(p.numel() for p in model.parameters()),
                "reported": [r.__dict__ for r in info.reported],
                "reproduced": reproduced,
                "adaptation": info.adaptation,
            }
        )
    return rows


def format_zoo(rows: list[dict]) -> str:
    lines = [
        f"{'model':14s} {'study':8s} {'size':>4s} {'params':>10s}  {'reported':42s} reproduced"
    ]
    for r in rows:
        reported = (
            "; ".join(
                f"{x['metric']} {x['value']} ({x['dataset']}, {x['split']})" for x in r["reported"]
            )
            or "-"
        )
        reproduced = (
            "; ".join(
                f"{k}: acc {v['accuracy']:.2f} F1 {v['macro_f1']:.2f}"
                for k, v in r["reproduced"].items()
            )
            or "not trained yet"
        )
        study = (r["study"] or "-")[:3]
        lines.append(
            f"{r['model']:14s} {study:8s} {r['input_size']:4d} {r['parameters_8_classes']:10d}  "
            f"{reported[:42]:42s} {reproduced}"
        )
    return "\n".join(lines)
