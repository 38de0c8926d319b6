"""Concurrent users: eight sessions at once (threads driving one shared Explorer, and AppTest sessions) with
different modes, coefficients and uploaded vectors get exactly what each gets alone; memory stays bounded (every
cache has a limit) over 500 random requests."""

from __future__ import annotations

import gc
import random
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from arith.explore import Explorer

from conftest import TASKS
from hostile import valid_vector

MODES = ("full", "attn", "linear", "mlp")


def run_all(fns, workers: int = 8, timeout: float = 300):
    """Start every function at the same moment (a barrier) in its own thread; their results in order."""
    barrier = threading.Barrier(len(fns))

    def go(fn):
        barrier.wait(timeout=60)
        return fn()

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(go, fn) for fn in fns]
        return [f.result(timeout=timeout) for f in futures]


def session_plan(bundle, i: int) -> dict:
    """Session i: a mode, its own coefficients and its own uploaded vector (linear sessions need fresh JVPs,
    which switch process-global attention kernels while the other sessions run forward passes)."""
    rng = random.Random(i)
    mode = MODES[i % 4]
    mine = valid_vector(bundle.base, mode, TASKS[i % 3], seed=100 + i).scale(20.0 + i)
    coefs = {t: rng.choice([-1.5, -0.5, 0.25, 0.6, 1.0]) for t in TASKS}
    coefs[f"upload-{i}"] = rng.choice([0.5, 1.0])
    return {"mode": mode, "coefs": coefs, "extra": {f"upload-{i}": mine}}


def session(ex: Explorer, plan: dict) -> dict:
    mode, coefs, extra = plan["mode"], plan["coefs"], plan["extra"]
    name = next(iter(extra))
    out = {"eval": ex.evaluate(mode, coefs, extra=extra)["accuracy"],
           "eval_val": ex.evaluate(mode, {name: 1.0}, "val", extra=extra)["accuracy"],
           "finetuned": ex.finetuned(mode, extra=extra),
           "stats": ex.vector_stats(mode, extra)[name]["norm"]}
    xi = ex.xi(mode, name, TASKS[(TASKS.index(extra[name].task) + 1) % 3], alphas=[-1.0, 0.0, 1.0], extra=extra)
    out["xi"] = xi["prediction"]
    return out


def test_eight_threads_on_one_explorer_get_what_they_get_alone(bundle):
    plans = [session_plan(bundle, i) for i in range(8)]
    alone = [session(Explorer(bundle), p) for p in plans]  # each on its own fresh engine
    shared = Explorer(bundle)
    together = run_all([lambda p=p: session(shared, p) for p in plans])
    assert together == alone
    again = run_all([lambda p=p: session(shared, p) for p in reversed(plans)])  # now from the shared caches
    assert again == list(reversed(alone))
    assert "upload-0" not in shared.vectors("full")  # nothing a caller passed is kept


def test_eight_threads_merging_by_dare_with_their_own_drops_get_what_they_get_alone(bundle):
    """DARE's masks are memoised on the shared vectors for one (density, seed) at a time: sessions with other
    settings replace the memo under each other, and each must still get its own merge."""
    specs = [f"dare:density={d},seed={s}" for d in (0.3, 0.7) for s in (0, 1, 2, 3)]
    coefs = {t: 0.6 for t in TASKS}
    alone = [Explorer(bundle).evaluate("attn", coefs, method=s)["accuracy"] for s in specs]
    assert len({tuple(a.values()) for a in alone}) > 1  # the settings do differ in what they give
    shared = Explorer(bundle)
    together = run_all([lambda s=s: [shared.evaluate("attn", coefs, method=s)["accuracy"] for _ in range(3)]
                        for s in specs])
    assert together == [[a] * 3 for a in alone]


def test_concurrent_jvps_and_forward_passes_do_not_disturb_each_other(bundle):
    """Forward-mode AD switches process-global attention kernels (arith.linearize.forward_ad_attention); forward
    passes running meanwhile must give bit-identical features."""
    ev = bundle.evaluator()
    vs = bundle.vectors["attn"]
    coefs = [0.4, -0.7, 1.1]
    ref = ev.merged_features(list(vs.values()), coefs, "test")
    fresh = [valid_vector(bundle.base, "linear", TASKS[i % 3], seed=200 + i) for i in range(6)]

    def forward():
        return [ev.merged_features(list(vs.values()), coefs, "test") for _ in range(4)]

    def jvp(tv):
        return ev.jvp(tv, "test")

    results = run_all([forward, forward, forward, forward] + [lambda tv=tv: jvp(tv) for tv in fresh[:4]])
    for outs in results[:4]:
        assert all(torch.equal(o, ref) for o in outs)
    plain = bundle.evaluator()
    for tv, got in zip(fresh, results[4:]):
        assert torch.allclose(got, plain.jvp(tv, "test"), atol=1e-6)


