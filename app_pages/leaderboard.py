import pandas as pd
import streamlit as st

from bloodviz import ui
from bloodviz.checkpoints import evaluation_splits
from bloodviz.compare import (
    COST_COLUMNS,
    QUALITY_COLUMNS,
    filter_board,
    quality_band,
    seed_summary,
)
from bloodviz.plots import parallel_coordinates, tradeoff_scatter

st.title("Leaderboard")
key, chosen = ui.current_selection()
zoo = ui.dataset_checkpoints(key)
ui.need_models(key, zoo)

c1, c2 = st.columns([3, 2])
only_chosen = c2.toggle(
    "Only the sidebar's models",
    key="lb_chosen",
    bind="query-params",
    help="Off: every model trained for this dataset (the whole zoo), narrowed by the filters.",
)
# the sidebar offers one run per model; its other seeds come along for their spread
picked = {c.replicate_of for c in chosen}
ckpts = [c for c in zoo if c.replicate_of in picked] if only_chosen else zoo
ui.need_models(key, ckpts)
splits = evaluation_splits({s for c in ckpts for s in c.splits})
if not splits:
    st.info("The chosen checkpoints have predictions for no split.")
    st.stop()
with c1:
    split = (
        st.segmented_control(
            "Evaluated on", splits, default=splits[0], key="lb_split", bind="query-params"
        )
        or splits[0]
    )
full_board = ui.leaderboard(ui.paths(ckpts), split)
if full_board.empty:
    st.info(f"No chosen model has predictions for {split}.")
    st.stop()

f1, f2, f3, f4 = st.columns([2, 2, 2, 2])
studies = sorted(full_board["study"].unique())
families = sorted(full_board["family"].unique())
pick_studies = f1.multiselect(
    "Study", studies, key="lb_study", bind="query-params", placeholder="all studies"
)
pick_families = f2.multiselect(
    "Family", families, key="lb_family", bind="query-params", placeholder="all families"
)
min_accuracy = f3.slider(
    "Minimum accuracy", 0.0, 1.0, 0.0, 0.01, key="lb_min_acc", bind="query-params"
)
whole_only = f4.toggle(
    "Whole training split only",
    key="lb_whole",
    bind="query-params",
    help="Leave out CPU-budget runs that trained on a subset of the training images.",
)
seeded = bool((full_board["seeds"] > 1).any())
every_seed = seeded and st.toggle(
    "Every seed as its own row",
    key="lb_seeds",
    bind="query-params",
    help="Off: one row per model (its lowest seed), with the mean ± standard deviation of "
    "accuracy over its seeds in 'acc over seeds'.",
)
# models, not runs: a model trained with several seeds counts once unless each seed is shown
models_in_zoo = len(full_board) if every_seed else int((~full_board["replica"]).sum())
board = filter_board(
    full_board,
    studies=pick_studies or None,
    families=pick_families or None,
    whole_split_only=whole_only,
    min_accuracy=min_accuracy,
    every_seed=every_seed,
)
e1, e2 = st.columns([2, 2])
with_ensemble = e1.toggle(
    "Add the ensemble of the sidebar's models",
    key="lb_ensemble",
    bind="query-params",
    help="Their probabilities averaged, as one more row; its cost is the members' added up "
    "(each image runs through all of them). `python -m bloodviz ensemble` chooses members on "
    "validation predictions.",
)
weighted = e2.toggle("Weighted by validation accuracy", key="lb_weighted", bind="query-params")
added = ""
if with_ensemble:
    members = [c for c in chosen if split in c.splits]
    if len(members) >= 2:
        row = ui.ensemble_row(ui.paths(members), split, weighted)
        board = pd.concat([board, pd.DataFrame([row])], ignore_index=True).sort_values(
            "accuracy", ascending=False, ignore_index=True
        )
        added = f" and the ensemble of the sidebar's {len(members)}"
    else:
        st.info("Choose at least two models with predictions for this split in the sidebar.")
if board.empty:
    st.info(f"No model passes these filters ({models_in_zoo} before filtering).")
    st.stop()
st.caption(
    f"{len(board) - bool(added)} of {models_in_zoo} model(s){added} on **{key} / {split}**. "
    "Accuracy and macro-F1 carry 95% bootstrap intervals over the test cells; latency, "
    "throughput and memory come from each checkpoint's `bench-cpu.json` (`python -m bloodviz "
    "bench`), measured on the machine named there."
    + (
        " 'acc over seeds': the mean ± standard deviation over the seeds a model was trained "
        "with (`sweep --seeds 0 1 2`); its row shows the lowest seed."
        if seeded
        else ""
    )
)

shown = board.assign(
    accuracy_ci=board.apply(lambda r: f"{r.accuracy_lo:.3f}–{r.accuracy_hi:.3f}", axis=1),
    macro_f1_ci=board.apply(lambda r: f"{r.macro_f1_lo:.3f}–{r.macro_f1_hi:.3f}", axis=1),
    over_seeds=board.apply(seed_summary, axis=1),
)
# key columns first: at 1280 px the model, its accuracy, F1 and cost show without scrolling
columns = [
    "name",
    "accuracy",
    "accuracy_ci",
    *(["over_seeds"] if seeded else []),
    "macro_f1",
    "latency_ms",
    "parameters",
    "family",
    "study",
    "macro_f1_ci",
    "auc",
    "ece",
    "throughput_ips",
    "mflops",
    "file_mb",
    "memory_mb",
    "pretrained",
    "epochs",
    "train_images",
    "trained_on",
    "weights",
]
if "sensitivity" in shown:  # a two-class screen (malaria): what a screen is judged by
    columns[4:4] = ["sensitivity", "specificity"]
