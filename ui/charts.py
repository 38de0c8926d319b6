"""Plotly figures of engine results.  Inputs are the engine's dicts; nothing here computes a result, it only lays
numbers out (fractions are shown as percentages)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import ROUND_HALF_UP, Decimal

import plotly.graph_objects as go

from arith.modes import MODES, kernel_subsets, views_of

from .state import COEF_MAX, mode_label, reachable

PALETTE = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC"]
MODE_COLOURS = {"full": "#E45756", "attn": "#4C78A8", "attn_bias": "#72B7B2", "linear": "#54A24B", "mlp": "#F58518"}


# views (full@attn, …): one colour each, none a mode's nor the grey of unselected tasks, in views_of(MODES)'s order
VIEW_COLOURS = ("#B279A2", "#9D755D", "#FF9DA6", "#EECA3B", "#17BECF", "#6A3D9A")
# the parts of τ a restricted linearization keeps (restricted_bars): greys, named as parts of τ, not as modes
PART_STYLE = {"attention": ("attention part of τ", "#3B3B3B"), "mlp": ("MLP part of τ", "#9A9A9A"),
              "all": ("all of τ", "#D0D0D0")}
PART_GREYS = ("#5E5E5E", "#7A7A7A", "#B5B5B5")  # a part a registered mode adds


def part_style(subset: str, i: int = 0) -> tuple[str, str]:
    """(legend name, grey) of a restricted linearization's part of τ (``kernel_subsets()``'s names)."""
    if subset in PART_STYLE:
        return PART_STYLE[subset]
    mode = MODES.get(kernel_subsets().get(subset, ""))
    return f"{(mode.part if mode and mode.part else subset)} part of τ", PART_GREYS[i % len(PART_GREYS)]


# a mode registered beyond the built-in ones: colours no built-in mode or view has, in the registry's order
EXTRA_MODE_COLOURS = ("#393B79", "#8C6D31", "#637939", "#843C39", "#7B4173", "#3182BD")


def mode_colour(mode: str, i: int = 0) -> str:
    """A mode's or view's own colour, the same on every chart (``i``: the position of anything else)."""
    if mode in MODE_COLOURS:
        return MODE_COLOURS[mode]
    views = views_of(MODES)
    if mode in views:
        return VIEW_COLOURS[views.index(mode) % len(VIEW_COLOURS)]
    extra = [m for m in MODES if m not in MODE_COLOURS]
    if mode in extra:
        return EXTRA_MODE_COLOURS[extra.index(mode) % len(EXTRA_MODE_COLOURS)]
    return PALETTE[i % len(PALETTE)]


def _layout(fig: go.Figure, title: str = "", height: int = 380, **kw) -> go.Figure:
    fig.update_layout(title=title or None, height=height, margin=dict(l=10, r=10, t=40 if title else 10, b=10),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="left", x=0), **kw)
    return fig


def _p(x):
    return None if x is None else 100.0 * x


def fixed(v: float, digits: int = 1) -> str:
    """``v`` as the browser writes the tables' "%.1f" (JavaScript's toFixed, also plotly's d3 format): an exact tie
    rounds away from zero (81.25 → 81.3) where Python's format rounds it to even (81.2).  With 256 images per task
    many accuracies are such ties (k/256 with k ≡ 16 mod 32), so labels and captions written in Python use this to
    agree with the tables beside them."""
    return format(Decimal(v).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP), "f")


def alone_label(mode: str) -> str:
    """What a task's own vector at λ = 1 is called: its fine-tuned model, or for a view (full@attn) the cut vector."""
    return "cut vector alone" if mode in views_of(MODES) else "fine-tuned alone"


