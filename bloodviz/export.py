"""A slide export: the current view as one self-contained HTML file, and a zip for slide decks.

The HTML opens offline in any browser: plotly.js is inlined once, images are data URIs, and its
first lines say what it shows (dataset, split, models) and where every figure came from. The zip
adds the leaderboard as CSV, the Grad-CAM grid as PNG and each figure as SVG and PNG where
plotly's static export (kaleido, which drives a Chrome or Chromium) works on the machine; where
it does not, the zip says so and each figure in the HTML still exports from its toolbar.
"""

from __future__ import annotations

import base64
import html
import io
import zipfile
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from bloodviz.checkpoints import Checkpoint
from bloodviz.compare import quality_band
from bloodviz.plots import confusion_heatmap, per_class_bars, tradeoff_scatter

TABLE_COLUMNS = {
    "name": "model",
    "family": "family",
    "study": "study",
    "accuracy": "accuracy",
    "accuracy_lo": "acc 95% low",
    "accuracy_hi": "acc 95% high",
    "macro_f1": "macro F1",
    "latency_ms": "ms / image",
    "parameters": "parameters",
    "mflops": "MFLOPs",
    "trained_on": "trained on",
}


def report_figures(
    ckpts: Sequence[Checkpoint],
    board: pd.DataFrame,
    split: str,
    *,
    cost: str = "latency_ms",
    quality: str = "accuracy",
) -> dict[str, go.Figure]:
    """The figures a slide deck wants: the trade-off, per-class F1, one confusion matrix each."""
    figures = {}
    if board[cost].notna().any():
        figures["tradeoff"] = tradeoff_scatter(
            board, cost, quality, quality_range=quality_band(board[quality])
        )
    evaluated = [c for c in ckpts if split in c.metrics()]
    figures["per-class-f1"] = per_class_bars(
        {c.name: c.metrics()[split]["per_class"] for c in evaluated}, "f1"
    )
    for ckpt in evaluated:
        metrics = ckpt.metrics()[split]
        figure = confusion_heatmap(np.asarray(metrics["confusion_matrix"]), metrics["class_names"])
        figure.update_layout(title=f"Confusion matrix: {ckpt.name} on {split}")
        figures[f"confusion-{ckpt.name}"] = figure
    return figures


def cam_grid(
    ckpts: Sequence[Checkpoint], cell: np.ndarray, method: str = "gradcam", side: int = 192
) -> np.ndarray:
    """One row: the cell, then each model's map on it (imports torch)."""
    from bloodviz.explain import Explainer
    from bloodviz.preprocess import upscale

    tiles = [upscale(cell, side)]
    for ckpt in ckpts:
        if ckpt.has_weights:
            explained = Explainer.from_checkpoint(ckpt).explain(cell, method)
            tiles.append(upscale(explained.overlay, side))
    return np.concatenate(tiles, axis=1)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "PNG")
    return buffer.getvalue()


def render_html(
    *,
    title: str,
    header: Sequence[str],
    board: pd.DataFrame,
    figures: dict[str, go.Figure],
    images: dict[str, tuple[np.ndarray, str]] | None = None,
) -> str:
    """The self-contained page: ``header`` lines first, then the table, figures and images
    (name -> (uint8 image, caption))."""
    table = board[[c for c in TABLE_COLUMNS if c in board]].rename(columns=TABLE_COLUMNS)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
        "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#f4f4f4}td:first-child{text-align:left}"
        ".meta{color:#444;font-size:14px;line-height:1.5}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<div class='meta'>" + "<br>".join(html.escape(line) for line in header) + "</div>",
        "<h2>Leaderboard</h2>",
        table.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="-", border=0),
    ]
    first = True
    for name, figure in figures.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        # plotly.js once, inline: the file must open offline, with no CDN
        parts.append(figure.to_html(full_html=False, include_plotlyjs=first, div_id=name))
        first = False
    for name, (image, caption) in (images or {}).items():
        data = base64.b64encode(_png(image)).decode()
        parts.append(f"<h2>{html.escape(name)}</h2><p class='meta'>{html.escape(caption)}</p>")
        parts.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>")
    return "\n".join(parts)


def static_image(figure: go.Figure, fmt: str) -> bytes | None:
    """The figure as SVG or PNG through kaleido, or None where it cannot run here."""
    try:
        return figure.to_image(format=fmt, width=1100, height=600)
    except Exception:  # kaleido missing, or no Chrome/Chromium for it: the caller says so
        return None


def render_zip(
    page: str,
    board: pd.DataFrame,
    figures: dict[str, go.Figure],
    images: dict[str, tuple[np.ndarray, str]] | None = None,
    *,
    static: bool = True,
) -> bytes:
    """report.html, leaderboard.csv, figures/ (SVG + PNG where possible) and images/ (PNG)."""
    buffer = io.BytesIO()
    missing = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("report.html", page)
        archive.writestr("leaderboard.csv", board.to_csv(index=False))
        for name, figure in figures.items():
            archive.writestr(f"figures/{name}.json", figure.to_json())
            for fmt in ("svg", "png") if static else ():
                data = static_image(figure, fmt)
                if data is None:
                    missing.append(f"{name}.{fmt}")
                else:
                    archive.writestr(f"figures/{name}.{fmt}", data)
        for name, (image, _) in (images or {}).items():
            archive.writestr(f"images/{name}.png", _png(image))
        if missing or not static:
            archive.writestr(
                "figures/README.txt",
                "Static SVG/PNG export needs kaleido and a Chrome or Chromium, not available "
                "where this zip was made. Open report.html and use each figure's camera icon, "
                "or plotly.io.read_json on the .json files.\n",
            )
    return buffer.getvalue()
