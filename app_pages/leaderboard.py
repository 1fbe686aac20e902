import streamlit as st

from bloodviz import ui
from bloodviz.checkpoints import evaluation_splits
from bloodviz.compare import COST_COLUMNS, QUALITY_COLUMNS
from bloodviz.plots import parallel_coordinates, tradeoff_scatter

st.title("Leaderboard")
key, ckpts = ui.current_selection()
ui.need_models(key, ckpts)

splits = evaluation_splits({s for c in ckpts for s in c.splits})
if not splits:
    st.info("The chosen checkpoints have predictions for no split.")
    st.stop()
split = st.segmented_control("Evaluated on", splits, default=splits[0], key="lb_split") or splits[0]
board = ui.leaderboard(ui.paths(ckpts), split)
if board.empty:
    st.info(f"No chosen model has predictions for {split}.")
    st.stop()
st.caption(
    f"{len(board)} model(s) on **{key} / {split}**. Accuracy and macro-F1 carry 95% bootstrap "
    "intervals over the test cells; latency, throughput and memory come from each checkpoint's "
    "`bench-cpu.json` (`python -m bloodviz bench`), measured on the machine named there."
)

shown = board.assign(
    accuracy_ci=board.apply(lambda r: f"{r.accuracy_lo:.3f}–{r.accuracy_hi:.3f}", axis=1),
    macro_f1_ci=board.apply(lambda r: f"{r.macro_f1_lo:.3f}–{r.macro_f1_hi:.3f}", axis=1),
)
columns = [
    "name",
    "family",
    "study",
    "accuracy",
    "accuracy_ci",
    "macro_f1",
    "macro_f1_ci",
    "auc",
    "ece",
    "latency_ms",
    "throughput_ips",
    "parameters",
    "mflops",
    "file_mb",
    "memory_mb",
    "pretrained",
    "epochs",
    "train_images",
    "trained_on",
    "weights",
]
number = st.column_config.NumberColumn
st.dataframe(
    shown[columns],
    hide_index=True,
    width="stretch",
    column_config={
        "name": st.column_config.TextColumn("model", pinned=True),
        "accuracy": number("accuracy", format="%.4f"),
        "accuracy_ci": "acc 95% CI",
        "macro_f1": number("macro F1", format="%.4f"),
        "macro_f1_ci": "F1 95% CI",
        "auc": number("AUC", format="%.4f"),
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
c1, c2, c3 = st.columns([2, 2, 1])
quality = c1.selectbox(
    "Quality", ["accuracy", "macro_f1"], format_func=QUALITY_COLUMNS.get, key="lb_quality"
)
cost = c2.selectbox(
    "Cost", list(COST_COLUMNS), format_func=lambda c: COST_COLUMNS[c][0], key="lb_cost"
)
log_x = c3.toggle("Log x axis", value=True, key="lb_log")
if board[cost].notna().any():
    ui.chart(tradeoff_scatter(board, cost, quality, log_x=log_x), key="lb_scatter")
    st.caption(
        "Dotted line: the Pareto front (no other model is both cheaper and better). Error bars: "
        "95% bootstrap intervals. Hover a point for its card."
    )
else:
    st.info(f"No chosen model has a figure for {COST_COLUMNS[cost][0]} yet.")
if len(board) >= 2:
    ui.chart(parallel_coordinates(board), key="lb_parallel")
