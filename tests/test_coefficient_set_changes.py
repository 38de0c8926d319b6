"""changed_vectors: a coefficient set names the vectors whose content changed since it was saved, and only those."""

from __future__ import annotations

from arith.export import changed_vectors, coefficient_set


def test_only_vectors_with_another_recorded_hash_are_named_changed(bundle):
    vs = bundle.vectors["attn"]
    s, c, q = bundle.task_names[:3]
    rec = coefficient_set(bundle="tiny", base_id=bundle.base.id, mode="attn", coefs={s: 0.3, c: 0.2, q: 0.1}, vectors=vs)
    assert changed_vectors(rec, vs) == []
    rec["vectors"][s]["uid"] = "0" * 16  # saved with another vector of that name
    del rec["vectors"][c]["uid"]  # no hash recorded: nothing to compare
    rec["vectors"][q] = "not a record"
    assert changed_vectors(rec, vs) == [s]
