import numpy as np
import pandas as pd
import streamlit as st

from bloodviz import ui
from bloodviz.checkpoints import evaluation_splits
from bloodviz.compare import (
    cell_samples,
    classification_report_table,
    most_confused,
    pr_curves,
    roc_curves,
)
from bloodviz.ensemble import ENSEMBLE_NAME
from bloodviz.metrics import (
    binary_auc,
    confusion_matrix,
    reliability_bins,
    risk_coverage,
    screening_at_threshold,
    youden_threshold,
)
from bloodviz.plots import (
    confusion_heatmap,
    curves_figure,
    per_class_bars,
    reliability_diagram,
    risk_coverage_figure,
    roc_operating_point,
    training_curves,
)

st.title("Model report")
key, ckpts = ui.current_selection()
ui.need_models(key, ckpts)

by_name = {c.name: c for c in ui.ranked(ckpts)}
c1, c2 = st.columns([3, 1])
model = c1.selectbox(
    "Model",
    [*by_name, ENSEMBLE_NAME] if len(by_name) >= 2 else list(by_name),
    key="report_model",  # ids, not display names: the address carries the option's text
    bind="query-params",
)
is_ensemble = model == ENSEMBLE_NAME
# the ensemble is reported where all its members were evaluated, on their first one's cells
ckpt = next(iter(by_name.values())) if is_ensemble else by_name[model]
splits = (
    evaluation_splits(set.intersection(*(set(c.splits) for c in by_name.values())))
    if is_ensemble
    else ckpt.evaluation_splits
)
split = c2.selectbox("Split", splits, key="report_split", bind="query-params")
if is_ensemble:
    preds, metrics = ui.ensemble(ui.paths(list(by_name.values())), split)
else:
    metrics = ckpt.metrics()[split]
    preds = ui.predictions(str(ckpt.path), split)
classes = list(ckpt.preprocessing.class_names)
run = ckpt.run

quality = (
    f"n = {metrics['n']}, accuracy {metrics['accuracy']:.4f} (95% CI "
    f"{metrics['accuracy_ci95'][0]:.4f}–{metrics['accuracy_ci95'][1]:.4f}), macro-F1 "
    f"{metrics['macro_f1']:.4f}."
)
if is_ensemble:
    st.caption(
        f"**Ensemble** of the sidebar's {len(by_name)} models ({', '.join(by_name)}): the mean "
        f"of their probabilities, on {key} / {split}: {quality}"
    )
else:
    st.caption(
        f"**{run.display_name or model}** on {key} / {split}: {quality} "
        f"{run.training_summary.capitalize()} on {run.device} ({run.pretrained_label}), "
        f"finished {run.finished_at}: `{run.command}`"
    )
    if ckpt.predictions_only_reason:
        st.caption(f"Predictions only: {ckpt.predictions_only_reason}.")

two_class = len(classes) == 2
tabs = st.tabs(
    ["Per class", "Confusion matrix", "ROC / PR / calibration", "Training", "Trust"]
    + (["Screening"] if two_class else []),
    key="report_view",
    bind="query-params",
)
tab_report, tab_confusion, tab_curves, tab_history, tab_trust = tabs[:5]
if tab_report.open:  # only the chosen tab runs (and is sent to the browser)
    with tab_report:
        report = classification_report_table(metrics)
        st.dataframe(
            report,
            hide_index=True,
            width="stretch",
            column_config={
                c: st.column_config.NumberColumn(format="%.4f")
                for c in ("precision", "recall", "f1", "auc")
            },
        )
        ui.table_download(report, f"bloodviz-report-{key}-{model}-{split}.csv")
        metric = st.segmented_control(
            "Metric",
            ["f1", "precision", "recall", "auc"],
            default="f1",
            required=True,
            key="report_metric",
        )
        others = st.multiselect(
            "Compare with", [m for m in by_name if m != model], key="report_others"
        )
        per_class = {model: metrics["per_class"]}
        for other in others:
            other_metrics = by_name[other].metrics().get(split)
            if other_metrics:
                per_class[other] = other_metrics["per_class"]
        ui.chart(per_class_bars(per_class, metric), key="report_bars")