@pytest.fixture
def parallel_apptest(monkeypatch):
    """Let AppTest sessions run in parallel threads, as a Streamlit server runs sessions.

    AppTest was written for one session at a time: each run installs a mock ``Runtime`` singleton and removes it at
    the end, patches ``config.get_option`` for the run's duration and compiles the scripts in a cache of its own.
    Overlapping runs would remove each other's runtime mid-run and restore each other's patches out of order, so:
    keep the last runtime installed while runs go on, patch the config once for the whole test and share one script
    cache.  The app's code, session state and shared caches are
    exercised unchanged.
    """
    import contextlib

    from streamlit import config
    from streamlit.runtime import Runtime
    from streamlit.testing.v1 import app_test
    from streamlit.testing.v1.util import build_mock_config_get_option

    class KeepInstance(type):
        def __setattr__(cls, name, value):
            if name == "_instance":
                if value is not None:
                    Runtime._instance = value
                return
            super().__setattr__(name, value)

    monkeypatch.setattr(app_test, "Runtime", KeepInstance("Runtime", (Runtime,), {}))
    # one script cache for all sessions, as a server has (each AppTest run makes its own, and compiling the same
    # script in several threads at once trips CPython 3.11's "AST constructor recursion depth mismatch")
    from streamlit.testing.v1 import local_script_runner

    shared_cache = app_test.ScriptCache()
    monkeypatch.setattr(app_test, "ScriptCache", lambda: shared_cache)
    monkeypatch.setattr(local_script_runner, "ScriptCache", lambda: shared_cache)  # the runner compiles with its own
    monkeypatch.setattr(app_test, "patch_config_options", lambda overrides: contextlib.nullcontext())
    monkeypatch.setattr(config, "get_option", build_mock_config_get_option({"global.appTest": True}))
    yield
    Runtime._instance = None


def test_eight_app_sessions_at_once(new_app, bundle, parallel_apptest):
    """AppTest sessions in parallel threads, each with its own coefficients and upload, see what they see alone,
    and all share the one loaded bundle."""
    def drive(i: int):
        at = new_app()
        at.switch_page("pages/upload.py").run()
        tv = valid_vector(bundle.base, "attn", TASKS[i % 3], seed=300 + i).scale(10.0 + i)
        at.file_uploader(key="upload_files").set_value((f"mine-{i}.safetensors", tv.to_bytes(), "x")).run()
        at.sidebar.slider(key=f"w_coef::mine-{i}").set_value(1.0).run()
        at.sidebar.slider(key=f"w_coef::{TASKS[i % 3]}").set_value(round(-2.0 + 0.25 * i, 2)).run()
        at.switch_page("pages/arithmetic.py").run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        table = next(d.value for d in at.dataframe if "edited (%)" in d.value.columns)
        ctx = at.session_state["_ctx"]
        return (dict(zip(table["task"], table["edited (%)"])), dict(ctx.coefs), sorted(ctx.workspace)), ctx.ex

    alone = [drive(i) for i in range(8)]
    together = run_all([lambda i=i: drive(i) for i in range(8)])
    assert [a for a, _ in together] == [a for a, _ in alone]
    assert len({id(ex) for _, ex in alone + together}) == 1  # the bundle is loaded once, not per session
    for i, (_, coefs, ws) in enumerate(a for a, _ in together):
        assert ws == [f"mine-{i}"] and coefs[f"mine-{i}"] == 1.0


