"""What a build stores is computed on the split it is named for (method.md §3: validation normalisers select,
test normalisers report), and negation's controls are the other tasks."""

from __future__ import annotations


def test_stored_zero_shot_and_single_task_accuracies_are_each_splits_own(bundle):
    ev = bundle.evaluator(linear_cache=False)  # as the build computes them
    acc = bundle.results["accuracy"]
    for split in ("val", "test"):
        assert acc["zeroshot"][split] == ev.zeroshot(split)
        for mode, vs in bundle.vectors.items():
            assert acc["finetuned"][mode][split] == ev.finetuned(vs, split), (mode, split)


def test_stored_negations_control_on_the_other_tasks_only(bundle):
    for mode, per_target in bundle.results["negation"].items():
        for target, res in per_target.items():
            assert sorted(res["controls"]) == sorted(t for t in bundle.task_names if t != target), (mode, target)


def test_the_stored_alone_curves_are_on_test_and_end_at_the_single_task_accuracies(bundle):
    for mode, res in bundle.results["alone"].items():
        (at_1,) = [r for r in res["curve"] if r["alpha"] == 1.0]
        ft = bundle.results["accuracy"]["finetuned"][mode]["test"]
        assert at_1["test"]["accuracy"] == {t: ft[t] for t in res["tasks"]}, mode