if tab_confusion.open:  # only the chosen tab runs (and is sent to the browser)
    with tab_confusion:
        cm = confusion_matrix(preds.labels, preds.predicted, len(classes))
        normalise = st.toggle("Normalise rows (recall on the diagonal)", key="report_norm")
        event = st.plotly_chart(
            confusion_heatmap(cm, classes, normalise),
            width="stretch",
            on_select="rerun",
            selection_mode="points",
            key="report_cm",
        )
        picked = (event or {}).get("selection", {}).get("points", []) if event else []
        if picked and picked[0].get("x") in classes and picked[0].get("y") in classes:
            st.session_state["report_true"] = picked[0]["y"]
            st.session_state["report_pred"] = picked[0]["x"]
        default_true, default_pred = most_confused(cm)
        # a cell chosen for another dataset's classes falls back to the most confused pair
        if st.session_state.get("report_true") not in classes:
            st.session_state["report_true"] = classes[default_true]
        if st.session_state.get("report_pred") not in classes:
            st.session_state["report_pred"] = classes[default_pred]
        c1, c2 = st.columns(2)
        true_name = c1.selectbox("True class", classes, key="report_true")
        pred_name = c2.selectbox("Predicted class", classes, key="report_pred")
        cell = cell_samples(preds, classes.index(true_name), classes.index(pred_name))
        st.markdown(
            f"**{len(cell)}** {split} cells of true class **{true_name}** predicted "
            f"**{pred_name}** (click a matrix cell, or choose above; least confident first)."
        )
        st.page_link(
            "app_pages/gradcam.py",
            label="Explain these cells with Grad-CAM",
            icon=":material/local_fire_department:",
            query_params={"true": true_name, "pred": pred_name},
        )
        if len(cell):
            shown = cell.head(24)
            ui.cell_grid(
                ckpt.dataset,
                ckpt.size,
                shown["sample_id"],
                [
                    f"{row.sample_id.split('/')[-1]} · p({pred_name}) {row.p_predicted:.2f} · "
                    f"p({true_name}) {row.p_true:.2f}"
                    for row in shown.itertuples()
                ],
            )
            if len(cell) > len(shown):
                st.caption(f"Showing {len(shown)} of {len(cell)}; the table lists them all.")
            st.dataframe(cell, hide_index=True, width="stretch")

if tab_curves.open:  # only the chosen tab runs (and is sent to the browser)
    with tab_curves:
        c1, c2 = st.columns(2)
        with c1:
            ui.chart(curves_figure(roc_curves(preds), "roc"), key="report_roc")
        with c2:
            ui.chart(curves_figure(pr_curves(preds), "pr"), key="report_pr")
        bins = reliability_bins(preds.labels, preds.probs)
        ui.chart(reliability_diagram(bins, metrics["ece"]), key="report_reliability")
        st.caption(
            f"Mean confidence {np.mean(preds.probs.max(1)):.4f} vs accuracy "
            f"{metrics['accuracy']:.4f}."
        )

if tab_history.open:  # only the chosen tab runs (and is sent to the browser)
    with tab_history:
        history = ckpt.history()
        if is_ensemble:
            st.info("An ensemble has no training run of its own: each member's is in its report.")
        elif history.empty:
            st.info("This checkpoint has no training history.")
        else:
            ui.chart(training_curves(history), key="report_history")
            st.caption(
                f"Best validation accuracy {run.best_val_accuracy or float('nan'):.4f} at epoch "
                f"{run.best_epoch}; the checkpoint keeps that epoch's weights."
                + (" Stopped early." if run.stopped_early else "")
            )
            ui.table_download(history, f"bloodviz-history-{key}-{model}.csv")