number = st.column_config.NumberColumn
st.dataframe(
    shown[columns],
    hide_index=True,
    width="stretch",
    column_config={
        "name": st.column_config.TextColumn("model", pinned=True),
        "accuracy": number("accuracy", format="%.4f"),
        "accuracy_ci": "acc 95% CI",
        "over_seeds": st.column_config.TextColumn(
            "acc over seeds",
            help="mean ± sample standard deviation of the accuracy of its seeds, on this split",
        ),
        "macro_f1": number("macro F1", format="%.4f"),
        "macro_f1_ci": "F1 95% CI",
        "auc": number("AUC", format="%.4f"),
        "sensitivity": number("sensitivity", format="%.4f", help="first class as positive"),
        "specificity": number("specificity", format="%.4f"),
        "ece": number("ECE", format="%.4f"),
        "latency_ms": number("ms / image", format="%.2f"),
        "throughput_ips": number("img/s (b64)", format="%.0f"),
        "parameters": number("params", format="localized"),
        "mflops": number("MFLOPs", format="%.1f"),
        "file_mb": number("file MB", format="%.1f"),
        "memory_mb": number("RAM MB", format="%.0f"),
        "train_images": number("train images", format="localized"),
    },
)
ui.table_download(shown[columns], f"bloodviz-leaderboard-{key}-{split}.csv")
missing = board.loc[~board["benchmarked"], "model"].tolist()
if missing:
    st.caption(
        f"Not benchmarked yet: {', '.join(missing)}. Run "
        f"`python -m bloodviz bench --dataset {key} --models {' '.join(missing)}`."
    )

st.subheader("Trade-offs")
c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
quality = c1.selectbox(
    "Quality",
    ["accuracy", "macro_f1"],
    format_func=QUALITY_COLUMNS.get,
    key="lb_quality",
    bind="query-params",
)
cost = c2.selectbox(
    "Cost",
    list(COST_COLUMNS),
    format_func=lambda c: COST_COLUMNS[c][0],
    key="lb_cost",
    bind="query-params",
)
log_x = c3.toggle("Log x axis", value=True, key="lb_log")
full_range = c4.toggle(
    "Full range",
    key="lb_full",
    bind="query-params",
    help="Off: the quality axis spans the band where the models differ.",
)
labelled = st.multiselect(
    "Label these too (the Pareto front is always labelled)",
    board["model"].tolist(),
    key="lb_label",
    bind="query-params",
)
if board[cost].notna().any():
    band = None if full_range else quality_band(board[quality])
    ui.chart(
        tradeoff_scatter(board, cost, quality, log_x=log_x, labelled=labelled, quality_range=band),
        key="lb_scatter",
    )
    below = board.loc[board[quality] < band[0], "model"].tolist() if band else []
    st.caption(
        "Dotted line: the Pareto front (no other model is both cheaper and better). Error bars: "
        "95% bootstrap intervals. Hover a point for its card."
        + (
            f" Below the shown band ({band[0]:.3f}), off the plot: {', '.join(below)}; "
            "switch on **Full range** to see them."
            if below
            else ""
        )
    )
else:
    st.info(f"No chosen model has a figure for {COST_COLUMNS[cost][0]} yet.")
# off by default: with a whole zoo its lines tangle, and its WebGL canvas is the slowest
# thing on the page to draw in a browser without a GPU
if len(board) >= 2 and st.toggle(
    "Parallel coordinates (every model across every axis)", key="lb_parcoords"
):
    ui.chart(parallel_coordinates(board), key="lb_parallel")

with st.expander("Out-of-distribution detection", icon=":material/gpp_maybe:"):
    ood = ui.ood_comparison(ui.paths(ckpts))
    if ood.empty:
        st.caption(
            "No chosen model has a benchmarked OOD score yet: `python -m bloodviz ood --dataset "
            f"{key.rpartition('-')[0]} --models resnet18 ...`"
        )
    else:
        st.caption(
            "AUROC of each model's OOD score (Mahalanobis distance of its features), test cells "
            "against each kind of image a model should not trust; 1 = always told apart. The "
            "last column is the energy score's mean, the baseline."
        )
        st.dataframe(
            ood,
            hide_index=True,
            width="stretch",
            column_config={
                c: st.column_config.NumberColumn(format="%.4f")
                for c in ood.columns
                if c not in ("model", "threshold")
            }
            | {"threshold": st.column_config.NumberColumn(format="%.3g")},
        )

with st.expander("Export for slides", icon=":material/slideshow:"):
    st.caption(
        "One self-contained HTML file (opens offline), or a zip with it, the table as CSV and "
        "every figure as SVG and PNG: this view's leaderboard and trade-off plot, then per-class "
        "F1 and a confusion matrix for each of the sidebar's models."
    )
    with_cams = st.toggle(
        "Add a Grad-CAM grid of the sidebar's models on one test cell (loads PyTorch)",
        key="export_cams",
    )
    export = ui.slide_export(
        key, split, board, chosen, cost=cost, quality=quality, with_cams=with_cams
    )
    d1, d2 = st.columns(2)
    d1.download_button(
        "Download HTML report",
        export.html,
        f"bloodviz-{key}-{split}.html",
        "text/html",
        icon=":material/download:",
        on_click="ignore",
    )
    d2.download_button(
        "Download zip (HTML, CSV, SVG, PNG)",
        export.zip,
        f"bloodviz-{key}-{split}.zip",
        "application/zip",
        icon=":material/folder_zip:",
        on_click="ignore",
    )
