import streamlit as st

from bloodviz import ui
from bloodviz.checkpoints import evaluation_splits
from bloodviz.compare import align, disagreements, mcnemar, per_class_deltas
from bloodviz.ensemble import ENSEMBLE_NAME
from bloodviz.plots import delta_bars

st.title("Head-to-head")
key, ckpts = ui.current_selection()
ui.need_models(key, ckpts, at_least=2)

by_name = {c.name: c for c in ui.ranked(ckpts)}
# the chosen models' averaged probabilities, as one more contender (A defaults to the best one)
names = [*by_name, ENSEMBLE_NAME]
c1, c2, c3 = st.columns([2, 2, 1])
# model ids, not display names: the address carries the option's text (?h2h_a=resnet18)
name_a = c1.selectbox("Model A", names, index=0, key="h2h_a", bind="query-params")
name_b = c2.selectbox(
    "Model B", [n for n in names if n != name_a], index=0, key="h2h_b", bind="query-params"
)
sides = [by_name.get(n) for n in (name_a, name_b)]
# the ensemble is evaluated where all its members were
covered = list(by_name.values()) if None in sides else sides
splits = evaluation_splits(set.intersection(*(set(c.splits) for c in covered)))
split = c3.selectbox("Split", splits, key="h2h_split", bind="query-params")


def contender(name: str):
    """(predictions, metrics) of a checkpoint, or of the ensemble of the chosen models."""
    if name == ENSEMBLE_NAME:
        return ui.ensemble(ui.paths(list(by_name.values())), split)
    ckpt = by_name[name]
    return ui.predictions(str(ckpt.path), split), ckpt.metrics()[split]


(preds_a, metrics_a), (preds_b, metrics_b) = contender(name_a), contender(name_b)
if ENSEMBLE_NAME in (name_a, name_b):
    st.caption(f"ensemble: the mean probability of {', '.join(by_name)}.")
pa, pb = align(preds_a, preds_b)
test = mcnemar(pa.labels, pa.predicted, pb.predicted)
acc_a, acc_b = (pa.predicted == pa.labels).mean(), (pb.predicted == pb.labels).mean()
m1, m2, m3, m4 = st.columns(4)
m1.metric(f"A: {name_a}", f"{acc_a:.4f}")
m2.metric(f"B: {name_b}", f"{acc_b:.4f}", delta=f"{acc_b - acc_a:+.4f}")
m3.metric("Cells they disagree on", f"{int((pa.predicted != pb.predicted).sum())}")
m4.metric("McNemar exact p", f"{test['p_value']:.3g}")
verdict = (
    "the difference is unlikely to be chance (p < 0.05)"
    if test["p_value"] < 0.05
    else "the difference could well be chance (p ≥ 0.05)"
)
st.markdown(
    f"On the **{test['n']}** {split} cells both models saw: both right {test['both_right']}, "
    f"only A right **{test['only_a_right']}**, only B right **{test['only_b_right']}**, both "
    f"wrong {test['both_wrong']}. McNemar's exact test on the discordant pairs: {verdict}."
)

metric = st.segmented_control(
    "Metric", ["f1", "precision", "recall", "auc"], default="f1", required=True, key="h2h_metric"
)
deltas = per_class_deltas(metrics_a, metrics_b, metric)
ui.chart(delta_bars(deltas, name_a, name_b, metric), key="h2h_deltas")

st.subheader("Where they disagree")
table = disagreements(pa, pb)
only = st.segmented_control(
    "Show", ["all", "A right", "B right", "neither"], default="all", required=True, key="h2h_only"
)
if only != "all":
    table = table[table["right"] == only.split()[0]]
st.caption(f"{len(table)} cell(s).")
if len(table):
    shown = table.head(24)
    ui.cell_grid(
        covered[0].dataset,
        covered[0].size,
        shown["sample_id"],
        [
            f"truth {row.truth} · A {row.a_predicts} ({row.a_confidence:.2f}) · "
            f"B {row.b_predicts} ({row.b_confidence:.2f})"
            for row in shown.itertuples()
        ],
    )
    st.dataframe(table, hide_index=True, width="stretch")
    ui.table_download(table, f"bloodviz-disagreements-{key}-{name_a}-{name_b}-{split}.csv")