def _rss_mb() -> float:
    import os

    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def test_memory_stays_bounded_over_500_random_requests(bundle):
    ex = Explorer(bundle, cache_size=64)
    ev = ex._evaluators[None] = bundle.evaluator(cache_size=16)  # small limits, so that 500 requests overflow them
    rng = random.Random(0)
    pool = [valid_vector(bundle.base, m, TASKS[i % 3], seed=400 + i) for i, m in enumerate(MODES * 10)]
    limits = {"memo": 64, "jvp": 16, "prefix": ev._prefix.maxsize}
    peak = {"memo": 0, "jvp": 0, "prefix": 0}
    rss = []
    for i in range(500):
        mode = rng.choice(MODES)
        extra = {"up": rng.choice([tv for tv in pool if tv.mode == mode])} if rng.random() < 0.5 else {}
        coefs = {t: rng.choice([-2.0, -1.0, -0.5, 0.5, 1.0, 2.0]) * rng.random() for t in TASKS}
        if extra:
            coefs["up"] = rng.uniform(-1, 1)
        kind = rng.random()
        if kind < 0.8:
            ex.evaluate(mode, coefs, rng.choice(["val", "test"]), extra=extra)
        elif kind < 0.9:
            ex.finetuned(mode, extra=extra)
        elif kind < 0.97:
            ex.vector_stats(mode, extra)
        else:
            ex.xi(mode, TASKS[0], TASKS[1], alphas=[rng.uniform(-2, 2), 0.0], extra=extra)
        peak = {k: max(peak[k], n) for k, n in (("memo", len(ex._memo)), ("jvp", len(ev._jvp)), ("prefix", len(ev._prefix)))}
        assert all(peak[k] <= limits[k] for k in limits), (i, peak)
        assert ev._jvp.nbytes <= ev._jvp.max_bytes
        if i % 50 == 49:
            gc.collect()
            rss.append(_rss_mb())
    assert peak["memo"] == 64 and peak["jvp"] == 16  # the limits were reached and held
    # after the caches filled up, resident memory levels off (a generous bound: allocator noise, not leaks)
    assert max(rss[2:]) - rss[2] < 64, rss


def test_default_caches_are_bounded(bundle):
    ex = Explorer(bundle)
    ev = ex.evaluator()
    assert 0 < ex._memo.maxsize <= 4096 and 0 < ev._jvp.maxsize <= 4096 and 0 < ev._prefix.maxsize <= 16
    assert ev.prefix_cache_bytes <= 256 * 2**20


def test_lru_bounds_the_bytes_it_holds():
    from arith.evaluate import LRU

    lru = LRU(100, max_bytes=1000)
    for i in range(10):
        lru.put(i, torch.zeros(100))  # 400 bytes each
        assert lru.nbytes <= 1000 and lru.nbytes == sum(t.numel() * 4 for t in lru._d.values())
    assert list(lru._d) == [8, 9] and lru.get(0) is None
    lru.put(9, torch.zeros(10))  # replacing an entry updates the count
    assert lru.nbytes == 440
    big = lru.put("big", torch.zeros(1000))  # larger than the bound: kept alone (it is what the caller needs now)
    assert lru.get("big") is big and len(lru) == 1 and lru.nbytes == 4000
    assert LRU(3).put("x", "not a tensor") == "not a tensor"


def test_jvp_cache_is_bounded_by_bytes(bundle):
    ev = bundle.evaluator(jvp_cache_mb=0.05)  # ~50 kB: a few J τ of the tiny bundle
    vs = [valid_vector(bundle.base, "linear", TASKS[i % 3], seed=500 + i) for i in range(6)]
    for tv in vs:
        ev.jvp(tv, "test")
        assert ev._jvp.nbytes <= ev._jvp.max_bytes or len(ev._jvp) == 1
    assert len(ev._jvp) < len(vs)
    assert torch.equal(ev.jvp(vs[0], "test"), bundle.evaluator().jvp(vs[0], "test"))  # recomputed when evicted


@pytest.mark.parametrize("n", [1, 8])
def test_lru_keeps_its_limit_under_threads(n):
    from arith.evaluate import LRU

    lru = LRU(32)
    run_all([lambda k=k: [lru.put((k, i), i) for i in range(500)] for k in range(n)], workers=n)
    assert len(lru) == 32


def test_a_workspace_vector_that_changes_the_normalisers_is_not_shared_through_the_memo(bundle):
    """An extra vector named after a bundle task replaces that task's normaliser even when it is not merged: a session
    with one must not be served (or serve) another session's normalized accuracy."""
    ex = Explorer(bundle)
    t0, t1 = bundle.task_names[:2]
    other = bundle.vectors["attn"][t0].scale(-1.0)  # fine-tuned accuracy of this "τ" differs from the bundle's
    coefs = {t1: 0.35}
    plain = ex.evaluate("attn", coefs)
    with_extra = ex.evaluate("attn", coefs, extra={t0: other})
    assert with_extra["accuracy"] == plain["accuracy"]  # the merged model is the same
    assert with_extra["normalized"] != plain["normalized"]  # but normalised by another single-task accuracy
    assert Explorer(bundle).evaluate("attn", coefs, extra={t0: other})["normalized"] == with_extra["normalized"]
    assert ex.evaluate("attn", coefs)["normalized"] == plain["normalized"]
