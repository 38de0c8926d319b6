"""Benchmark: what the app computes on request, beyond a slider move (``bench/slider.py``), on a bundle's tensors.

* **α sweep** for a selection of tasks the bundle stores no sweep of (the Task-arithmetic view's *Sweep α* button,
  :meth:`arith.explore.Explorer.addition`): 21 values of α, each on the validation and test splits of the selected
  tasks, per mode, for the first 1, 2 and all tasks of the bundle.  The app's note says what this costs per task.
* **Examples** for one task (the Examples view, :meth:`arith.explore.Explorer.predictions`): θ0, the merge at the
  bundle's validation α over all its tasks and the task's own model, image by image, per mode and task; and the
  view's whole request, every mode for one task (its table of modes), with the memos emptied for each task.

Every request runs on one Explorer per mode with its memos emptied first (no memoised answer), as a request the app
has not seen before: its evaluator stays warm, as the app's does, after one untimed warm-up sweep of the last task
(evaluation tensors, θ0's shared activations, and for the linearized mode the machinery of the JVP).  The linearized
mode computes each task's J τ on the validation split once per process and keeps it (the test split's are stored in
the bundle), so a sweep pays for the tasks no earlier request used.  Each request is timed once: these are
seconds, not milliseconds.  The bundle stores the sweep over all its tasks, so the largest selection timed is all
tasks but the last.

    python -m bench.on_demand --threads 2 --json bench/results/on_demand.json
"""

from __future__ import annotations

import time

from bench._common import emit, machine, parser, set_threads, table


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--modes", nargs="+", help="modes to time (default: the bundle's)")
    args = p.parse_args(argv)
    threads = set_threads(args.threads)

    from arith.bundle import load_bundle
    from arith.examples import new_memo
    from arith.explore import Explorer
    from arith.lru import LRU

    bundle = load_bundle(args.bundle)
    modes = args.modes or list(bundle.vectors)
    tasks = [t for t in bundle.tasks if t in bundle.data]
    sizes = sorted({1, 2, len(tasks) - 1} - {0})

    def alpha_of(mode: str) -> float:  # the bundle's validation-chosen α, as the app's opening view uses
        return (bundle.results.get("addition", {}).get(mode) or {}).get("alpha", 0.3)

    rows, res = [], {"machine": machine(), "threads": threads, "bundle": str(args.bundle), "tasks": tasks,
                     "sweep": {}, "examples": {}}
    for mode in modes:
        ex = Explorer(bundle)

        def fresh(ex: Explorer = ex) -> Explorer:  # no memoised answer; the evaluator and its caches stay, as in the app
            ex._memo, ex._examples = LRU(ex._memo.maxsize), new_memo()
            return ex

        fresh().addition(mode, tasks[-1:])  # warm-up, on a task no timed sweep uses
        alpha = alpha_of(mode)
        for k in sizes:
            t0 = time.perf_counter()
            fresh().addition(mode, tasks[:k])
            s = time.perf_counter() - t0
            res["sweep"].setdefault(mode, {})[k] = s
            rows.append({"mode": mode, "request": f"α sweep, {k} task(s)", "seconds": s, "per task": s / k})
        per_task = []
        for task in tasks:
            t0 = time.perf_counter()
            fresh().predictions(mode, {t: alpha for t in tasks}, task)
            per_task.append(time.perf_counter() - t0)
        res["examples"][mode] = dict(zip(tasks, per_task))
        rows.append({"mode": mode, "request": f"examples, one task (mean of {len(tasks)})",
                     "seconds": sum(per_task) / len(per_task), "per task": max(per_task)})
    # the view itself: one task under every mode (its table), with the memos emptied and the evaluator warm
    ex = Explorer(bundle)
    for mode in modes:
        ex.predictions(mode, {}, tasks[-1])  # warm-up
    view = []
    for task in tasks[:-1]:
        ex._memo, ex._examples = LRU(ex._memo.maxsize), new_memo()
        t0 = time.perf_counter()
        for mode in modes:
            ex.predictions(mode, {t: alpha_of(mode) for t in tasks}, task)
        view.append(time.perf_counter() - t0)
    res["examples_view"] = dict(zip(tasks, view))
    rows.append({"mode": "every mode", "request": f"examples view, one task (mean of {len(view)})",
                 "seconds": sum(view) / len(view), "per task": max(view)})
    text = table(rows, ["mode", "request", "seconds", "per task"], floatfmt="{:.2f}")
    emit(args, res, text + "\n(per task: seconds / tasks for a sweep; the slowest task for examples)")
    return res


if __name__ == "__main__":
    main()