def accuracy_bars(acc: Mapping[str, float], zeroshot: Mapping[str, float], finetuned: Mapping[str, float],
                  selected: Sequence[str], mode: str) -> go.Figure:
    """Per-task accuracy of the edited model (bars), with the zero-shot and single-task fine-tuned accuracies
    marked; tasks that were not added are drawn lighter."""
    tasks = list(acc)
    colours = [mode_colour(mode) if t in selected else "#BFC7D5" for t in tasks]
    fig = go.Figure()
    fig.add_bar(x=tasks, y=[_p(acc[t]) for t in tasks], marker_color=colours, name="edited model",
                text=[fixed(100 * acc[t]) for t in tasks], textposition="inside", insidetextanchor="middle",
                hovertemplate="%{x}, edited model: %{y:.1f} %<extra></extra>")
    fig.add_scatter(x=tasks, y=[_p(zeroshot.get(t)) for t in tasks], mode="markers", name="zero-shot θ0",
                    # a bar's width at 8 tasks; narrower with many bars (a task's 26 classes), not over the next one
                    marker=dict(symbol="line-ew-open", size=min(44, 600 // max(1, len(tasks))), color="#333",
                                line=dict(width=3, color="#333")),
                    hovertemplate="%{x}, zero-shot θ0: %{y:.1f} %<extra></extra>")
    fig.add_scatter(x=[t for t in tasks if t in finetuned], y=[_p(finetuned[t]) for t in tasks if t in finetuned],
                    mode="markers", name=f"{alone_label(mode)} ({mode_label(mode)})",
                    marker=dict(symbol="diamond", size=11, color="#222", line=dict(width=1, color="white")),
                    hovertemplate=f"%{{x}}, {alone_label(mode)}: %{{y:.1f}} %<extra></extra>")
    fig.update_xaxes(type="category")  # names such as "0" … "9" (a digit task's classes) are labels, not numbers
    fig.update_yaxes(title="accuracy (%)", range=[0, 105])
    return _layout(fig)


def modes_bars(per_mode: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Grouped bars: per-task accuracy of the same coefficients under each mode."""
    fig = go.Figure()
    for i, (mode, acc) in enumerate(per_mode.items()):
        fig.add_bar(x=list(acc), y=[_p(v) for v in acc.values()], name=mode_label(mode), marker_color=mode_colour(mode, i),
                    hovertemplate=f"%{{x}}, {mode_label(mode)}: %{{y:.1f}} %<extra></extra>")
    fig.update_yaxes(title="accuracy (%)", range=[0, 105])
    return _layout(fig, barmode="group")


def _chosen_star(fig: go.Figure, res: Mapping, metric: str, colour: str, name: str) -> None:
    best = next((r for r in res["curve"] if abs(r["alpha"] - res["alpha"]) < 1e-9), None)
    if best is not None:
        fig.add_scatter(x=[best["alpha"]], y=[_p(best["test"][metric])], mode="markers", showlegend=False,
                        marker=dict(symbol="star", size=15, color=colour, line=dict(width=1, color="#222")),
                        hovertemplate=f"{name}: validation-chosen α=%{{x:.2f}}<extra></extra>")


def addition_curves(curves: Mapping[str, dict], metric: str = "normalized", current: float | None = None,
                    alone: Mapping[str, dict] | None = None, merged: Mapping[str, dict] | None = None,
                    merged_label: str = "") -> go.Figure:
    """Test accuracy along the shared α of task addition, one line per mode; the validation-chosen α is marked.
    ``alone`` (mode -> the engine's alone curve) adds each task alone at α as a dashed line in the mode's colour;
    ``merged`` (mode -> the same sweep merged by another method, ``merged_label``) a dotted line with its own ★."""
    fig = go.Figure()
    for i, (mode, res) in enumerate(curves.items()):
        xs = [r["alpha"] for r in res["curve"]]
        ys = [_p(r["test"][metric]) for r in res["curve"]]
        colour = mode_colour(mode, i)
        # one legend entry per mode (its ★ α in the name: stars of modes that chose the same α overlap); the dashed
        # "alone" lines share one key entry below
        fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=f"{mode_label(mode)} (★ α = {res['alpha']:.2f})",
                        line=dict(color=colour), marker=dict(size=5), legendgroup=mode,
                        hovertemplate=f"{mode_label(mode)}: α=%{{x:.2f}}, %{{y:.1f}} %<extra></extra>")
        if alone and mode in alone:
            rows = alone[mode]["curve"]
            fig.add_scatter(x=[r["alpha"] for r in rows], y=[_p(r["test"][metric]) for r in rows], mode="lines",
                            name=f"{mode_label(mode)}, each task alone", line=dict(color=colour, dash="dash"),
                            legendgroup=mode, showlegend=False,
                            hovertemplate=f"{mode_label(mode)}, each task alone: α=%{{x:.2f}}, %{{y:.1f}} %<extra></extra>")
        _chosen_star(fig, res, metric, colour, mode_label(mode))
        if merged and mode in merged:
            rows, name = merged[mode]["curve"], f"{mode_label(mode)}, {merged_label}"
            fig.add_scatter(x=[r["alpha"] for r in rows], y=[_p(r["test"][metric]) for r in rows], mode="lines",
                            name=name, line=dict(color=colour, dash="dot"))
            _chosen_star(fig, merged[mode], metric, colour, name)
    if alone:
        fig.add_scatter(x=[None], y=[None], mode="lines", name="dashed: each task alone at α",
                        line=dict(color="#888", dash="dash"))
    if current is not None:
        fig.add_vline(x=current, line_dash="dot", line_color="#888", annotation_text="tied α", annotation_position="top")
    fig.update_xaxes(title="shared α")
    fig.update_yaxes(title=f"{metric} accuracy, test (%)")
    return _layout(fig)


def interference_curves(costs: Mapping[str, Sequence[Mapping]], chosen: Mapping[str, float], metric: str = "normalized",
                        current: float | None = None) -> go.Figure:
    """What the other vectors cost along α, one line per mode (``costs``: mode -> the engine's
    :func:`arith.report.interference_curve`, in points), the mode's validation-chosen α (``chosen``) starred."""
    fig = go.Figure()
    for i, (mode, rows) in enumerate(costs.items()):
        colour = mode_colour(mode, i)
        xs, ys = [r["alpha"] for r in rows], [_p(r[metric]) for r in rows]
        fig.add_scatter(x=xs, y=ys, mode="lines+markers", name=mode_label(mode), line=dict(color=colour),
                        marker=dict(size=5), hovertemplate=f"{mode_label(mode)}: α=%{{x:.2f}}, the other vectors "
                                                           f"cost %{{y:.1f}} points<extra></extra>")
        at = next((y for x, y in zip(xs, ys) if mode in chosen and abs(x - chosen[mode]) < 1e-9), None)
        if at is not None:
            fig.add_scatter(x=[chosen[mode]], y=[at], mode="markers", showlegend=False,
                            marker=dict(symbol="star", size=15, color=colour, line=dict(width=1, color="#222")),
                            hovertemplate=f"{mode_label(mode)}: validation-chosen α=%{{x:.2f}}<extra></extra>")
    if current is not None:
        fig.add_vline(x=current, line_dash="dot", line_color="#888", annotation_text="tied α", annotation_position="top")
    fig.add_hline(y=0, line_color="#999", line_width=1)
    fig.update_xaxes(title="shared α")
    fig.update_yaxes(title=f"each task alone − merged, {metric} (points)")
    return _layout(fig, height=320)


def xi_heatmap(res: Mapping, variant: str, zmax: float, title: str, current: tuple[float, float] | None = None,
               show_scale: bool = True, names: tuple[str, str] | None = None,
               snap: Callable[[float], float] | None = None, title_colour: str | None = None) -> go.Figure:
    """ξ(α1, α2): rows α1 (y), columns α2 (x), on a fixed colour range [0, zmax].  A transparent marker sits on
    every cell so that a click selects it (Streamlit's selection events do not fire on heatmap traces); its
    ``customdata`` is [ξ, λ1, λ2 a click sets, α1, α2].

    ``names``: the two vectors' names for the axes (default: the result's task names); ``snap``: the coefficient a
    click sets for a grid value (the sliders' step), shown in the hover beside the cell's own coefficients (λ, as on
    the axes; at one length the axes are the grid's a and the hover still gives each λ).  A grid taken at
    one length (``res["length"]``, :meth:`arith.explore.Explorer.xi`) is drawn on its ``grid`` (a = 1: τ at that
    length), so panels of modes whose vectors differ in length line up."""
    a1, a2 = list(res["alpha1"]), list(res["alpha2"])
    at_length = res.get("length") is not None and len(res.get("grid", ())) == len(a1) == len(a2)
    p1, p2 = (list(res["grid"]), list(res["grid"])) if at_length else (a1, a2)
    z = res[variant]
    t1, t2 = names or res["tasks"]
    snap = snap or float
    fig = go.Figure()
    fig.add_heatmap(x=p2, y=p1, z=z, zmin=0.0, zmax=zmax, colorscale="Viridis", showscale=show_scale,
                    colorbar=dict(title="ξ", thickness=12), hoverinfo="skip")
    xs = [x for _ in p1 for x in p2]
    ys = [y for y in p1 for _ in p2]

    def click(y: float, x: float) -> str:  # what a click does (ui.state.xi_click)
        if not reachable(y, x):
            return f"beyond the sliders' ±{COEF_MAX:g}: a click opens nothing"
        return f"a click sets λ {t1}={snap(y):.2f}, λ {t2}={snap(x):.2f}"

    data = [[z[i][j], snap(y), snap(x), y, x, click(y, x)] for i, y in enumerate(a1) for j, x in enumerate(a2)]
    fig.add_scatter(x=xs, y=ys, mode="markers", customdata=data, showlegend=False, name="cell",
                    marker=dict(symbol="square", size=max(6, int(320 / max(len(a1), len(a2)))), opacity=0.0,
                                color="white"),
                    selected=dict(marker=dict(opacity=0.0)), unselected=dict(marker=dict(opacity=0.0)),
                    hovertemplate=f"λ {t1}=%{{customdata[3]:.2f}}, λ {t2}=%{{customdata[4]:.2f}}<br>"
                                  f"ξ=%{{customdata[0]:.3f}}<br>%{{customdata[5]}}<extra></extra>")
    if current is not None:  # on the grid's own axes (a = λ / scale at a length); not drawn outside the grid
        c1, c2 = ((a[-1] / p[-1] if p[-1] else 1.0) for a, p in ((a1, p1), (a2, p2)))
        y, x = current[0] / c1, current[1] / c2
        if min(p1) <= y <= max(p1) and min(p2) <= x <= max(p2):
            fig.add_scatter(x=[x], y=[y], mode="markers", showlegend=False, hoverinfo="skip",
                            marker=dict(symbol="x-thin-open", size=16, line=dict(width=3, color="#FF4B4B")))
    axis, unit = ("a", f" (1 = τ at {res['length']:g}‖θ0‖)") if at_length else ("λ", "")
    fig.update_xaxes(title=f"{axis} {t2}{unit}", constrain="domain")
    fig.update_yaxes(title=f"{axis} {t1}{unit}", scaleanchor="x", constrain="domain")
    _layout(fig, title, height=400, clickmode="event+select", dragmode=False)
    if title_colour:
        fig.update_layout(title_font_color=title_colour)
    return fig


def kernel_path(reports: Mapping[str, dict], field: str, label: str, percent: bool = False) -> go.Figure:
    """A kernel diagnostic along θ0 + sτ, one line per mode (``percent``: a fraction drawn in %, as the tables)."""
    fig = go.Figure()
    scale = _p if percent else (lambda v: v)
    for i, (mode, rep) in enumerate(reports.items()):
        fig.add_scatter(x=[r["s"] for r in rep["path"]], y=[scale(r[field]) for r in rep["path"]], mode="lines+markers",
                        name=mode_label(mode), line=dict(color=mode_colour(mode, i)),
                        hovertemplate=f"{mode_label(mode)}: s=%{{x:.2f}}, %{{y:{'.1f' if percent else '.3f'}}}<extra></extra>")
    fig.add_vline(x=1.0, line_dash="dot", line_color="#888", annotation_text="fine-tuned (s = 1)",
                  annotation_position="top")
    fig.update_xaxes(title="s (θ0 + s·τ)")
    fig.update_yaxes(title=label)
    return _layout(fig, height=330)


def restricted_bars(rows: Sequence[Mapping], field: str, label: str, percent: bool = False) -> go.Figure:
    """Restricted linearization at s = 1: the tangent on τ's attention part vs its MLP part vs all of τ, grouped by
    mode (``percent``: a fraction drawn in %, as the tables).  The parts are drawn in greys: the mode colours (and
    names: "Attention-only" is a mode) stay the modes'."""
    fig = go.Figure()
    scale = _p if percent else (lambda v: v)
    for i, s in enumerate(kernel_subsets()):
        name, colour = part_style(s, i)
        fig.add_bar(x=[mode_label(r["mode"]) for r in rows], y=[scale(r.get(f"{s}_{field}")) for r in rows],
                    name=name, marker_color=colour,
                    hovertemplate=f"%{{x}}, {name}: %{{y:{'.1f' if percent else '.3f'}}}<extra></extra>")
    fig.update_yaxes(title=label)
    return _layout(fig, barmode="group", height=330)


_FIRST = ("conv1", "class_embedding", "positional_embedding", "ln_pre")
_LAST = ("ln_post", "proj")


def _block_order(name: str) -> tuple:
    """Input side first (patch embedding, class token, positions, ln_pre), then the blocks, then ln_post, proj."""
    if name in _FIRST:
        return (0, _FIRST.index(name), "")
    if name.startswith("block"):
        return (1, 0, name)
    if name in _LAST:
        return (2, _LAST.index(name), "")
    return (3, 0, name)


# norm_profile's line style and marker per vector (task), in the order the vectors are shown: colour is the mode's,
# as in every other chart
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "diamond", "x", "triangle-up")  # one fewer than DASHES: pairs repeat after 30 vectors


def vector_label(label: str) -> str:
    """A norm-profile label ``mode/vector`` as a reader reads it: ``vector · Mode label``."""
    mode, _, vector = label.partition("/")
    return f"{vector} · {mode_label(mode)}" if vector else label


def norm_profile(profiles: Mapping[str, Mapping[str, float]]) -> go.Figure:
    """Per-block L2 norm of each task vector (``label -> {block: norm}``, labels ``mode/vector``), in the order the
    input flows.  Colour: the mode (:func:`mode_colour`, as everywhere); line style and marker: the vector (one task's
    vectors in every mode share them), so one task's modes line up in the legend and stay apart by colour."""
    fig = go.Figure()
    vectors = list(dict.fromkeys(label.split("/", 1)[-1] for label in profiles))
    for label, blocks in profiles.items():
        mode, vector = label.split("/", 1) if "/" in label else ("", label)
        names = sorted(blocks, key=_block_order)
        i = vectors.index(vector)
        fig.add_scatter(x=names, y=[blocks[n] for n in names], mode="lines+markers", name=vector_label(label),
                        line=dict(color=mode_colour(mode), dash=DASHES[i % len(DASHES)]),
                        marker=dict(symbol=SYMBOLS[i % len(SYMBOLS)], size=8),
                        hovertemplate=f"{vector_label(label)}: %{{x}}, ‖τ‖ = %{{y:.3g}}<extra></extra>")
    order = sorted({n for b in profiles.values() for n in b}, key=_block_order)
    fig.update_xaxes(title="block / module", categoryorder="array", categoryarray=order)
    fig.update_yaxes(title="L2 norm of τ")
    return _layout(fig, height=400)


def cosine_heatmap(labels: Sequence[str], cosine: Sequence[Sequence[float]]) -> go.Figure:
    """Cosine similarity of task vectors (labels ``mode/name``, drawn as :func:`vector_label` reads them), symmetric
    colour range [−1, 1]."""
    labels = [vector_label(lab) for lab in labels]
    fig = go.Figure()
    fig.add_heatmap(x=labels, y=labels, z=cosine, zmin=-1.0, zmax=1.0, colorscale="RdBu_r",
                    text=[[f"{v:.2f}" for v in row] for row in cosine], texttemplate="%{text}" if len(labels) <= 16 else None,
                    hovertemplate="%{y} vs %{x}: cos %{z:.3f}<extra></extra>", colorbar=dict(title="cos", thickness=12))
    fig.update_yaxes(autorange="reversed", scaleanchor="x")
    return _layout(fig, height=max(360, 34 * len(labels) + 120))


def pair_heatmap(pairs: Mapping) -> go.Figure:
    """:func:`arith.protocols.pair_costs`: rows the task hurt, columns the vector added, the cost in points on a
    colour range symmetric about 0 (red: τ_j hurts task i; blue: it helps); the diagonal is blank."""
    tasks, cost = list(pairs["tasks"]), pairs["cost"]
    z = [[None if r == c else 100.0 * v for c, v in enumerate(row)] for r, row in enumerate(cost)]
    top = max((abs(v) for row in z for v in row if v is not None), default=0.0) or 1.0  # all 0: a range still
    fig = go.Figure()
    fig.add_heatmap(x=tasks, y=tasks, z=z, zmin=-top, zmax=top, colorscale="RdBu_r",
                    text=[["" if v is None else fixed(v) for v in row] for row in z], texttemplate="%{text}",
                    hovertemplate="%{y} with τ %{x} added: %{z:+.1f} points cost (negative: it helps)<extra></extra>",
                    # the title runs along the bar: at its top the plotly toolbar covered it on hover
                    colorbar=dict(title=dict(text="cost (points) · red: hurts · blue: helps", side="right"),
                                  thickness=12))
    fig.update_xaxes(title=f"τ added (α = {pairs['alpha']:.2f})", showgrid=False)
    fig.update_yaxes(title="task hurt", autorange="reversed", showgrid=False)
    return _layout(fig, height=max(360, 34 * len(tasks) + 140))


def loss_curve(losses: Sequence[float]) -> go.Figure:
    fig = go.Figure()
    fig.add_scatter(x=list(range(1, len(losses) + 1)), y=list(losses), mode="lines", name="loss")
    fig.update_xaxes(title="step")
    fig.update_yaxes(title="training loss")
    return _layout(fig, height=260)


def confusion_heatmap(pred: Mapping, change: bool = False) -> go.Figure:
    """The confusion matrix of :meth:`arith.explore.Explorer.predictions` (rows the true class, columns the
    predicted one): the merged model's counts, or with ``change`` its counts minus θ0's on a colour range symmetric
    about 0 (blue: the merge predicts this pair more often; on the diagonal, the change in a class's correct images,
    fixed − broken)."""
    classes, merged, base = list(pred["classes"]), pred["confusion"], pred["confusion_base"]
    if change:
        z = [[m - b for m, b in zip(rm, rb)] for rm, rb in zip(merged, base)]
        top = max((abs(v) for row in z for v in row), default=0) or 1
        scale = dict(zmin=-top, zmax=top, colorscale="RdBu")
        hover = "true %{y}, predicted %{x}: %{z:+d} images against θ0<extra></extra>"
        title = "images, edited − θ0 · blue: more · red: fewer"
    else:
        z, scale = merged, dict(zmin=0, colorscale="Blues")
        hover = "true %{y}, predicted %{x}: %{z} images<extra></extra>"
        title = "images"
    fig = go.Figure()
    fig.add_heatmap(x=classes, y=classes, z=z, hovertemplate=hover, **scale,
                    # counts written in the cells while they stay legible
                    **({"texttemplate": "%{z}"} if len(classes) <= 16 else {}),
                    colorbar=dict(title=dict(text=title, side="right"), thickness=12))
    fig.update_xaxes(title="predicted class", showgrid=False, type="category")
    fig.update_yaxes(title="true class", autorange="reversed", showgrid=False, type="category")
    return _layout(fig, height=max(360, min(900, 26 * len(classes) + 140)))