if tab_trust.open:  # only the chosen tab runs (and is sent to the browser)
    with tab_trust:
        correct = preds.predicted == preds.labels
        curves = {"by confidence": risk_coverage(correct, preds.probs.max(1))}
        scores, ood_card = (None, None) if is_ensemble else ui.ood_scores(str(ckpt.path), split)
        if scores is not None:
            by_id = scores.set_index("sample_id")
            ood = by_id.reindex(preds.ids)["ood_score"].to_numpy()
            if not np.isnan(ood).any():
                curves["by OOD score (low first)"] = risk_coverage(correct, -ood)
        ui.chart(risk_coverage_figure(curves), key="report_risk")
        kept = curves["by confidence"][1][int(0.9 * len(correct)) - 1]
        st.caption(
            f"Setting aside the 10% least confident {split} cells leaves {kept:.2%} accuracy on "
            f"the rest (all cells: {metrics['accuracy']:.2%}). `python -m bloodviz predict "
            "--abstain` withholds the predictions the OOD score flags."
        )
        if ood_card is None:
            st.info(
                "No out-of-distribution score is fitted for this model yet: `python -m bloodviz "
                f"ood --dataset {ckpt.dataset} --size {ckpt.size} --model {ckpt.model}`."
            )
        else:
            st.markdown(
                f"**Out-of-distribution score**: {ood_card['description']}. Threshold "
                f"{ood_card['threshold']:.3g} ({ood_card['pass_rate_on_val']:.0%} of validation "
                "cells pass)."
            )
            bench = (ood_card.get("benchmark") or {}).get("sets")
            if bench:
                table = pd.DataFrame(bench).T.rename_axis("set").reset_index()
                st.dataframe(
                    table,
                    hide_index=True,
                    width="stretch",
                    column_config={
                        c: st.column_config.NumberColumn(format="%.4f")
                        for c in table.columns
                        if c.startswith(("auroc", "fpr"))
                    },
                )
                st.caption(
                    f"In-distribution: {ood_card['benchmark']['in_distribution']}. AUROC: how "
                    "often an outside image scores above a test cell; FPR95: outside images let "
                    "through when 95% of test cells pass. The energy score is the baseline; "
                    "`head` and `stem` are the two parts of the score alone, where it has both."
                )

if two_class and tabs[5].open:
    with tabs[5]:
        c1, c2 = st.columns([1, 2])
        positive_name = c1.selectbox("Positive class", classes, key="report_positive")
        k = classes.index(positive_name)
        threshold = c2.slider(
            f"Call {positive_name} when its probability is at least",
            0.0,
            1.0,
            0.5,
            0.01,
            key="report_threshold",
            bind="query-params",
        )
        positive = preds.labels == k
        scores = preds.probs[:, k]
        point = screening_at_threshold(positive, scores, threshold)
        # a threshold tuned on the split it is reported on flatters it: tune on validation
        reference = None
        members = list(by_name.values()) if is_ensemble else [ckpt]
        if split != "val" and all("val" in c.splits for c in members):
            val = (
                ui.ensemble(ui.paths(list(by_name.values())), "val")[0]
                if is_ensemble
                else ui.predictions(str(ckpt.path), "val")
            )
            tuned = youden_threshold(val.labels == k, val.probs[:, k])
            reference = screening_at_threshold(positive, scores, tuned)
        m1, m2, m3, m4 = st.columns(4)
        m1.metric("Sensitivity", f"{point['sensitivity']:.4f}", help="share of positives caught")
        m2.metric("Specificity", f"{point['specificity']:.4f}", help="negatives cleared")
        m3.metric("PPV", f"{point['ppv']:.4f}", help="a positive call is right")
        m4.metric("NPV", f"{point['npv']:.4f}", help="a negative call is right")
        st.caption(
            f"{split}, threshold {threshold:.2f}: {point['tp']} {positive_name} cells caught, "
            f"{point['fn']} missed; {point['fp']} false alarms among {point['fp'] + point['tn']} "
            "others."
            + (
                f" Youden's threshold chosen on validation: {reference['threshold']:.2f} gives "
                f"sensitivity {reference['sensitivity']:.4f} and specificity "
                f"{reference['specificity']:.4f} here."
                if reference
                else ""
            )
        )
        from sklearn.metrics import roc_curve  # the screening tab only

        fpr, tpr, _ = roc_curve(positive, scores)
        ui.chart(
            roc_operating_point(
                fpr, tpr, binary_auc(positive, scores), point, positive_name, reference
            ),
            key="report_screen_roc",
        )
