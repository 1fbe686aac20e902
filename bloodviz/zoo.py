"""The zoo table: every registered model, what its study reported, what we reproduced."""

from __future__ import annotations

import statistics
from pathlib import Path

from bloodviz.checkpoints import list_checkpoints
from bloodviz.literature import STUDIES, Reported, reported_cost, reported_for, study_of
from bloodviz.models import create_model, list_models, model_info
from bloodviz.models.study002 import keras_total

# bloodviz's own baselines belong to no study; they are shown at BloodMNIST's 8 classes
OWN_BASELINE_CLASSES = 8


def _reported_json(reported: Reported, home: str | None) -> dict:
    return {
        "metric": reported.metric,
        "value": reported.value,
        "dataset": reported.dataset,
        "split": reported.split,
        "pretrained": reported.pretrained,
        "note": reported.note,
        # set where another study than the model's own printed the figure
        "study": None if reported.study == home else STUDIES[reported.study].seed_file,
    }


def zoo_rows(checkpoints: Path | None = None) -> list[dict]:
    shipped: dict[str, list] = {}
    for ckpt in list_checkpoints(checkpoints):
        shipped.setdefault(ckpt.model, []).append(ckpt)
    rows = []
    for name in list_models():
        info = model_info(name)
        study = study_of(name)
        classes = study.classes if study else OWN_BASELINE_CLASSES
        model = create_model(name, num_classes=classes, in_size=info.default_size)
        reproduced = {}
        for ckpt in shipped.get(name, []):
            for split, m in ckpt.eval_metrics().items():
                reproduced[f"{ckpt.dataset_key}/{ckpt.name}/{split}"] = {
                    "accuracy": round(100 * m["accuracy"], 2),
                    "macro_f1": round(100 * m["macro_f1"], 2),
                    "weighted_f1": round(100 * m["weighted_f1"], 2),
                    "n": m["n"],
                    "pretrained": ckpt.run.pretrained,
                    "epochs": ckpt.run.epochs_run,
                    "train_images": ckpt.run.train_images,
                    "trained_on": ckpt.run.device,
                    "weights_shipped": not ckpt.predictions_only_reason,
                    "train_subset": ckpt.run.train_subset,
                    "started_from": ckpt.run.started_from,
                    "seed": ckpt.seed,
                    "replicate_of": ckpt.replicate_of,
                }
        cost = reported_cost(name)
        rows.append(
            {
                "model": name,
                "display_name": info.display_name,
                "family": info.family,
                "study": study.seed_file if study else None,
                "input_size": info.default_size,
                "classes": classes,
                "parameters": sum(p.numel() for p in model.parameters()),
                # Keras counts batch-norm statistics as (non-trainable) parameters
                "parameters_keras_count": keras_total(model),
                "parameters_printed": cost.parameters if cost else None,
                "reported": [_reported_json(r, study and study.id) for r in reported_for(name)],
                "reproduced": reproduced,
                "adaptation": info.adaptation,
                "pretrained_available": bool(info.pretrained_source),
            }
        )
    return rows


def _reported_text(r: dict) -> str:
    value = r["value"]
    text = f"{r['metric'].replace('accuracy', 'acc')} {value:g}"
    return f"{text} {r['split']}" + (" (IN)" if r.get("pretrained") else "")


def _seed_sets(reproduced: dict) -> list[tuple[str, str, list[dict]]]:
    """(dataset, split, runs) for each set of runs that differ only in their seed, lowest
    seed first."""
    sets: dict[tuple[str, str, str], list[dict]] = {}
    for key, v in reproduced.items():
        dataset, name, split = key.split("/")
        sets.setdefault((dataset, v.get("replicate_of", name), split), []).append(v)
    return [
        (dataset, split, sorted(runs, key=lambda x: x.get("seed", 0)))
        for (dataset, _, split), runs in sets.items()
    ]


def format_zoo(rows: list[dict]) -> str:
    """One line per model; reported figures abbreviated (IN = ImageNet-pretrained)."""
    header = (
        f"{'model':20s} {'st.':3s} {'px':>3s} {'params':>10s} {'printed':>10s}  "
        f"{'reported (study)':44s} reproduced (test accuracy / test_simple)"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        reported = "; ".join(_reported_text(x) for x in r["reported"][:3]) or "-"
        if len(r["reported"]) > 3:
            reported += f" (+{len(r['reported']) - 3})"
        mine = []
        for dataset, split, runs in _seed_sets(r["reproduced"]):
            if split in ("test", "test_simple"):
                v = runs[0]  # the lowest seed
                marks = ("*" if v["pretrained"] else "") + ("~" if v.get("train_subset") else "")
                marks += "^" if v.get("started_from") else ""
                marks += "" if v.get("weights_shipped", True) else "p"
                epochs = f" ({v['epochs']}ep)" if v["epochs"] else ""
                spread = ""
                if len(runs) > 1:
                    values = [x["accuracy"] for x in runs]
                    spread = f" [{statistics.mean(values):.2f}±{statistics.stdev(values):.2f}"
                    spread += f" over {len(runs)} seeds]"
                mine.append(f"{dataset}{marks} {split} {v['accuracy']:.2f}{epochs}{spread}")
        printed = r["parameters_printed"]
        match = ""
        if printed:
            match = "=" if printed == r["parameters_keras_count"] else "≠"
        lines.append(
            f"{r['model']:20s} {(r['study'] or '-')[:3]:3s} {r['input_size']:3d} "
            f"{r['parameters_keras_count']:10d} {(str(printed) + match) if printed else '-':>10s}  "
            f"{reported[:44]:44s} {'; '.join(mine) or 'not trained yet'}"
        )
    lines.append(
        "params: at the study's input size and class count, counted as Keras does (batch-norm "
        "statistics included); '=' marks an exact match with the printed count.\n"
        "reproduced: (Nep) epochs run; * ImageNet-pretrained; ~ CPU-budget run on a training "
        "subset (val and test whole); ^ started from the other dataset's weights of the model; "
        "p predictions only (no weights shipped); [mean±sd over N "
        "seeds] where a model was trained with several seeds (the figure before: the lowest)."
    )
    return "\n".join(lines)
