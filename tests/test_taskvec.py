import io
import math

import pytest
import torch

from arith.safefile import SafetensorsError, read_bytes
from arith.specs import Meta
from arith.taskvec import TaskVector, TaskVectorError, cosine_matrix, load_task_vector

from conftest import tiny_base
from hostile import corpus, valid_vector

CASES = {name: (blob, expect) for name, blob, expect in corpus(tiny_base())}  # the `base` fixture's model


def test_round_trip_keeps_tensors_and_metadata(base, tmp_path):
    tv = valid_vector(base)
    tv = TaskVector(tv.tensors, tv.task, tv.mode, tv.base_id, {Meta.SEED: "7", "lab.note": "kept as written"})
    path = tv.save(tmp_path / "tv.safetensors")
    again = load_task_vector(path, base)
    assert again.uid == tv.uid and again.task == tv.task and again.mode == "attn" and again.base_id == base.id
    assert again.meta[Meta.SEED] == "7" and again.meta["lab.note"] == "kept as written"  # the file's, not defaults
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


def test_corpus_is_large_enough_and_messages_are_specific(base):
    assert len(CASES) >= 25
    messages = {}
    for name, (blob, _) in CASES.items():
        with pytest.raises(ValueError) as err:
            load_task_vector(blob, base)
        messages.setdefault(str(err.value), []).append(name)
    same = [names for names in messages.values() if len(names) > 1]
    assert same == [["torch.save zip renamed .safetensors", "plain zip"]]  # the same kind of file


