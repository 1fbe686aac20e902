"""bloodviz dashboard: `streamlit run app.py`."""

import streamlit as st

st.set_page_config(page_title="bloodviz", page_icon="🩸", layout="wide")

pages = [
    st.Page("pages/checkpoints.py", title="Shipped checkpoints", icon="📋", default=True),
]
st.navigation(pages).run()
