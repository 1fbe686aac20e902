"""Plot builders: pure functions from frames and arrays to plotly figures (no Streamlit).

Every figure uses one template and a font readable on a 1280x720 projector; plotly's own
toolbar gives PNG export, and :data:`EXPORT_CONFIG` adds SVG.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from bloodviz.compare import COST_COLUMNS, QUALITY_COLUMNS, Curve, normalise_rows, pareto_front

TEMPLATE = "plotly_white"
FONT = {"size": 15}
PALETTE = px.colors.qualitative.Safe
# Streamlit's plotly_chart config: the toolbar's camera exports SVG as well as PNG
EXPORT_CONFIG = {
    "displaylogo": False,
    "toImageButtonOptions": {"format": "svg", "filename": "bloodviz", "scale": 1},
    "modeBarButtonsToAdd": ["toImage"],
}


def _style(fig: go.Figure, title: str, height: int = 480) -> go.Figure:
    fig.update_layout(
        template=TEMPLATE,
        title={"text": title, "x": 0.01},
        font=FONT,
        height=height,
        margin={"l": 60, "r": 20, "t": 60, "b": 60},
        legend={"title": None},
    )
    return fig


def log_ticks(values: np.ndarray) -> list[float]:
    """1-2-5 steps across the positive ``values`` on a log axis, each labelled in full: plotly's
    own labels between decades read "5 1 2 5 10 2" (0.5 ... 20), puzzling on a projector."""
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        return []
    low, high = positive.min(), positive.max()
    steps = [
        m * 10.0**e
        for e in range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
        for m in (1, 2, 5)
    ]
    return [v for v in steps if low / 2 <= v <= high * 2]


def _short_number(value: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:g}{suffix}"
    return f"{value:g}"


def tradeoff_scatter(
    board: pd.DataFrame,
    cost: str = "latency_ms",
    quality: str = "accuracy",
    log_x: bool | None = None,
    *,
    labelled: Iterable[str] = (),
    quality_range: tuple[float, float] | None = None,
) -> go.Figure:
    """Quality against a cost, coloured by family, with 95% error bars and the Pareto front.

    Only the Pareto front and the models in ``labelled`` carry a text label (every point has a
    hover card): with a whole zoo, labels on every point pile up. ``quality_range`` sets the
    quality axis (e.g. :func:`bloodviz.compare.quality_band`)."""
    label, higher_better, loggable = COST_COLUMNS[cost]
    data = board.dropna(subset=[cost, quality]).copy()
    front = (
        pareto_front(data[cost], data[quality], lower_cost_better=not higher_better)
        if len(data)
        else np.zeros(0, dtype=bool)
    )
    shown = front | data["model"].isin(list(labelled)).to_numpy()
    data["label"] = np.where(shown, data["model"], "")
    # the hover card: (column, format) for what the board has
    hover = [
        ("model", ""),
        ("name", ""),
        ("family", ""),
        ("study", ""),
        ("parameters", ":,"),
        ("latency_ms", ":.2f"),
        ("file_mb", ":.1f"),
        ("pretrained", ""),
        ("epochs", ""),
        (quality, ":.4f"),
    ]
    hover = [(c, f) for c, f in dict(hover).items() if c in data]
    template = (
        "<br>".join(f"{c}=%{{customdata[{i}]{f}}}" for i, (c, f) in enumerate(hover))
        + "<extra></extra>"
    )
    has_error = f"{quality}_hi" in data
    # graph_objects, not plotly.express: px.scatter took 0.6 s for the 36 pbc-64 models (its
    # validation passes), which the leaderboard paid on every rerun
    traces = []
    for i, (family, rows) in enumerate(data.groupby("family", sort=False, dropna=False)):
        error = (
            {
                "error_y": {
                    "type": "data",
                    "array": (rows[f"{quality}_hi"] - rows[quality]).to_numpy(),
                    "arrayminus": (rows[quality] - rows[f"{quality}_lo"]).to_numpy(),
                }
            }
            if has_error
            else {}
        )
        traces.append(
            go.Scatter(
                x=rows[cost].to_numpy(),
                y=rows[quality].to_numpy(),
                mode="markers",
                name=str(family),
                legendgroup=str(family),
                # past the palette's 11 colours, a second symbol keeps families apart
                marker={
                    "size": 12,
                    "color": PALETTE[i % len(PALETTE)],
                    "symbol": ("circle", "diamond", "square")[i // len(PALETTE) % 3],
                },
                customdata=rows[[c for c, _ in hover]].to_numpy(dtype=object),
                hovertemplate=template,
                **error,
            )
        )
    named = data[shown].sort_values(cost)
    if len(named):
        # one text trace, labels alternating above and below along the cost axis: neighbours
        # on the front sit close together, and plotly does not move colliding labels
        traces.append(
            go.Scatter(
                x=named[cost].to_numpy(),
                y=named[quality].to_numpy(),
                text=named["label"].tolist(),
                mode="text",
                textposition=(["top center", "bottom center"] * len(named))[: len(named)],
                textfont={"size": 13, "color": "#222"},
                showlegend=False,
                hoverinfo="skip",
            )
        )
    if len(data):
        frontier = data[front].sort_values(cost)
        traces.append(
            go.Scatter(
                x=frontier[cost].to_numpy(),
                y=frontier[quality].to_numpy(),
                mode="lines",
                line={"color": "#444", "dash": "dot", "width": 2},
                name="Pareto front",
                hoverinfo="skip",
            )
        )
    fig = go.Figure(traces)
    log = loggable if log_x is None else log_x
    fig.update_xaxes(title=label, type="log" if log else "linear")
    if log:
        ticks = log_ticks(board[cost].to_numpy(dtype=float))
        if ticks:
            fig.update_xaxes(tickvals=ticks, ticktext=[_short_number(v) for v in ticks])
    fig.update_yaxes(title=QUALITY_COLUMNS.get(quality, quality))
    if quality_range is not None:
        fig.update_yaxes(range=list(quality_range))
    fig.update_layout(legend={"title": {"text": "family"}})
    return _style(fig, f"{QUALITY_COLUMNS.get(quality, quality)} vs {label}", height=540)


def parallel_coordinates(board: pd.DataFrame, columns: list[str] | None = None) -> go.Figure:
    """One line per model across quality and (log10) cost axes, coloured by accuracy."""
    columns = columns or ["accuracy", "macro_f1", "ece", "latency_ms", "parameters", "mflops"]
    # an axis with a gap would drop that model's line: keep the axes every model has
    columns = [c for c in columns if c in board and board[c].notna().all()]
    dims = []
    for c in columns:
        values = board[c].astype(float)
        loggable = c in COST_COLUMNS and COST_COLUMNS[c][2] and (values > 0).all()
        label = COST_COLUMNS[c][0] if c in COST_COLUMNS else QUALITY_COLUMNS.get(c, c)
        dims.append(
            {
                "label": f"log10 {label}" if loggable else label,
                "values": np.log10(values) if loggable else values,
            }
        )
    fig = go.Figure(
        go.Parcoords(
            line={"color": board["accuracy"], "colorscale": "Viridis", "showscale": True},
            dimensions=dims,
        )
    )
    fig = _style(fig, "All models across every axis (drag an axis to filter)", height=500)
    fig.update_layout(margin={"t": 120})
    return fig


def per_class_bars(per_class: dict[str, dict], metric: str = "f1") -> go.Figure:
    """Per-class ``metric`` for one or more models: {model: metrics['per_class']}."""
    rows = [
        {"model": model, "class": cls, metric: values[metric]}
        for model, classes in per_class.items()
        for cls, values in classes.items()
    ]
    fig = px.bar(
        pd.DataFrame(rows),
        x="class",
        y=metric,
        color="model",
        barmode="group",
        color_discrete_sequence=PALETTE,
    )
    fig.update_yaxes(range=[0, 1.02], title=metric)
    return _style(fig, f"Per-class {metric}")


def probability_bars(probs: dict[str, np.ndarray], class_names) -> go.Figure:
    """One image's class probabilities under each model (and an ensemble): {model: probs}."""
    rows = [
        {"model": model, "class": cls, "probability": float(p)}
        for model, values in probs.items()
        for cls, p in zip(class_names, values)
    ]
    fig = px.bar(
        pd.DataFrame(rows),
        x="probability",
        y="class",
        color="model",
        barmode="group",
        orientation="h",
        range_x=[0, 1],
        color_discrete_sequence=PALETTE,
    )
    return _style(fig, "Class probabilities", height=300)


