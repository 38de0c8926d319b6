"""The Streamlit app's plumbing (widgets, session state, charts); every number it shows comes from ``arith``.

``ui.state`` owns the session's choices (bundle, mode, tasks, coefficients), its workspace and the URL's link;
``ui.sidebar`` draws the widgets that make those choices; ``ui.entry`` the navigation; ``ui.common`` error and
progress helpers; ``ui.charts`` plotly figures built from engine results.
"""
