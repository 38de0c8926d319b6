"""Frozen heads (method.md §1: logits = scale · normalise(f) @ Wᵀ; the zero-shot head normalises each prompt's
embedding, averages and normalises again) and the engine's bounded LRU cache, against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from arith.heads import Head, heads_from_tensors, prototype_head, zeroshot_head
from arith.lru import LRU


def test_logits_are_the_scaled_cosine_of_the_features_with_the_head_rows():
    head = Head(torch.eye(2), scale=10.0)
    # |(3, 4)| = 5: normalised (0.6, 0.8); · 10
    torch.testing.assert_close(head.logits(torch.tensor([[3.0, 4.0], [0.0, -2.0]])),
                               torch.tensor([[6.0, 8.0], [0.0, -10.0]]))


def test_prototype_rows_are_normalised_means_of_normalised_features():
    feats = torch.tensor([[10.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    head = prototype_head(feats, torch.tensor([0, 0, 1]), 2, scale=7.0)
    r = 1 / math.sqrt(2)  # (1, 0) and (0, 1) average to (0.5, 0.5): normalised (r, r), whatever the raw lengths
    torch.testing.assert_close(head.weight, torch.tensor([[r, r], [0.0, 1.0]]))
    assert head.scale == 7.0


class _FakeClip(torch.nn.Module):
    """encode_text returns a fixed embedding per token id; logit_scale = log 50."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(50.0)))

    def encode_text(self, tokens):
        return self.table[tokens]


def test_the_zero_shot_head_normalises_each_template_then_the_class_mean():
    # class "a": templates give (2, 0) and (0, 1) -> (1, 0), (0, 1) -> mean (0.5, 0.5) -> (r, r)
    # class "b": (0, 3) and (0, 5) -> (0, 1)
    ids = {"x a": 0, "y a": 1, "x b": 2, "y b": 3}
    clip = _FakeClip([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [0.0, 5.0]])
    head = zeroshot_head(clip, lambda texts: torch.tensor([ids[t] for t in texts]), ["a", "b"], ["x {}", "y {}"])
    r = 1 / math.sqrt(2)
    torch.testing.assert_close(head.weight, torch.tensor([[r, r], [0.0, 1.0]]))
    assert head.scale == pytest.approx(50.0)


@pytest.mark.parametrize("bad", [{"scale": 0.0}, {"scale": -1.0}, {"weight_nan": True}, {"width": 3}])
def test_stored_heads_that_cannot_be_used_are_refused(bad):
    w = torch.eye(2)
    if bad.get("weight_nan"):
        w[0, 0] = float("nan")
    if "width" in bad:
        w = torch.ones(2, bad["width"])
    tensors = {"t.weight": w, "t.scale": torch.tensor(bad.get("scale", 100.0))}
    with pytest.raises(ValueError, match="heads:"):
        heads_from_tensors(tensors, ["t"], embed_dim=2)
    ok = heads_from_tensors({"t.weight": torch.eye(2), "t.scale": torch.tensor(100.0)}, ["t"], embed_dim=2)
    assert ok["t"].scale == 100.0


def test_the_lru_evicts_the_least_recently_used_entry():
    c = LRU(maxsize=2)
    c.put("a", 1)
    c.put("b", 2)
    assert len(c) == 2 and c.get("a") == 1 and c.get("b") == 2  # two entries fit a cache of two
    assert c.get("a") == 1  # "a" is now the most recent
    c.put("c", 3)
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3


def test_the_lru_counts_a_replaced_entrys_bytes_once_and_keeps_the_entry_just_put():
    c = LRU(maxsize=8, max_bytes=100)
    c.put("a", torch.zeros(10))  # 40 bytes
    c.put("a", torch.zeros(20))  # replaces it: 80 bytes, not 120
    assert c.nbytes == 80 and c.get("a") is not None
    c.put("big", torch.zeros(50))  # 200 bytes, over the bound on its own: the older entry goes, this one stays
    assert c.get("a") is None and c.get("big") is not None and c.nbytes == 200 and len(c) == 1
