"""How fast a model trains here, under each precision: the ``auto`` probe and ``bench-train``.

Measured on this project's CPU (AVX512-BF16, no AMX in use): bf16 autocast is slower than
fp32 + channels_last for most networks (efficientnet_b0 35.6 vs 51.7 img/s), so on a CPU
``--precision auto`` times a few real training steps of the model under both and keeps the
faster, instead of trusting a CPU flag.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# name -> (autocast dtype or None, channels_last)
PRECISIONS = {
    "fp32": (None, False),
    "fp32+cl": (None, True),
    "bf16+cl": (torch.bfloat16, True),
}
# what bloodviz trained with on CPUs with native bf16 before the probe (the baseline)
OLD_CPU_DEFAULT = "bf16+cl"


@dataclass(frozen=True)
class StepSpeed:
    precision: str
    images_per_s: float
    seconds_per_step: float


def train_step_speed(
    model: torch.nn.Module,
    *,
    precision: str,
    size: int,
    num_classes: int,
    batch_size: int = 64,
    steps: int = 3,
    warmup: int = 1,
) -> StepSpeed:
    """Images/s of AdamW training steps of ``model`` on random data (CPU).

    The model's weights and optimizer are a throwaway copy: the caller's model is untouched.
    """
    import copy

    dtype, channels_last = PRECISIONS[precision]
    network = copy.deepcopy(model).train()
    memory = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=memory)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, size, size, generator=generator).contiguous(memory_format=memory)
    y = torch.randint(0, num_classes, (batch_size,), generator=generator)

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = F.cross_entropy(network(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    tick = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - tick) / steps
    return StepSpeed(precision, batch_size / seconds, seconds)


def probe_cpu_precision(
    model: torch.nn.Module, *, size: int, num_classes: int, batch_size: int
) -> tuple[str, dict[str, float]]:
    """The faster of fp32 + channels_last and bf16 autocast for this model on this CPU, and
    the images/s measured for each (the trainer then uses channels_last either way)."""
    measured = {
        name: train_step_speed(
            model,
            precision=name,
            size=size,
            num_classes=num_classes,
            batch_size=min(batch_size, 64),
            steps=2,
        ).images_per_s
        for name in ("fp32+cl", "bf16+cl")
    }
    measured = {k: round(v, 1) for k, v in measured.items()}
    return precision_from_probe(measured), measured


def precision_from_probe(measured: dict[str, float]) -> str:
    """The trainer's precision for what a probe measured: bf16 only where it was faster."""
    return "bf16" if measured and max(measured, key=measured.get) == "bf16+cl" else "fp32"


def bench_train(
    models: list[str],
    *,
    size: int = 64,
    num_classes: int = 8,
    batch_size: int = 64,
    steps: int = 3,
    precisions: tuple[str, ...] = tuple(PRECISIONS),
    progress: bool = True,
) -> list[dict]:
    """Train images/s of each model under each precision, measured in this one run, with the
    ratio of each against :data:`OLD_CPU_DEFAULT`."""
    from tqdm.auto import tqdm

    from bloodviz.models import create_model, model_info

    rows = []
    for name in tqdm(models, desc="bench-train", unit="model", disable=not progress):
        if model_info(name).trainer != "gradient":
            continue
        torch.manual_seed(0)
        model = create_model(name, num_classes=num_classes, in_size=size)
        speeds = {
            p: train_step_speed(
                model,
                precision=p,
                size=size,
                num_classes=num_classes,
                batch_size=batch_size,
                steps=steps,
            ).images_per_s
            for p in precisions
        }
        base = speeds.get(OLD_CPU_DEFAULT)
        rows.append(
            {
                "model": name,
                "images_per_s": {p: round(v, 2) for p, v in speeds.items()},
                "ratio_vs_old_default": {
                    p: round(v / base, 3) if base else None for p, v in speeds.items()
                },
                "fastest": max(speeds, key=speeds.get),
            }
        )
    return rows


def format_bench_train(rows: list[dict], header: str = "") -> str:
    if not rows:
        return "no trainable model given"
    names = list(rows[0]["images_per_s"])
    lines = [header] if header else []
    title = f"{'model':20s} " + " ".join(f"{n:>9s}" for n in names)
    title += "   " + " ".join(f"{'x ' + n:>10s}" for n in names) + "   fastest"
    lines += [title, "-" * len(title)]
    for r in rows:
        speeds = " ".join(f"{r['images_per_s'][n]:9.1f}" for n in names)
        ratios = " ".join(f"{r['ratio_vs_old_default'][n] or 0:10.2f}" for n in names)
        lines.append(f"{r['model']:20s} {speeds}   {ratios}   {r['fastest']}")
    lines.append(
        f"train images/s (AdamW step, random data); 'x P' = speed under P / under "
        f"{OLD_CPU_DEFAULT} (bf16 autocast + channels_last, the old CPU default)"
    )
    return "\n".join(lines)
