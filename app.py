"""Task Arithmetic Explorer: ``streamlit run app.py``.

Pages hold widgets and charts only; every number comes from the ``arith`` engine.  Which bundle opens:
``$ARITH_BUNDLE`` if set, else ``precomputed/default``, else the first bundle under ``precomputed/`` (see
``ui/state.py``).  The sidebar and the navigation are in ``ui/entry.py``.

This file has two roles.  ``streamlit run app.py`` finds the ``st.App`` below and imports the file as a module to
serve it: the allocator is told to keep freed memory (``arith/memory.py``), and the app's lifespan starts importing
torch as the server starts, before the first browser connects (``ui/warmup.py``).  Streamlit then runs this same
file as the page script (``__name__ == "__main__"``, as under ``AppTest``), which draws the app.
"""

import streamlit as st

from arith.memory import keep_freed_memory

keep_freed_memory()  # as the server starts, before its threads: no page faults per request (arith/memory.py)

if __name__ == "__main__":
    from ui import warmup

    warmup.wait()  # a start-up import still running finishes before the script imports anything of its own
    from ui.entry import main

    main()
else:
    from ui.warmup import lifespan

    app = st.App("app.py", lifespan=lifespan)
