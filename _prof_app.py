import cProfile, pstats, time, io
import streamlit as st
t=time.perf_counter()
pr = cProfile.Profile(); pr.enable()
exec(compile(open("/work/main/app.py").read(), "/work/main/app.py", "exec"))
pr.disable()
out = io.StringIO()
pstats.Stats(pr, stream=out).sort_stats("cumulative").print_stats(30)
st.session_state["_prof"] = f"script {time.perf_counter()-t:.2f}\n" + out.getvalue()
