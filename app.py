"""Task Arithmetic Explorer: ``streamlit run app.py``.

Pages hold widgets and charts only; every number comes from the ``arith`` engine.  Which bundle opens:
``$ARITH_BUNDLE`` if set, else ``precomputed/default``, else the first bundle under ``precomputed/`` (see
``ui/state.py``).  The sidebar is drawn by ``ui/sidebar.py``, the navigation by ``ui/entry.py``.

This file has two roles.  ``streamlit run app.py`` finds the ``st.App`` below and imports the file as a module to
serve it, so the allocator is told to keep freed memory as the server starts, before its threads
(``arith/memory.py``).  Streamlit then runs this same file as the page script (``__name__ == "__main__"``, as under
``AppTest``), which draws the app.  The first view is drawn from the bundle's index and precomputed results without
importing torch; the tensors load in the background afterwards (``ui/entry.py``).
"""

import streamlit as st

from arith.memory import keep_freed_memory

keep_freed_memory()  # as the server starts, before its threads: no page faults per request (arith/memory.py)

if __name__ == "__main__":
    from ui.entry import main

    main()
else:
    app = st.App("app.py")