def confusion_heatmap(
    cm: np.ndarray, class_names: list[str] | tuple[str, ...], normalise: bool = False
) -> go.Figure:
    """Rows are true classes, columns predicted; counts, or rows normalised to recall."""
    values = normalise_rows(cm) if normalise else np.asarray(cm)
    fig = px.imshow(
        values,
        x=list(class_names),
        y=list(class_names),
        text_auto=".2f" if normalise else "d",
        color_continuous_scale="Blues",
        aspect="auto",
        labels={"x": "predicted", "y": "true", "color": "share" if normalise else "cells"},
    )
    fig.update_xaxes(side="bottom", tickangle=-30)
    # heatmaps emit no selection events: an invisible square marker on every cell makes a
    # click on the cell select (true, predicted) for the page
    names = list(class_names)
    k = len(names)
    counts = np.asarray(cm)
    fig.add_trace(
        go.Scatter(
            x=[names[j] for i in range(k) for j in range(k)],
            y=[names[i] for i in range(k) for j in range(k)],
            mode="markers",
            marker={"symbol": "square", "size": max(12, 380 // k), "opacity": 0},
            customdata=[counts[i, j] for i in range(k) for j in range(k)],
            hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata} cells"
            "<br>click to list them<extra></extra>",
            showlegend=False,
            name="cells",
        )
    )
    return _style(fig, "Confusion matrix" + (" (row-normalised)" if normalise else ""), 560)


def curves_figure(curves: list[Curve], kind: str) -> go.Figure:
    """ROC (``kind='roc'``) or precision-recall (``'pr'``) curves, one per class."""
    fig = go.Figure()
    for i, curve in enumerate(curves):
        label = "AUC" if kind == "roc" else "AP"
        fig.add_trace(
            go.Scatter(
                x=curve.x,
                y=curve.y,
                mode="lines",
                name=f"{curve.name} ({label} {curve.area:.3f})",
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
            )
        )
    if kind == "roc":
        fig.add_trace(
            go.Scatter(
                x=[0, 1],
                y=[0, 1],
                mode="lines",
                name="chance",
                line={"dash": "dot", "color": "#999"},
            )
        )
        fig.update_xaxes(title="false positive rate")
        fig.update_yaxes(title="true positive rate")
        title = "ROC curves, one class vs rest"
    else:
        fig.update_xaxes(title="recall")
        fig.update_yaxes(title="precision")
        title = "Precision-recall curves, one class vs rest"
    fig.update_xaxes(range=[0, 1])
    fig.update_yaxes(range=[0, 1.02])
    return _style(fig, title)


def roc_operating_point(
    fpr: np.ndarray,
    tpr: np.ndarray,
    auc: float,
    point: dict,
    positive_name: str,
    reference: dict | None = None,
) -> go.Figure:
    """One two-class ROC curve with the operating point of the chosen threshold (``point``:
    :func:`bloodviz.metrics.screening_at_threshold`'s dict) and optionally a second point (the
    threshold chosen on validation)."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=fpr,
            y=tpr,
            mode="lines",
            name=f"{positive_name} (AUC {auc:.4f})",
            line={"color": PALETTE[0], "width": 2},
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[0, 1], y=[0, 1], mode="lines", name="chance", line={"dash": "dot", "color": "#999"}
        )
    )
    for marker, color, label in ((point, PALETTE[1], "chosen"), (reference, PALETTE[2], "val")):
        if marker is None:
            continue
        fig.add_trace(
            go.Scatter(
                x=[1 - marker["specificity"]],
                y=[marker["sensitivity"]],
                mode="markers",
                marker={"size": 13, "color": color, "line": {"width": 1, "color": "white"}},
                name=f"{label} threshold {marker['threshold']:.2f}: sensitivity "
                f"{marker['sensitivity']:.3f}, specificity {marker['specificity']:.3f}",
            )
        )
    fig.update_xaxes(title="1 - specificity (false positive rate)", range=[0, 1])
    fig.update_yaxes(title="sensitivity (true positive rate)", range=[0, 1.02])
    return _style(fig, f"ROC, {positive_name} as positive, with the operating point")


def leakage_bars(table: pd.DataFrame) -> go.Figure:
    """Accuracy of each model as a random split by cell reports it (seen patients) beside
    what it scores on new patients, with 95% intervals: :func:`bloodviz.compare.split_leakage`."""
    series = (
        ("random split, its own test (seen patients)", "seen_ci"),
        ("random split, new patients", "new_ci"),
        ("patient split, new patients", "honest_ci"),
    )
    return accuracy_bars(
        table, series, "Patient leakage: a random split by cell against new patients"
    )


def twin_bars(table: pd.DataFrame) -> go.Figure:
    """Each blood-cells model on Kaggle's TEST, on its twin-free part and on TEST_SIMPLE, with
    95% intervals: :func:`bloodviz.compare.twin_effect`."""
    # where source cells are known, the twin-free bar's interval resamples them, not images
    dedup_ci = "dedup_ci_by_source" if "dedup_ci_by_source" in table.columns else "dedup_ci"
    series = (
        ("test (all)", "test_ci"),
        ("test_dedup (no TRAIN twin)", dedup_ci),
        ("test_simple", "simple_ci"),
    )
    present = tuple(s for s in series if s[0] in table.columns)
    return accuracy_bars(table, present, "Kaggle twins: TEST against its twin-free part")


def accuracy_bars(
    table: pd.DataFrame, series: tuple[tuple[str, str], ...], title: str
) -> go.Figure:
    """Grouped bars, one group a model, one bar a (value column, interval column) pair."""
    colors = (PALETTE[3], PALETTE[1], PALETTE[0], PALETTE[2])
    fig = go.Figure()
    for i, (column, ci) in enumerate(series):
        values = table[column].to_numpy(dtype=float)
        lo = np.array([c[0] if c is not None else np.nan for c in table[ci]], dtype=float)
        hi = np.array([c[1] if c is not None else np.nan for c in table[ci]], dtype=float)
        fig.add_trace(
            go.Bar(
                x=table["model"],
                y=values,
                name=column,
                marker_color=colors[i % len(colors)],
                error_y={"type": "data", "array": hi - values, "arrayminus": values - lo},
                text=[f"{v:.3f}" for v in values],
                textposition="outside",
                offsetgroup=i,
            )
        )
    low = float(np.nanmin([table[c].min() for c, _ in series])) if len(table) else 0.0
    fig.update_yaxes(title="accuracy", range=[max(0.0, low - 0.05), 1.0])
    fig.update_layout(barmode="group")
    return _style(fig, title)


def risk_coverage_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> go.Figure:
    """Accuracy of the kept cells against the share kept, one line per trust signal."""
    fig = go.Figure()
    for i, (name, (coverage, accuracy)) in enumerate(curves.items()):
        fig.add_trace(
            go.Scatter(
                x=coverage,
                y=accuracy,
                mode="lines",
                name=name,
                line={"color": PALETTE[i % len(PALETTE)], "width": 2},
            )
        )
    fig.update_xaxes(title="coverage (share of cells kept)", range=[0, 1])
    fig.update_yaxes(title="accuracy of the kept cells")
    return _style(fig, "Risk-coverage: set aside the least trusted cells")


def reliability_diagram(bins: dict[str, np.ndarray], ece: float) -> go.Figure:
    """Accuracy per confidence bin against the diagonal, with bin counts as hover."""
    centres = (bins["edges"][:-1] + bins["edges"][1:]) / 2
    width = float(bins["edges"][1] - bins["edges"][0])
    used = bins["counts"] > 0
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=centres[used],
            y=bins["accuracy"][used],
            width=width * 0.95,
            name="accuracy in bin",
            marker_color=PALETTE[0],
            customdata=np.stack([bins["counts"][used], bins["confidence"][used]], axis=1),
            hovertemplate="confidence %{customdata[1]:.3f}<br>accuracy %{y:.3f}"
            "<br>%{customdata[0]} cells<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(
            x=[0, 1],
            y=[0, 1],
            mode="lines",
            name="perfect calibration",
            line={"dash": "dot", "color": "#444"},
        )
    )
    fig.update_xaxes(title="confidence (top class)", range=[0, 1])
    fig.update_yaxes(title="accuracy", range=[0, 1.02])
    return _style(fig, f"Reliability diagram (ECE {ece:.4f})")


def training_curves(history: pd.DataFrame) -> go.Figure:
    """Loss and accuracy per epoch, train and validation."""
    long = []
    for column, (what, split) in {
        "train_loss": ("loss", "train"),
        "val_loss": ("loss", "validation"),
        "train_accuracy": ("accuracy", "train"),
        "val_accuracy": ("accuracy", "validation"),
    }.items():
        if column in history:
            long.append(
                pd.DataFrame(
                    {
                        "epoch": history["epoch"],
                        "value": history[column],
                        "metric": what,
                        "split": split,
                    }
                )
            )
    frame = (
        pd.concat(long, ignore_index=True)
        if long
        else pd.DataFrame(columns=["epoch", "value", "metric", "split"])
    )
    fig = px.line(
        frame,
        x="epoch",
        y="value",
        color="split",
        facet_col="metric",
        markers=True,
        color_discrete_sequence=PALETTE,
    )
    fig.update_yaxes(matches=None, title=None)
    fig.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return _style(fig, "Training history")


def delta_bars(deltas: pd.DataFrame, name_a: str, name_b: str, metric: str = "f1") -> go.Figure:
    """Per-class B − A, green where B is better."""
    colours = np.where(deltas["delta"] >= 0, "#2a9d8f", "#e76f51")
    fig = go.Figure(
        go.Bar(
            x=deltas["class"],
            y=deltas["delta"],
            marker_color=colours,
            customdata=deltas[["a", "b"]].to_numpy(),
            hovertemplate=f"{name_a} %{{customdata[0]:.3f}}<br>{name_b} %{{customdata[1]:.3f}}"
            "<br>difference %{y:+.3f}<extra></extra>",
        )
    )
    fig.update_yaxes(title=f"{metric}: {name_b} − {name_a}", zeroline=True)
    return _style(fig, f"Per-class {metric} difference")


def class_balance(counts: dict[str, dict[str, int]]) -> go.Figure:
    """Images per class and split: ``{split: {class: count}}``."""
    rows = [
        {"split": split, "class": cls, "images": n}
        for split, classes in counts.items()
        for cls, n in classes.items()
    ]
    fig = px.bar(
        pd.DataFrame(rows),
        x="class",
        y="images",
        color="split",
        barmode="group",
        color_discrete_sequence=PALETTE,
    )
    return _style(fig, "Class balance per split")


def reported_vs_reproduced(table: pd.DataFrame) -> go.Figure:
    """Each study figure (x) against our figure on the like-for-like split (y)."""
    data = table.dropna(subset=["bloodviz"]).copy()
    fig = px.scatter(
        data,
        x="reported",
        y="bloodviz",
        color="study",
        symbol="like for like" if "like for like" in table else "metric",
        hover_data=["name", "reported on", "bloodviz on", "note"],
        color_discrete_sequence=PALETTE,
    )
    low = float(min(data["reported"].min(), data["bloodviz"].min(), 0)) if len(data) else 0
    fig.add_trace(
        go.Scatter(
            x=[low, 100],
            y=[low, 100],
            mode="lines",
            name="equal",
            line={"dash": "dot", "color": "#444"},
        )
    )
    fig.update_traces(marker={"size": 12}, selector={"mode": "markers"})
    fig.update_xaxes(title="reported by the study (%)")
    fig.update_yaxes(title="reproduced by bloodviz (%)")
    return _style(fig, "Studies vs bloodviz (above the line: we did better)")


def generalisation_bars(rows: pd.DataFrame) -> go.Figure:
    """Balanced accuracy of each model on its own test cells and on the other dataset's, as-is
    and restricted to the shared classes (rows: :func:`bloodviz.generalise.table_rows`)."""
    long = rows.melt(
        id_vars=["model", "evaluated on"],
        value_vars=["balanced (as-is)", "balanced (restricted)"],
        var_name="call",
        value_name="balanced accuracy",
    )
    long["set"] = long["evaluated on"] + ", " + long["call"].str.extract(r"\((.*)\)")[0]
    fig = px.bar(
        long,
        x="model",
        y="balanced accuracy",
        color="set",
        barmode="group",
        color_discrete_sequence=PALETTE,
    )
    fig.add_hline(y=0.25, line_dash="dot", line_color="#888", annotation_text="chance (4 classes)")
    fig.update_yaxes(range=[0, 1.02])
    return _style(fig, "Balanced accuracy on the shared classes: own cells vs the other lab's")
