import streamlit as st

from bloodviz.checkpoints import store_fingerprint
from bloodviz.tables import checkpoint_table


@st.cache_data(show_spinner=False)
def load_table(fingerprint: tuple):
    return checkpoint_table(fingerprint[0])


st.title("bloodviz: shipped checkpoints")
st.caption(
    "Every number below is computed by bloodviz from the checkpoint's cached test predictions; "
    "each row carries the command that trained it."
)
table = load_table(store_fingerprint())
if table.empty:
    st.info(
        "No checkpoint yet. Train one with\n\n"
        "`python -m bloodviz train --model resnet18 --dataset pbc --size 64`"
    )
else:
    datasets = sorted(table["dataset"].unique())
    chosen = st.multiselect("Datasets", datasets, default=datasets)
    shown = table[table["dataset"].isin(chosen)]
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_config={
            "accuracy": st.column_config.NumberColumn(format="%.4f"),
            "macro F1": st.column_config.NumberColumn(format="%.4f"),
            "AUC": st.column_config.NumberColumn(format="%.4f"),
            "ECE": st.column_config.NumberColumn(format="%.4f"),
            "parameters": st.column_config.NumberColumn(format="%d"),
        },
    )
    st.download_button(
        "Download CSV", shown.to_csv(index=False), "bloodviz-checkpoints.csv", "text/csv"
    )
