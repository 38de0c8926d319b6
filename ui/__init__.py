"""The Streamlit app's plumbing (widgets, session state, charts); every number it shows comes from ``arith``.

``ui.state`` owns the sidebar (bundle, mode, tasks, coefficients), the session's workspace and the URL mirror;
``ui.common`` error and progress helpers; ``ui.charts`` plotly figures built from engine results.
"""