class Uploaded(io.BytesIO):
    """Like Streamlit's UploadedFile: a BytesIO with a ``size``."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.size = len(data)


@pytest.mark.parametrize("source", ["bytes", "file object", "uploaded file", "path"])
@pytest.mark.parametrize("name", list(CASES))
def test_each_bad_file_gets_its_own_message(base, name, source, tmp_path):
    blob, expect = CASES[name]
    path = tmp_path / "x.safetensors"
    path.write_bytes(blob)
    src = {"bytes": blob, "file object": io.BytesIO(blob), "uploaded file": Uploaded(blob), "path": path}[source]
    with pytest.raises((SafetensorsError, TaskVectorError)) as err:
        load_task_vector(src, base)
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

    class Endless:  # no size: read at most one byte past the limit, then refuse
        asked = []

        def read(self, n=-1):
            self.asked.append(n)
            return b"\0" * n

    with pytest.raises(SafetensorsError, match="over the 1000-byte limit"):
        read_bytes(Endless(), max_bytes=1000)
    assert Endless.asked == [1001]


def test_a_header_listing_many_tiny_tensors_is_refused_by_its_length(base):
    import json
    import struct

    header = json.dumps({f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(120_000)})
    with pytest.raises(SafetensorsError, match="cap"):
        load_task_vector(struct.pack("<Q", len(header)) + header.encode(), base)


def test_weights_are_told_from_a_task_vector_by_their_distance_to_theta0(base):
    """‖file − θ0‖ < 0.5 ‖θ0‖ on the keys the file holds: weights θ_t, refused as τ; a vector this far or further from
    θ0 is a difference, however long (within a fine-tune's few percent of ‖θ0‖ or not)."""
    from arith.taskvec import check_not_weights, validate

    keys = sorted(valid_vector(base).tensors)
    theta0 = {k: base.params[k] for k in keys}
    norm0 = math.sqrt(sum(float(t.double().pow(2).sum()) for t in theta0.values()))
    g = torch.Generator().manual_seed(0)
    noise = {k: torch.randn(t.shape, generator=g) for k, t in theta0.items()}
    unit = math.sqrt(sum(float(t.double().pow(2).sum()) for t in noise.values()))

    def at(r: float, around_theta0: bool) -> dict:  # a direction of length r‖θ0‖, added to θ0 or on its own
        return {k: (theta0[k] if around_theta0 else 0) + (r * norm0 / unit) * noise[k] for k in keys}

    meta = valid_vector(base).metadata()
    with pytest.raises(TaskVectorError, match="θ0's own \\(the base model's weights\\), not a task vector"):
        validate(at(0.0, True), meta, base)  # θ0 itself
    for r in (0.05, 0.45):  # a fine-tune, a large move: weights
        with pytest.raises(TaskVectorError, match=f"within {r:.2g} × ‖θ0‖ of θ0's own"):
            validate(at(r, True), meta, base)
    check_not_weights(at(0.55, True), base)  # past half of ‖θ0‖ from θ0: taken as a (huge) vector
    for r in (0.001, 0.3, 2.0):  # vectors, short or long
        assert validate(at(r, False), meta, base).numel > 0
    check_not_weights({"no.such.key": torch.zeros(3)}, base)  # nothing of the base to compare with: left to validate
    assert validate(at(0.05, True), meta, base, check_weights=False).numel > 0  # a caller that took θ_t − θ0 itself


def test_merged_weights_offered_as_a_vector_are_told_where_they_belong(base):
    from safetensors.torch import save

    from arith.export import MERGED_KIND

    tv = valid_vector(base)
    for linearized, says in (("false", "load them as fine-tuned weights"), ("true", "neither a task vector nor")):
        meta = {**tv.metadata(), Meta.KIND: MERGED_KIND, "arith.linearized": linearized}
        with pytest.raises(TaskVectorError, match=says):
            load_task_vector(save(dict(tv.tensors), metadata=meta), base)


def test_files_without_metadata_need_task_and_mode(base):
    from safetensors.torch import save

    tv = valid_vector(base)
    blob = save(dict(tv.tensors), metadata={Meta.BASE: base.id})
    with pytest.raises(TaskVectorError, match="metadata lacks"):
        load_task_vector(blob, base)
    again = load_task_vector(blob, base, task="mine", mode="attn")
    assert again.task == "mine" and again.mode == "attn"
    # no base named: refused unless the caller vouches for it; one naming another base is refused even then
    bare = save(dict(tv.tensors), metadata={Meta.TASK: "mine", Meta.MODE: "attn"})
    with pytest.raises(TaskVectorError, match=f"lacks {Meta.BASE}"):
        load_task_vector(bare, base)
    assumed = load_task_vector(bare, base, assume_base=True)
    assert assumed.base_id == base.id and all(torch.equal(assumed.tensors[k], t) for k, t in tv.tensors.items())
    other = save(dict(tv.tensors), metadata={Meta.TASK: "mine", Meta.MODE: "attn", Meta.BASE: "someone:else"})
    with pytest.raises(TaskVectorError, match="made for another base"):
        load_task_vector(other, base, assume_base=True)


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


def _tv(tensors, task="A"):
    return TaskVector({k: torch.tensor(v) for k, v in tensors.items()}, task, "full", "b")


def test_difference_negates_the_keys_only_the_subtrahend_holds():
    a = _tv({"k1": [1.0, 2.0]})
    b = _tv({"k1": [10.0, 20.0], "k2": [3.0]}, "B")
    d = a - b
    assert d.tensors["k1"].tolist() == [-9.0, -18.0] and d.tensors["k2"].tolist() == [-3.0]
    assert (b - a).tensors["k2"].tolist() == [3.0]
    s = a + b
    assert s.tensors["k1"].tolist() == [11.0, 22.0] and s.tensors["k2"].tolist() == [3.0]


def test_division_scales_by_the_reciprocal():
    a = _tv({"k1": [1.0, -2.0], "k2": [4.0]})
    assert (a / 4).tensors["k1"].tolist() == [0.25, -0.5] and (a / 4).tensors["k2"].tolist() == [1.0]
    assert (a / 2).norm() == pytest.approx(a.norm() / 2)


def test_block_norms_are_named_by_the_blocks_own_index():
    blocks = "visual.transformer.resblocks"
    tv = _tv({f"{blocks}.0.attn.in_proj_weight": [3.0], f"{blocks}.0.mlp.c_fc.weight": [4.0],
              f"{blocks}.11.attn.out_proj.weight": [1.0, 1.0], "visual.conv1.weight": [2.0]})
    assert tv.block_norms() == pytest.approx({"block 00": 5.0, "block 11": math.sqrt(2.0), "conv1": 2.0})
