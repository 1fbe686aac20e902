"""``python -m bloodviz <command>``: train, evaluate, download, datasets, checkpoints."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bloodviz.paths import DataNotFoundError, blood_cells_root
from bloodviz.recalibrate import MIN_CELLS
from bloodviz.stain import RobustAugment


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="pbc, blood-cells, bloodmnist, malaria")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument(
        "--data-root", default=None, help="folder holding the datasets (else $BLOODVIZ_DATA)"
    )


TRAINING_SETTINGS = (
    "epochs",
    "batch_size",
    "lr",
    "weight_decay",
    "grad_clip",
    "patience",
    "augment",
    "seed",
    "limit_per_class",
    "train_limit_per_class",
    "pretrained",
    "time_budget",
    "precision",
    "device",
    "robust_augment",
    "stain_normalise",
    "variant",
    "init_from",
)


def _robust_settings(text: str) -> dict:
    """``scale=0.9:1.9,shift=0.05`` -> RobustAugment's settings with those changed."""
    settings = RobustAugment().to_dict()
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        key = key.strip()
        if key not in settings or not value:
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected NAME=VALUE with NAME one of {', '.join(settings)}"
            )
        try:
            numbers = [float(v) for v in value.split(":")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: {value!r} is not a number") from None
        if key == "scale":
            if len(numbers) != 2 or not 0 < numbers[0] <= numbers[1]:
                raise argparse.ArgumentTypeError(f"{part!r}: scale is LOW:HIGH, 0 < LOW <= HIGH")
            settings[key] = numbers
        elif len(numbers) != 1 or numbers[0] < 0:
            raise argparse.ArgumentTypeError(f"{part!r}: {key} is one number >= 0")
        else:
            settings[key] = numbers[0]
    return settings


def _add_training_args(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``sweep``; unset ones fall back to the model's recipe,
    then to TrainConfig's defaults (epochs 30, batch 128, lr 2e-3, weight decay 0.05...)."""
    p.add_argument("--epochs", type=int, default=None, help="default 30")
    p.add_argument("--batch-size", type=int, default=None, help="default 128")
    p.add_argument("--lr", type=float, default=None, help="default: the model's, else 2e-3")
    p.add_argument("--weight-decay", type=float, default=None, help="default 0.05 (AdamW)")
    p.add_argument("--grad-clip", type=float, default=None, help="max gradient norm (none)")
    p.add_argument("--patience", type=int, default=None, help="early stopping, in epochs (8)")
    p.add_argument("--seed", type=int, default=None, help="default 0")
    p.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    p.add_argument(
        "--robust-augment",
        nargs="?",
        type=_robust_settings,
        const=RobustAugment().to_dict(),
        default=None,
        metavar="SETTINGS",
        help="stain and scale robustness: random scale, shift, any angle, stain (HED), hue, "
        "saturation and resolution jitter instead of flips and turns (#16); optionally "
        "changed, e.g. 'scale=0.9:1.9,shift=0.05' (defaults: "
        + ",".join(
            f"{k}={':'.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in RobustAugment().to_dict().items()
        )
        + ")",
    )
    p.add_argument(
        "--stain-normalise",
        choices=["reinhard"],
        default=None,
        help="Reinhard colour transfer to the training cells' statistics, in training and at "
        "inference (stored in the checkpoint's preprocessing)",
    )
    p.add_argument(
        "--variant",
        default=None,
        help="name the checkpoint <model>-<variant> beside the plain one (default with the two "
        "options above: robust, reinhard or robust-reinhard)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CHECKPOINT",
        help="fine-tune: start from the weights of this checkpoint of the same model, dataset "
        "and size (e.g. --init-from inception_eff3 for a robust variant of the plain run), or "
        "of another dataset's as <dataset>-<size>/<name> (e.g. pbc-64/vgg16): every layer "
        "but the output layer",
    )
    p.add_argument("--limit-per-class", type=int, default=None, help="small subsets for tests")
    p.add_argument(
        "--train-subset",
        dest="train_limit_per_class",
        type=int,
        default=None,
        help="at most N training images per class (a CPU-budget run; val and test stay whole)",
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        default=None,
        help="start from ImageNet weights (online, or $BLOODVIZ_PRETRAINED_DIR); never silently",
    )
    p.add_argument(
        "--time-budget",
        default=None,
        help="e.g. 45m or 2h: plan the epochs (at most --epochs) from the first steps' speed "
        "so that the learning-rate schedule ends when the budget is spent",
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default=None,
        help="auto: on a GPU bf16/fp16; on a CPU whichever of fp32 and bf16 a short probe of "
        "the model's training steps finds faster",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--fresh", action="store_true", help="discard a partial run instead of resuming")


def _training_settings(args) -> dict:
    return {name: getattr(args, name) for name in TRAINING_SETTINGS}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bloodviz", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model and write its checkpoint")
    p.add_argument("--model", required=True)
    _add_data_args(p)
    _add_training_args(p)
    p.add_argument("--checkpoints", type=Path, default=None, help="checkpoint root folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("evaluate", help="metrics from a checkpoint's cached predictions")
    p.add_argument("--model", required=True)
    _add_data_args(p)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--verify", action="store_true", help="re-run the weights on the split")
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser("download", help="fetch a dataset from its official source")
    p.add_argument("name", choices=["bloodmnist", "pbc", "blood-cells", "malaria"])
    p.add_argument("--data-root", default=None)
    p.add_argument("--size", type=int, action="append", help="BloodMNIST size(s); default 64")
    p.add_argument("--url", default=None, help="override the source address (mirrors, tests)")

    p = sub.add_parser("bench", help="measure latency, throughput, memory, FLOPs of checkpoints")
    p.add_argument("--dataset", default=None, help="pbc, pbc-64, blood-cells ... (default all)")
    p.add_argument("--models", nargs="+", default=None)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch/ORT threads (default: all)")
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timing per figure")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--stored", action="store_true", help="show stored results, measure nothing")
    p.add_argument("--json", action="store_true")
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser(
        "bench-train", help="train images/s of models under each precision, in one run"
    )
    p.add_argument("--models", nargs="+", required=True, help="model names, or all")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--classes", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=3, help="timed steps per figure (after 1 warm-up)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("predict", help="classify image files with shipped checkpoints")
    p.add_argument("paths", nargs="+", type=Path)
    p.add_argument("--dataset", required=True)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--model", nargs="+", required=True, help="one or more models (ensembled)")
    p.add_argument(
        "--framing",
        choices=["field", "full", "cell"],
        default=None,
        help="field: find the white cells in a smear field and classify each (one row per "
        "cell, with its box); full: the centre of a microscope field as the dataset cropped "
        "it; cell: an already-cropped cell (default: by size)",
    )
    p.add_argument("--csv", type=Path, default=None, help="write one row per image and model")
    p.add_argument("--pytorch", action="store_true", help="never use ONNX Runtime")
    p.add_argument(
        "--abstain",
        action="store_true",
        help="withhold the prediction of an image the OOD score flags (CSV: abstained)",
    )
    p.add_argument(
        "--recalibrate",
        action="store_true",
        help="images from another microscope: re-estimate each network's batch norm on all "
        f"their cells first, labels unused (AdaBN; needs >= {MIN_CELLS} cells and PyTorch; "
        "models without batch norm are run as trained)",
    )
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser(
        "ensemble",
        help="choose up to N members on validation, report the ensemble on test vs its members",
    )
    p.add_argument("--dataset", required=True, help="a dataset key, e.g. pbc-64")
    p.add_argument("--max-members", type=int, default=5)
    p.add_argument("--models", nargs="+", default=None, help="members to use (default: chosen)")
    p.add_argument("--weighted", action="store_true", help="weights: validation accuracy")
    p.add_argument("--split", default=None, help="reported split (default: the dataset's first)")
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser(
        "export-onnx", help="export checkpoints to ONNX (cached; what the app's uploads run on)"
    )
    p.add_argument("checkpoint", nargs="+", type=Path, help="checkpoint folders")

    p = sub.add_parser(
        "cellbank",
        help="build the shipped bank of evaluated cells from the raw data (or --verify it)",
    )
    p.add_argument("--dataset", nargs="+", default=None, help="default: every shipped one")
    p.add_argument("--size", type=int, default=None, help="default: the largest shipped size")
    p.add_argument("--data-root", default=None)
    p.add_argument(
        "--verify", action="store_true", help="count the predictions the stored cells change"
    )
    p.add_argument("--models", nargs="+", default=None, help="with --verify: only these")
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser(
        "import-onnx",
        help="bring an ONNX classifier: run it on every val and test cell, compare with the zoo",
    )
    p.add_argument("onnx_file", type=Path)
    _add_data_args(p)
    p.add_argument("--name", required=True, help="its name on every page")
    p.add_argument("--mean", type=float, nargs=3, default=None, help="default: ImageNet's")
    p.add_argument("--std", type=float, nargs=3, default=None, help="default: ImageNet's")
    p.add_argument(
        "--outputs",
        choices=["auto", "logits", "probs"],
        default="auto",
        help="what the model returns (auto: rows summing to 1 are probabilities)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an imported checkpoint")
    p.add_argument("--no-bench", action="store_true", help="skip the ONNX Runtime benchmark")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser(
        "import-predictions",
        help="bring predictions made elsewhere (CSV: sample_id, p_<class>...) as a checkpoint",
    )
    p.add_argument("csv_file", type=Path)
    _add_data_args(p)
    p.add_argument("--name", required=True, help="its name on every page")
    p.add_argument("--overwrite", action="store_true", help="replace an imported checkpoint")
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser(
        "ood",
        help="fit each checkpoint's out-of-distribution score and benchmark it (AUROC, FPR95)",
    )
    _add_data_args(p)
    p.add_argument("--models", "--model", nargs="+", required=True, dest="models")
    p.add_argument(
        "--refit", action="store_true", help="fit both parts again even if they are stored"
    )
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser("gradcam", help="save a CAM overlay of one image")
    p.add_argument("image", type=Path)
    p.add_argument("--dataset", required=True)
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--model", required=True)
    p.add_argument("--method", default="gradcam")
    p.add_argument("--target", default=None, help="class name (default: the predicted one)")
    p.add_argument(
        "--framing",
        choices=["field", "full", "cell"],
        default=None,
        help="field: its largest white cell",
    )
    p.add_argument("--out", type=Path, default=Path("overlay.png"))
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser("sweep", help="train several models in turn, skipping up-to-date ones")
    _add_data_args(p)
    p.add_argument("--models", nargs="+", required=True, help="model names, or all")
    _add_training_args(p)
    p.add_argument("--checkpoints", type=Path, default=None)
    p.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="train each model once per seed (0 1 2); a seed other than 0 writes "
        "<model>-seed<N> beside the seed-0 checkpoint",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="run the models as Ray tasks on a local Ray instance with N one-thread workers",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="join an existing Ray cluster (e.g. ray://head:10001 or auto) instead",
    )

    p = sub.add_parser(
        "twins", help="find the BCCD source field of every Kaggle blood-cells image (leakage)"
    )
    p.add_argument("--data-root", default=None)
    p.add_argument("--out", type=Path, default=None, help="sources CSV (default: the shipped one)")
    p.add_argument("--limit", type=int, default=None, help="first N images only (a quick try)")
    p.add_argument("--sheet", type=Path, default=None, help="also draw N matches to this PNG")
    p.add_argument("--sheet-count", type=int, default=12)
    p.add_argument("--reuse", action="store_true", help="read the sources file, do not match")
    p.add_argument(
        "--derive",
        action="store_true",
        help="(re)write test_dedup predictions and metrics into every blood-cells checkpoint",
    )
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser(
        "localise", help="find white cells in smear fields; --bench scores it on BCCD's boxes"
    )
    p.add_argument("images", nargs="*", type=Path, help="field images: print one box a line")
    p.add_argument("--bench", action="store_true", help="recall / precision on BCCD fields")
    p.add_argument("--part", choices=("odd", "even", "all"), default="odd")
    p.add_argument(
        "--classify",
        nargs="+",
        metavar="DATASET:MODEL",
        default=None,
        help="field-level accuracy on the labelled BCCD fields, e.g. blood-cells-64:resnet18 "
        "pbc-64:resnet50",
    )
    p.add_argument("--data-root", default=None)
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser(
        "generalise",
        help="score white-cell models on the other dataset's cells of the shared classes",
    )
    _add_data_args(p)
    p.add_argument(
        "--models", nargs="+", default=["all"], help="model names, or all (those with weights)"
    )
    p.add_argument("--reuse", action="store_true", help="print stored results, run none")
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser("zoo", help="every model: study, parameters, reported vs reproduced")
    p.add_argument("--json", action="store_true")
    p.add_argument("--checkpoints", type=Path, default=None)

    p = sub.add_parser("datasets", help="list datasets found under the data root")
    p.add_argument("--data-root", default=None)

    p = sub.add_parser("checkpoints", help="list shipped checkpoints and their test metrics")
    p.add_argument("--checkpoints", type=Path, default=None)
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command_line = "python -m bloodviz " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        if args.command == "train":
            return _train(args, command_line)
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "download":
            from bloodviz.download import download_command

            return download_command(args.name, args.data_root, args.size, args.url)
        if args.command == "bench":
            return _bench(args, command_line)
        if args.command == "bench-train":
            return _bench_train(args, command_line)
        if args.command == "predict":
            return _predict(args)
        if args.command == "gradcam":
            return _gradcam(args)
        if args.command == "ensemble":
            return _ensemble(args, command_line)
        if args.command == "export-onnx":
            return _export_onnx(args)
        if args.command == "cellbank":
            return _cellbank(args, command_line)
        if args.command == "ood":
            return _ood(args, command_line)
        if args.command in ("import-onnx", "import-predictions"):
            return _import(args, command_line)
        if args.command == "sweep":
            from bloodviz.sweep import sweep

            outcome = sweep(
                args.dataset,
                args.models,
                size=args.size,
                data_root=args.data_root,
                checkpoints=args.checkpoints,
                command=command_line,
                fresh=args.fresh,
                workers=args.workers,
                ray_address=args.ray_address,
                seeds=args.seeds,
                **_training_settings(args),
            )
            for name, what in outcome.items():
                print(f"{name:16s} {what}")
            return 1 if any(w.startswith("failed") for w in outcome.values()) else 0
        if args.command == "twins":
            return _twins(args)
        if args.command == "localise":
            return _localise(args)
        if args.command == "generalise":
            return _generalise(args, command_line)
        if args.command == "zoo":
            from bloodviz.zoo import format_zoo, zoo_rows

            rows = zoo_rows(args.checkpoints)
            print(json.dumps(rows) if args.json else format_zoo(rows))
            return 0
        if args.command == "datasets":
            return _datasets(args)
        if args.command == "checkpoints":
            return _checkpoints(args)
    except KeyboardInterrupt:
        print("\ninterrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    except (DataNotFoundError, KeyError, ValueError, RuntimeError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 1


def _generalise(args, command_line: str) -> int:
    from bloodviz import generalise
    from bloodviz.checkpoints import find_checkpoint, list_checkpoints

    if args.models == ["all"]:
        key = f"{args.dataset}-{args.size or 64}"
        ckpts = [c for c in list_checkpoints(args.checkpoints, key) if c.has_weights]
    else:
        ckpts = [find_checkpoint(args.dataset, m, args.size, args.checkpoints) for m in args.models]
    results = {c.name: generalise.stored(c) if args.reuse else None for c in ckpts}
    to_run = [c for c in ckpts if results[c.name] is None]
    # each image is localised and framed once for all the models (classify batches them)
    localised = generalise.localised_sets(to_run, args.data_root) if to_run else None
    for ckpt in to_run:
        results[ckpt.name] = generalise.cross_dataset(
            ckpt, args.data_root, progress=True, command=command_line, localised=localised
        )
    results = list(results.values())
    print(generalise.format_table([r for r in results if r]))
    return 0


def _localise(args) -> int:
    import numpy as np
    from PIL import Image

    from bloodviz import localise

    for path in args.images:
        boxes = localise.find_white_cells(np.asarray(Image.open(path).convert("RGB")))
        for box in boxes:
            print(f"{path},{box.x0:.0f},{box.y0:.0f},{box.x1:.0f},{box.y1:.0f},{box.nucleus_px}")
        if not boxes:
            print(f"{path}: no white cell found")
    if args.bench:
        result = localise.benchmark(blood_cells_root(args.data_root), args.part)
        print(
            f"BCCD {result['part']} fields: {result['fields']}, white cells "
            f"{result['white_cells']}, boxes found {result['found']}; at IoU {result['iou']}: "
            f"recall {result['recall']:.4f}, precision {result['precision']:.4f}; "
            f"{result['ms_per_field']:.1f} ms a field"
        )
    if args.classify:
        from bloodviz.checkpoints import find_checkpoint

        rows = []
        for spec in args.classify:
            key, _, model = spec.rpartition(":")
            dataset, _, size = key.rpartition("-")
            if not (dataset and size.isdigit() and model):
                raise ValueError(
                    f"--classify takes DATASET-SIZE:MODEL, e.g. pbc-64:resnet18, not {spec!r}"
                )
            ckpt = find_checkpoint(dataset, model, int(size), args.checkpoints)
            rows += localise.field_accuracy([ckpt], blood_cells_root(args.data_root))
        print(localise.format_field_accuracy(rows))
    return 0


def _twins(args) -> int:
    from bloodviz import twins

    out = args.out or twins.SOURCES_PATH
    if args.reuse:
        matches = twins.read_sources(out)
    else:
        matches = twins.match_sources(blood_cells_root(args.data_root), limit=args.limit)
        twins.write_sources(matches, out)
        print(f"wrote {out}")
    print(twins.format_leakage(twins.leakage_table(matches)))
    print(f"test_dedup: {len(twins.dedup_ids(matches))} TEST images whose field has no TRAIN image")
    if args.derive:
        from bloodviz.checkpoints import derive_split_files, list_checkpoints

        twins.read_sources.cache_clear()
        for ckpt in list_checkpoints(args.checkpoints):
            if ckpt.dataset == "blood-cells":
                added = derive_split_files(ckpt)
                test = ckpt.metrics().get("test", {}).get("accuracy", float("nan"))
                dedup = ckpt.metrics().get("test_dedup", {}).get("accuracy", float("nan"))
                print(
                    f"{ckpt.dataset_key:16s} {ckpt.name:22s} {','.join(added) or '-':10s} "
                    f"test {test:.4f}  test_dedup {dedup:.4f}"
                )
    if args.sheet:
        folder = blood_cells_root(args.data_root)
        print(f"sheet: {twins.contact_sheet(matches, folder, args.sheet, count=args.sheet_count)}")
    return 0


def _ood(args, command_line: str) -> int:
    from bloodviz.checkpoints import find_checkpoint
    from bloodviz.ood import STEM, benchmark, fit_detector, load_detector

    for model in args.models:
        ckpt = find_checkpoint(args.dataset, model, args.size, args.checkpoints)
        stored = load_detector(ckpt)
        # a detector fitted before the stem part gets it added (its head part is kept)
        if args.refit or stored is None or STEM not in stored.parts:
            detector = fit_detector(
                ckpt, args.data_root, not args.quiet, command_line, reuse_head=not args.refit
            )
            print(
                f"{ckpt.dataset_key} {ckpt.name}: fitted on {detector.card['fitted_on']['train']} "
                f"training cells in {detector.card['seconds']} s; threshold "
                f"{detector.threshold:.3g} passes {detector.card['pass_rate_on_val']:.0%} of val"
            )
        result = benchmark(ckpt, args.data_root, not args.quiet, command_line)
        print(
            f"{ckpt.dataset_key} {ckpt.name}: test cells vs each set ({result['in_distribution']})"
        )
        parts = [
            p for p in ("head", "stem") if any(f"auroc_{p}" in r for r in result["sets"].values())
        ]
        print(
            f"  {'set':22s} {'n':>5s} {'AUROC maha':>10s} {'AUROC energy':>12s} "
            f"{'FPR95 maha':>10s} {'FPR95 energy':>12s} {'flagged':>8s}"
            + "".join(f" {'AUROC ' + p:>10s}" for p in parts)
        )
        for name, row in result["sets"].items():
            print(
                f"  {name:22s} {row['n']:5d} {row['auroc_mahalanobis']:10.4f} "
                f"{row['auroc_energy']:12.4f} {row['fpr95_mahalanobis']:10.4f} "
                f"{row['fpr95_energy']:12.4f} {row['flagged']:8.1%}"
                + "".join(f" {row.get(f'auroc_{p}', float('nan')):10.4f}" for p in parts)
            )
    return 0


def _import(args, command_line: str) -> int:
    from bloodviz.checkpoints import open_checkpoint
    from bloodviz.imports import import_onnx, import_predictions

    if args.command == "import-predictions":
        path = import_predictions(
            args.csv_file,
            dataset=args.dataset,
            name=args.name,
            size=args.size,
            data_root=args.data_root,
            checkpoints=args.checkpoints,
            overwrite=args.overwrite,
            command=command_line,
        )
    else:
        path = import_onnx(
            args.onnx_file,
            dataset=args.dataset,
            name=args.name,
            size=args.size,
            mean=tuple(args.mean) if args.mean else None,
            std=tuple(args.std) if args.std else None,
            outputs=args.outputs,
            data_root=args.data_root,
            checkpoints=args.checkpoints,
            overwrite=args.overwrite,
            progress=not args.quiet,
            command=command_line,
        )
    ckpt = open_checkpoint(path)
    for split, m in ckpt.metrics().items():
        print(
            f"{ckpt.dataset_key} {ckpt.name} {split}: accuracy {m['accuracy']:.4f} "
            f"(95% CI {m['accuracy_ci95'][0]:.4f}-{m['accuracy_ci95'][1]:.4f}), macro-F1 "
            f"{m['macro_f1']:.4f}, n={m['n']}"
        )
    print(f"wrote {path}")
    if args.command == "import-onnx" and not args.no_bench:
        from bloodviz.benchmark import bench_imported_onnx, format_table, store

        result = bench_imported_onnx(ckpt, command=command_line)
        store(ckpt, result)
        print(format_table([result]))
    return 0


def _train(args, command_line: str) -> int:
    from bloodviz.fit import fit
    from bloodviz.runcard import TrainConfig

    config = TrainConfig.for_model(
        args.model, args.dataset, size=args.size, **_training_settings(args)
    )
    fit(
        config,
        data_root=args.data_root,
        checkpoints=args.checkpoints,
        fresh=args.fresh,
        progress=not args.quiet,
        command=command_line,
    )
    return 0


def _bench_train(args, command_line: str) -> int:
    import torch

    from bloodviz.inference import hardware_info
    from bloodviz.models import list_models
    from bloodviz.speed import bench_train, format_bench_train

    if args.threads:
        torch.set_num_threads(args.threads)
    models = list_models() if args.models == ["all"] else args.models
    rows = bench_train(
        models,
        size=args.size,
        num_classes=args.classes,
        batch_size=args.batch_size,
        steps=args.steps,
    )
    hardware = hardware_info()
    if args.json:
        print(json.dumps({"command": command_line, "hardware": hardware, "rows": rows}))
        return 0
    header = (
        f"{command_line}\n{hardware['cpu']}, {hardware['torch_threads']} thread(s), "
        f"batch {args.batch_size}, {args.size} px, torch {torch.__version__}"
    )
    print(format_bench_train(rows, header))
    return 0


def _evaluate(args) -> int:
    from bloodviz.evaluate import evaluate_checkpoint, format_report

    report = evaluate_checkpoint(
        dataset=args.dataset,
        size=args.size,
        model=args.model,
        split=args.split,
        verify=args.verify,
        data_root=args.data_root,
        checkpoints=args.checkpoints,
    )
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    if args.verify and not report["verify"]["ok"]:
        return 1
    return 0


def _bench(args, command_line: str) -> int:
    from tqdm.auto import tqdm

    from bloodviz import benchmark
    from bloodviz.checkpoints import list_checkpoints

    in_dataset = [
        c
        for c in list_checkpoints(args.checkpoints)
        if args.dataset in (None, c.dataset, c.dataset_key)
    ]
    # a checkpoint by its name (inception_eff3-robust-reinhard); an architecture's name that
    # is no checkpoint's picks every checkpoint of it
    names = {c.name for c in in_dataset}
    chosen = [
        c
        for c in in_dataset
        if not args.models
        or c.name in args.models
        or (c.model in args.models and c.model not in names)
    ]
    if not chosen:
        print("error: no shipped checkpoint matches the selection", file=sys.stderr)
        return 2
    results = []
    if args.stored:
        results = [r for c in chosen if (r := c.bench(args.device))]
    else:
        baseline = benchmark.peak_rss(None, "baseline") if args.device == "cpu" else None
        for ckpt in tqdm(chosen, desc="bench", disable=args.json):
            kind = ckpt.run.imported.get("kind")
            if kind == "predictions":
                print(f"{ckpt.name}: imported predictions, no model to time", file=sys.stderr)
                continue
            if kind == "onnx":
                result = benchmark.bench_imported_onnx(
                    ckpt, args.threads, args.min_time, command=command_line
                )
                benchmark.store(ckpt, result)
                results.append(result)
                continue
            result = benchmark.bench_checkpoint(
                ckpt,
                device=args.device,
                threads=args.threads,
                min_run_time=args.min_time,
                with_onnx=not args.no_onnx,
                baseline_rss=baseline,
                command=command_line,
            )
            benchmark.store(ckpt, result)
            results.append(result)
    if args.json:
        print(json.dumps(results))
    else:
        print(benchmark.format_table(results))
    return 0


def _predict(args) -> int:
    from bloodviz.checkpoints import find_checkpoint
    from bloodviz.predict import Runner, classify, read_paths, recalibrate, result_rows, write_csv

    ckpts = [find_checkpoint(args.dataset, m, args.size, args.checkpoints) for m in args.model]
    files = read_paths(args.paths)
    backend = "pytorch" if args.pytorch or args.recalibrate else "auto"
    runners = {c.name: Runner(c, backend=backend) for c in ckpts}
    if args.recalibrate:
        runners, notes = recalibrate(files, ckpts, runners, framing=args.framing)
        for model, note in notes.items():
            print(f"{model}: {note}")
    results = classify(files, ckpts, runners, framing=args.framing)
    classes = ckpts[0].preprocessing.class_names
    for r in results:
        if r.error:
            print(f"error: {r.error}", file=sys.stderr)
            continue
        box = f", box {r.box}" if r.box else ""
        print(f"{r.name}  (framing: {r.framing}{box})")
        models = dict(r.per_model)
        if len(models) > 1:
            models["ensemble"] = r.ensemble
        for model, probs in models.items():
            top = probs.argsort()[::-1][:3]
            ranked = ", ".join(f"{classes[i]} {probs[i]:.1%}" for i in top)
            backend = f" [{runners[model].backend}]" if model in runners else ""
            flagged = r.flagged(model)
            ood = ""
            if model in r.ood:
                score, threshold = r.ood[model]
                ood = f" | OOD score {score:.3g} ({'FLAGGED, over' if flagged else 'under'}"
                ood += f" {threshold:.3g})"
            withheld = args.abstain and bool(flagged)
            print(f"  {model:14s}{backend}: {'abstained; ' if withheld else ''}{ranked}{ood}")
            for note in r.warnings.get(model, []):
                print(f"    warning: {note}")
    if args.csv:
        write_csv(args.csv, result_rows(results, classes, abstain=args.abstain), classes)
        print(f"wrote {args.csv}")
    return 1 if any(r.error for r in results) else 0


def _cellbank(args, command_line: str) -> int:
    from bloodviz.cellbank import BANK_ROOT, build_bank, verify_bank
    from bloodviz.checkpoints import list_checkpoints

    ckpts = list_checkpoints(args.checkpoints)
    datasets = args.dataset or sorted({c.dataset for c in ckpts})
    if args.verify:
        chosen = [
            c
            for c in ckpts
            if c.dataset in datasets and (args.models is None or c.model in args.models)
        ]
        rows = verify_bank(chosen)
        for r in rows:
            print(
                f"{r['dataset']:16s} {r['model']:20s} {r['split']:12s} {r['changed']:4d} of "
                f"{r['n']:5d} predictions changed ({r['agreement']:.2%} agree)"
            )
        from bloodviz.inference import hardware_info, versions

        record = {
            "command": command_line,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "hardware": hardware_info(),
            "versions": versions(),
            "rows": rows,
        }
        out = BANK_ROOT / "verify.json"
        # rows of checkpoints not verified now are kept, each with the command that made it
        measured = {(r["dataset"], r["model"], r["split"]) for r in rows}
        if out.exists():
            earlier = json.loads(out.read_text())
            kept = [
                {**r, "command": r.get("command", earlier.get("command"))}
                for r in earlier.get("rows", [])
                if (r["dataset"], r["model"], r["split"]) not in measured
            ]
            record["rows"] = kept + [{**r, "command": command_line} for r in rows]
        out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {out}")
        return 0
    for name in datasets:
        sizes = [c.size for c in ckpts if c.dataset == name]
        size = args.size or max(sizes, default=64)
        path = build_bank(name, size, data_root=args.data_root)
        print(f"{name}: {size} px cells -> {path} ({path.stat().st_size / 2**20:.1f} MB)")
    return 0


def _ensemble(args, command_line: str) -> int:
    from bloodviz.checkpoints import list_checkpoints
    from bloodviz.compare import align, mcnemar
    from bloodviz.ensemble import choose_members, ensemble_predictions
    from bloodviz.metrics import classification_summary

    ckpts = list_checkpoints(args.checkpoints, dataset_key=args.dataset)
    if not ckpts:
        raise ValueError(f"no checkpoints for {args.dataset}")
    if args.models:
        by_name = {c.name: c for c in ckpts}
        unknown = [m for m in args.models if m not in by_name]
        if unknown:
            raise ValueError(f"no checkpoint {', '.join(unknown)} for {args.dataset}")
        members = [by_name[m] for m in args.models]
        how = "as given"
    else:
        members = choose_members(ckpts, max_members=args.max_members)
        how = f"chosen greedily on validation accuracy among {len(ckpts)} checkpoints"
    split = args.split or members[0].default_split
    # the best member is the one best on validation: picking it on test would flatter it
    best = max(members, key=lambda m: m.metrics()["val"]["accuracy"])
    print(f"{command_line}\n{args.dataset}: members {how}: {', '.join(m.name for m in members)}")
    print(f"reported on {split}; best member on validation: {best.name}\n")
    print(f"{'model':44s} {'val acc':>8s} {split + ' acc':>10s} {'95% CI':>17s} {'macro-F1':>9s}")
    ens = ensemble_predictions(members, split, weighted=args.weighted)
    rows = [(m.name, m.metrics()["val"]["accuracy"], m.predictions(split)) for m in members]
    val_ens = ensemble_predictions(members, "val", weighted=args.weighted)
    val_acc = float((val_ens.predicted == val_ens.labels).mean())
    kind = "weighted ensemble" if args.weighted else "ensemble"
    rows.append((f"{kind} of the {len(members)} above", val_acc, ens))
    for name, val, preds in rows:
        m = classification_summary(preds.labels, preds.probs, preds.class_names)
        lo, hi = m["accuracy_ci95"]
        print(
            f"{name:44s} {val:8.4f} {m['accuracy']:10.4f} {f'{lo:.4f}-{hi:.4f}':>17s} "
            f"{m['macro_f1']:9.4f}"
        )
    best_preds, ens = align(best.predictions(split), ens)
    test = mcnemar(ens.labels, best_preds.predicted, ens.predicted)
    print(
        f"\nensemble vs {best.name} on the {test['n']} shared {split} cells: only the ensemble "
        f"right {test['only_b_right']}, only {best.name} right {test['only_a_right']}; McNemar "
        f"exact p = {test['p_value']:.3g}"
    )
    return 0


def _export_onnx(args) -> int:
    from bloodviz.checkpoints import open_checkpoint
    from bloodviz.inference import export_onnx

    for folder in args.checkpoint:
        ckpt = open_checkpoint(folder)
        print(f"{ckpt.dataset_key}/{ckpt.name}: {export_onnx(ckpt)}")
    return 0


def _gradcam(args) -> int:
    from PIL import Image

    from bloodviz.checkpoints import find_checkpoint
    from bloodviz.explain import Explainer
    from bloodviz.predict import default_framing, read_image
    from bloodviz.preprocess import upscale

    ckpt = find_checkpoint(args.dataset, args.model, args.size, args.checkpoints)
    image = read_image(args.image.read_bytes(), str(args.image))
    framing = args.framing or default_framing(image, ckpt)
    if framing == "field":
        from bloodviz.localise import CELL_SHARE, crop_cell, find_white_cells
        from bloodviz.preprocess import to_rgb

        if ckpt.dataset not in CELL_SHARE:
            raise ValueError(
                f"field framing finds white cells; {ckpt.dataset_key} models classify others"
            )
        rgb = np.asarray(to_rgb(image))
        boxes = find_white_cells(rgb)
        if not boxes:
            raise ValueError(f"{args.image}: no white cell found in the field")
        print(
            f"{args.image}: the largest of {len(boxes)} white cell(s), box "
            f"{tuple(round(float(v)) for v in boxes[0].corners)}"
        )
        image = Image.fromarray(crop_cell(rgb, boxes[0], CELL_SHARE[ckpt.dataset]))
        framing = "cell"
    cell = ckpt.preprocessing.prepare(image, framing)
    classes = ckpt.preprocessing.class_names
    if args.target is not None and args.target not in classes:
        raise ValueError(f"--target must be one of {', '.join(classes)}")
    target = classes.index(args.target) if args.target else None
    explainer = Explainer.from_checkpoint(ckpt)
    result = explainer.explain(cell, args.method, target, faithfulness=True)
    side = max(256, ckpt.size * 4)
    panel = np.concatenate([upscale(cell, side), upscale(result.overlay, side)], axis=1)
    Image.fromarray(panel).save(args.out)
    f = result.faithfulness
    print(
        f"{args.image}: predicted {classes[int(result.probs.argmax())]} "
        f"({result.probs.max():.1%}); {args.method} for {classes[result.target]} in "
        f"{result.seconds * 1000:.0f} ms; ROAD MoRF {f['road_morf']:+.3f} LeRF "
        f"{f['road_lerf']:+.3f} score {f['road_score']:+.3f}; wrote {args.out}"
    )
    return 0


def _datasets(args) -> int:
    from bloodviz.data import DATASETS, get_dataset

    for name in DATASETS:
        try:
            ds = get_dataset(name, data_root=args.data_root)
            counts = {s: len(ds.sample_ids(s)) for s in ds.splits}
            print(f"{name:12s} {ds.folder}  " + "  ".join(f"{s}={n}" for s, n in counts.items()))
        except (DataNotFoundError, ValueError) as exc:
            print(f"{name:12s} not available: {exc}")
    return 0


def _checkpoints(args) -> int:
    from bloodviz.checkpoints import list_checkpoints

    rows = []
    for ckpt in list_checkpoints(args.checkpoints):
        for split, m in ckpt.eval_metrics().items():
            rows.append(
                {
                    "dataset": ckpt.dataset_key,
                    "model": ckpt.name,
                    "split": split,
                    "accuracy": m["accuracy"],
                    "macro_f1": m["macro_f1"],
                    "n": m["n"],
                }
            )
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(
                f"{r['dataset']:16s} {r['model']:30s} {r['split']:12s} "
                f"acc {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  n={r['n']}"
            )
        if not rows:
            print("no checkpoints yet: python -m bloodviz train --model resnet18 --dataset pbc")
    return 0
