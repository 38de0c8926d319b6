"""The app's page script, run by ``app.py`` on every rerun: the shared sidebar (bundle, fine-tuning mode, tasks,
coefficient sliders: they keep their values across pages) and the navigation between the views in ``pages/``."""

from dataclasses import dataclass

import streamlit as st

from arith.extensions import load_extensions

from . import sidebar, state


@dataclass(frozen=True)
class View:
    """One page of the navigation.  ``from_index``: the page imports no tensor library and runs at once from the
    bundle's index and precomputed results, waiting for the tensors (``Explorer.bundle``) only for what those lack;
    any other page runs once the tensors are loaded."""

    script: str
    title: str
    icon: str
    url_path: str
    from_index: bool = False


VIEWS = (  # in the navigation's order; the first is the default
    View("pages/arithmetic.py", "Task arithmetic", ":material/calculate:", "arithmetic", from_index=True),
    View("pages/examples.py", "Examples", ":material/image_search:", "examples"),
    View("pages/disentanglement.py", "Weight disentanglement", ":material/grid_on:", "disentanglement"),
    View("pages/kernel.py", "Kernel behaviour", ":material/timeline:", "kernel"),
    View("pages/vectors.py", "Task vectors", ":material/explore:", "vectors"),
    View("pages/upload.py", "Upload", ":material/upload_file:", "upload"),
    View("pages/train.py", "Train", ":material/model_training:", "train"),
    View("pages/export.py", "Export and share", ":material/download:", "export"),
)


def pages() -> list:
    """The views as ``st.Page`` objects (made anew each run, as Streamlit expects)."""
    return [st.Page(v.script, title=v.title, icon=v.icon, url_path=v.url_path, default=i == 0)
            for i, v in enumerate(VIEWS)]


def no_bundle() -> None:
    st.title("Task Arithmetic Explorer")
    st.subheader("No bundle to open yet")
    st.markdown(
        "The app opens a **bundle**: a base model with its tasks, task vectors and precomputed results. It looks "
        "at `$ARITH_BUNDLE`, then `precomputed/default`, then any directory with a `manifest.json` under "
        f"`{state.precomputed_dir()}`, and found none it could open.\n\n"
        "Build one with the engine's command line, then reload this page. The embedded default (a small CLIP-like "
        "ViT pre-trained here, eight offline tasks; about 45 minutes on 2 CPU cores, see the README):")
    st.code("python -m arith build-default", language="bash")
    st.markdown("A tiny random ViT on the built-in synthetic tasks takes under a minute on a laptop:")
    st.code("python -m arith build-bundle \\\n"
            "  --config '{\"embed_dim\": 32, \"vision_cfg\": {\"image_size\": 16, \"patch_size\": 4, \"width\": 32, "
            "\"layers\": 2, \"head_width\": 16}}' \\\n"
            "  --tasks synthetic-stripes synthetic-colours synthetic-quadrants --modes full attn linear \\\n"
            "  --steps 30 --lr 3e-3 --eval-n 64 --out precomputed/tiny", language="bash")
    st.markdown("A real CLIP bundle (downloads the OpenAI weights; needs the data sets under `--data-root`):")
    st.code("python -m arith build-bundle --model ViT-B-32 --pretrained openai --tasks <task> <task> ... \\\n"
            "  --modes full attn linear --data-root DATA --out precomputed/vit-b-32", language="bash")
    st.markdown("Or point the app at a bundle elsewhere: `ARITH_BUNDLE=/path/to/bundle streamlit run app.py`.")


def main() -> None:
    """One run of the app: sidebar, then the chosen page (or the getting-started page when no bundle opens)."""
    state.leave_legacy_pages_mode()  # before any widget: keeps widget identities stable from the first run on
    # an emoji favicon is an inline SVG; a :material/…: one is fetched from fonts.gstatic.com, unreachable offline
    st.set_page_config(page_title="Task Arithmetic Explorer", page_icon="🧮", layout="wide")
    try:
        load_extensions()  # one's own modes, merge methods and tasks ($ARITH_EXTENSIONS), before a bundle names them
    except ValueError as e:
        st.error(str(e))
    ctx = sidebar.sidebar()
    if ctx is None:
        page = st.navigation([st.Page(no_bundle, title="Get started", icon=":material/rocket_launch:", url_path="start")])
    else:
        page = st.navigation(pages())
        view = next((v for v in VIEWS if v.url_path == page.url_path), VIEWS[0])  # the default page's path is ""
        if not view.from_index and not state.tensors_ready(ctx):
            return
    page.run()
    delay = state.load_delay()
    if ctx is not None and delay is not None:  # the page is drawn: load the tensors once the browser has drawn it
        ctx.ex.load_in_background(delay=delay)
