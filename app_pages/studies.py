import streamlit as st

from bloodviz import ui
from bloodviz.checkpoints import list_checkpoints
from bloodviz.compare import studies_table
from bloodviz.plots import reported_vs_reproduced


@st.cache_data(show_spinner=False)
def load(fingerprint: tuple):
    return studies_table(list_checkpoints(fingerprint[0], every_seed=False))


ui.current_selection()  # only to make sure app.py's navigation and sidebar ran
st.title("Studies vs bloodviz")
st.caption(
    "Every number the five source studies printed, beside ours measured on the like-for-like "
    "data and split: BloodMNIST figures against our PBC split at the same size, Kaggle figures "
    "against the Kaggle set; a study's 'validation' figure against our validation split, "
    "TEST against TEST, TEST_SIMPLE (71 un-augmented cells) against TEST_SIMPLE, study 003's "
    "malaria figure against our malaria test patients (split by patient). Our figures "
    "carry 95% bootstrap intervals; the studies printed none. The table covers every shipped "
    "checkpoint, whatever the sidebar shows."
)
table = load(ui.store_fingerprint())
studies = sorted(table["study"].unique())
c1, c2 = st.columns([3, 1])
chosen = c1.multiselect("Studies", studies, default=studies, key="studies_chosen")
only_ours = c2.toggle("Only reproduced rows", key="studies_only")
shown = table[table["study"].isin(chosen)]
if only_ours:
    shown = shown[shown["bloodviz"].notna()]
st.dataframe(
    shown,
    hide_index=True,
    width="stretch",
    column_config={
        "reported": st.column_config.NumberColumn(format="%.2f"),
        "bloodviz": st.column_config.NumberColumn(format="%.2f"),
        "difference": st.column_config.NumberColumn(format="%+.2f"),
    },
)
ui.table_download(shown, "bloodviz-studies-vs-reproduced.csv")
if shown["bloodviz"].notna().any():
    ui.chart(reported_vs_reproduced(shown), key="studies_scatter")
missing = shown.loc[shown["bloodviz"].isna() & (shown["bloodviz on"] == "not trained yet")]
if len(missing):
    names = " ".join(sorted(set(missing["model"])))
    st.caption(
        f"Not reproduced yet: {names}. `python -m bloodviz sweep --dataset pbc --models {names}` "
        "(or `--dataset blood-cells` for the Kaggle studies)."
    )
