"""A bundle's evaluation data and stored linear cache (f(θ0; x) and J τ per linear vector, method.md §2) are untrusted
input: damaged ones are refused naming the file, even with a fresh checksum; a cache over fewer images than the
evaluator uses is not used, and one over more serves each task its own rows."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from arith.bundle import ROWS_KEY, load_bundle
from arith.index import BundleError
from arith.specs import Files

from conftest import rehash


def _damage(copy, edit):
    rel = Files.linear_cache("test")
    cache = load_file(str(copy / rel))
    edit(cache)
    save_file({k: v.contiguous() for k, v in cache.items()}, str(copy / rel))
    rehash(copy, rel)
    return rel


def _a_jvp(cache):
    return next(k for k in cache if k not in ("f0", ROWS_KEY))


def _nan(cache):
    cache[_a_jvp(cache)][0, 0] = float("nan")


def _short(cache):
    k = _a_jvp(cache)
    cache[k] = cache[k][:-1]


def _rows(cache):
    cache[ROWS_KEY] = cache[ROWS_KEY].clone()
    cache[ROWS_KEY][0] -= 1  # still within the stored images, but no longer adds up to f0's rows


@pytest.mark.parametrize("edit, why", [(_nan, "non-finite"), (_short, "has shape"), (_rows, "per-task rows")])
def test_a_damaged_linear_cache_is_refused_naming_the_file(copy, edit, why):
    rel = _damage(copy, edit)
    with pytest.raises(BundleError, match=why) as e:
        load_bundle(copy)
    assert rel in str(e.value)


def test_a_cache_over_fewer_images_serves_the_evaluator_the_right_rows(bundle):
    # the evaluator on a subset takes each task's first rows of the stored cache: the same J τ as computed afresh
    tv = bundle.vectors["linear"][bundle.task_names[1]]
    for n in (3, 7):
        cached, fresh = bundle.evaluator(max_per_task=n), bundle.evaluator(max_per_task=n, linear_cache=False)
        torch.testing.assert_close(cached.jvp(tv, "test"), fresh.jvp(tv, "test"), atol=1e-5, rtol=1e-4)


def test_a_cache_over_fewer_images_per_task_than_stored_gives_each_task_its_own_rows(copy, bundle):
    # keep 40, 37 and 34 rows of the three tasks (every task's rows then start elsewhere than in the full cache)
    rel = Files.linear_cache("test")
    cache = load_file(str(copy / rel))
    rows = cache[ROWS_KEY].tolist()
    keep = [r - 8 - 3 * i for i, r in enumerate(rows)]
    starts = [sum(rows[:i]) for i in range(len(rows))]
    idx = torch.cat([torch.arange(s, s + k) for s, k in zip(starts, keep)])
    cut = {k: v[idx].contiguous() for k, v in cache.items() if k != ROWS_KEY}
    cut[ROWS_KEY] = torch.tensor(keep, dtype=cache[ROWS_KEY].dtype)
    save_file(cut, str(copy / rel))
    rehash(copy, rel)
    b = load_bundle(copy)
    tv = b.vectors["linear"][b.task_names[1]]
    for n in (None, min(keep) - 1):  # all stored images (more than cached: computed afresh), and fewer (served)
        got = b.evaluator(max_per_task=n).jvp(tv, "test")
        torch.testing.assert_close(got, b.evaluator(max_per_task=n, linear_cache=False).jvp(tv, "test"),
                                   atol=1e-5, rtol=1e-4)


def test_evaluation_labels_equal_to_the_number_of_classes_are_refused(copy, bundle):
    task = bundle.task_names[0]
    rel = Files.data(task)
    raw = load_file(str(copy / rel))
    raw["test.labels"] = raw["test.labels"].clone()
    raw["test.labels"][0] = bundle.tasks[task].num_classes
    save_file(raw, str(copy / rel))
    rehash(copy, rel)
    with pytest.raises(BundleError, match="labels outside") as e:
        load_bundle(copy)
    assert rel in str(e.value)
