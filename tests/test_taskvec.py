import math

import pytest
import torch

from arith.safefile import SafetensorsError, read_bytes
from arith.specs import Meta
from arith.taskvec import TaskVector, TaskVectorError, cosine_matrix, load_task_vector

from hostile import corpus, valid_vector


def test_round_trip_keeps_tensors_and_metadata(base, tmp_path):
    tv = valid_vector(base)
    path = tv.save(tmp_path / "tv.safetensors")
    again = load_task_vector(path, base)
    assert again.uid == tv.uid and again.task == tv.task and again.mode == "attn" and again.base_id == base.id
    meta = again.metadata()
    for key in (Meta.FORMAT, Meta.VERSIONS, Meta.CREATED):
        assert meta[key]
    assert all(t.dtype == torch.float32 for t in again.tensors.values())


def test_half_precision_files_are_accepted_as_fp32(base):
    from safetensors.torch import save

    tv = valid_vector(base)
    blob = save({k: t.half() for k, t in tv.tensors.items()}, metadata=tv.metadata())
    again = load_task_vector(blob, base)
    assert all(t.dtype == torch.float32 for t in again.tensors.values())


def test_corpus_is_large_enough(base):
    assert len(corpus(base)) >= 25


@pytest.mark.parametrize("index", range(37))
def test_each_bad_file_gets_its_own_message(base, index):
    cases = corpus(base)
    if index >= len(cases):
        pytest.skip("corpus is shorter")
    name, blob, expect = cases[index]
    with pytest.raises((SafetensorsError, TaskVectorError)) as err:
        load_task_vector(blob, base)
    assert expect.lower() in str(err.value).lower(), f"{name}: {err.value}"


def test_messages_name_the_key(base):
    tv = valid_vector(base)
    k0 = sorted(tv.tensors)[0]
    bad = dict(tv.tensors)
    bad[k0] = torch.full_like(bad[k0], float("nan"))
    blob = TaskVector(bad, tv.task, tv.mode, tv.base_id).to_bytes()
    with pytest.raises(TaskVectorError, match=k0.replace(".", r"\.")):
        load_task_vector(blob, base)


def test_size_limit_is_checked_before_reading(base, tmp_path):
    path = valid_vector(base).save(tmp_path / "tv.safetensors")
    with pytest.raises(SafetensorsError, match="over the"):
        load_task_vector(path, base, max_bytes=100)

    class Huge:
        size = 10**12

        def read(self, n=-1):  # pragma: no cover - must never be called
            raise AssertionError("read a file over the limit")

    with pytest.raises(SafetensorsError, match="over the"):
        read_bytes(Huge(), max_bytes=1000)


def test_files_without_metadata_need_task_and_mode(base):
    from safetensors.torch import save

    tv = valid_vector(base)
    blob = save(dict(tv.tensors), metadata={Meta.BASE: base.id})
    with pytest.raises(TaskVectorError, match="metadata lacks"):
        load_task_vector(blob, base)
    again = load_task_vector(blob, base, task="mine", mode="attn")
    assert again.task == "mine" and again.mode == "attn"


def test_arithmetic_and_norms(base):
    a, b = valid_vector(base, seed=1), valid_vector(base, seed=2)
    s = a + b
    k = next(iter(a.tensors))
    assert torch.allclose(s.tensors[k], a.tensors[k] + b.tensors[k])
    assert torch.allclose((a - b).tensors[k], a.tensors[k] - b.tensors[k])
    assert torch.allclose((-a).tensors[k], -a.tensors[k])
    assert torch.allclose((2.5 * a).tensors[k], 2.5 * a.tensors[k])
    assert (2 * a).norm() == pytest.approx(2 * a.norm())
    assert math.isclose(sum(v**2 for v in a.layer_norms().values()), a.norm() ** 2, rel_tol=1e-9)
    assert math.isclose(sum(v**2 for v in a.block_norms().values()), a.norm() ** 2, rel_tol=1e-9)
    assert a.tensors[k] is not s.tensors[k]


def test_cosine_matrix(base):
    a, b = valid_vector(base, seed=1), valid_vector(base, seed=2)
    m = cosine_matrix([a, b, -a, 3 * a])
    assert m[0, 0] == pytest.approx(1) and m[0, 2] == pytest.approx(-1) and m[0, 3] == pytest.approx(1)
    assert abs(m[0, 1]) < 0.2 and torch.allclose(m, m.T)


def test_combining_different_bases_is_refused(base):
    a = valid_vector(base)
    other = TaskVector(dict(a.tensors), "x", "attn", "another")
    with pytest.raises(TaskVectorError, match="different bases"):
        a + other
