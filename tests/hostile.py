"""A corpus of bad task-vector files, generated from a valid one (used by the engine and the app tests).

Each case is (name, bytes, substring the error message must contain).  The issue's list (truncated header, header
length beyond the file, header over the size cap, invalid JSON, duplicate or overlapping offsets, unknown dtype,
wrong shapes, extra and missing keys, NaN and Inf, integer tensors, a pickle or zip renamed ``.safetensors``, an
empty file, a 0-d tensor, a vector for another base model, metadata that lies) plus container and metadata
variations; files over the size limit are tested separately (they are refused by size, whatever they hold).
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile

import torch
from safetensors.torch import save

from arith.specs import Meta
from arith.taskvec import TaskVector


def _raw(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def _split(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def valid_vector(base, mode: str = "attn", task: str = "synthetic-stripes", seed: int = 0) -> TaskVector:
    from arith.modes import get_mode

    g = torch.Generator().manual_seed(seed)
    m = get_mode(mode)
    return TaskVector({k: 1e-3 * torch.randn(v.shape, generator=g) for k, v in base.params.items() if m.trains(k)},
                      task, mode, base.id)


def corpus(base) -> list[tuple[str, bytes, str]]:
    tv = valid_vector(base)
    good = tv.to_bytes()
    meta = tv.metadata()
    tensors = {k: t.clone() for k, t in tv.tensors.items()}
    k0 = sorted(tensors)[0]
    header, data = _split(good)
    first = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")[0][1]
    second = sorted((v["data_offsets"][0], k) for k, v in header.items() if k != "__metadata__")[1][1]

    def with_tensors(**changes):
        t = dict(tensors)
        for k, v in changes.items():
            if v is None:
                t.pop(k.replace("__", "."), None)
            else:
                t[k.replace("__", ".")] = v
        return save(t, metadata=meta)

    def with_meta(**changes):
        m = {**meta, **changes}
        return save(tensors, metadata={k: v for k, v in m.items() if v is not None})

    def edit_header(fn):
        h = json.loads(json.dumps(header))
        fn(h)
        return _raw(h, data)

    nan = tensors[k0].clone()
    nan[0, 0] = float("nan")
    inf = tensors[k0].clone()
    inf[-1, -1] = float("inf")
    buf = io.BytesIO()
    torch.save(tensors, buf)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("data.pkl", b"x")
    mlp_key = next(k for k in base.params if k.endswith("mlp.c_fc.weight"))
    k0u = k0.replace(".", "__")

    def _overlap(h):
        b2, e2 = h[second]["data_offsets"]
        start = h[first]["data_offsets"][1] - 4
        h[second]["data_offsets"] = [start, start + (e2 - b2)]

    def _same_offsets(h):
        h[second]["data_offsets"] = list(h[first]["data_offsets"])
        h[second]["shape"], h[second]["dtype"] = h[first]["shape"], h[first]["dtype"]

    def gap_after_first():
        """4 padding bytes after the first tensor's data, every later offset shifted past them."""
        h = json.loads(json.dumps(header))
        end = h[first]["data_offsets"][1]
        for k, v in h.items():
            if k != "__metadata__" and v["data_offsets"][0] >= end:
                v["data_offsets"] = [v["data_offsets"][0] + 4, v["data_offsets"][1] + 4]
        return _raw(h, data[:end] + b"\0" * 4 + data[end:])

    nan_inf = tensors[k0].clone().double()
    nan_inf[0, 0], nan_inf[0, 1] = float("nan"), float("-inf")

    def dup_key_header():
        h = json.dumps(header).encode()
        entry = json.dumps({first: header[first]})[1:-1].encode()
        h = h[:-1] + b"," + entry + b"}"
        return struct.pack("<Q", len(h)) + h + data

    cases = [
        ("empty file", b"", "empty"),
        ("shorter than the length prefix", b"\x01\x02\x03", "too short"),
        ("truncated header", good[:8] + good[8:20], "runs past the end"),
        ("truncated data", good[:-16], "outside"),
        ("header length beyond the file", struct.pack("<Q", 10**6) + b"{}", "runs past the end"),
        ("header over the size cap", struct.pack("<Q", 200 * 1024**2) + b"{}", "cap"),
        ("a text file", b"# my task vector\nweights: see the attached notebook\n" * 4, "the file is text"),
        ("random bytes", bytes(range(200, 256)) * 4, "not a safetensors file"),
        ("header is not JSON", struct.pack("<Q", 5) + b"{nope", "not valid UTF-8 JSON"),
        ("header is a JSON list", _raw([], b""), "not a JSON object"),  # type: ignore[arg-type]
        ("header not UTF-8", struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc", "UTF-8"),
        ("duplicate key", dup_key_header(), "twice"),
        ("overlapping offsets", edit_header(_overlap), "overlaps"),
        ("unknown dtype", edit_header(lambda h: h[first].__setitem__("dtype", "F33")), "unknown dtype"),
        ("shape disagrees with byte count", edit_header(lambda h: h[first].__setitem__("shape", [1, 2])), "bytes of data"),
        ("negative dimension", edit_header(lambda h: h[first].__setitem__("shape", [-1, 4])), "non-negative"),
        ("trailing bytes", good + b"\x00" * 8, "trailing"),
        ("pickle renamed .safetensors", pickle.dumps(tensors), "pickle"),
        ("torch.save zip renamed .safetensors", buf.getvalue(), "`python -m arith import` converts it"),
        ("plain zip", zbuf.getvalue(), "zip"),
        ("metadata not strings", edit_header(lambda h: h.__setitem__("__metadata__", {"a": 1})), "strings"),
        ("wrong shape", with_tensors(**{k0u: torch.zeros(3, 3)}), "shape"),
        ("0-d tensor", with_tensors(**{k0u: torch.tensor(1.0)}), "shape"),
        ("integer tensor", with_tensors(**{k0u: torch.zeros(tensors[k0].shape, dtype=torch.int32)}), "not floating"),
        ("bool tensor", with_tensors(**{k0u: torch.zeros(tensors[k0].shape, dtype=torch.bool)}), "not floating"),
        ("NaN", with_tensors(**{k0u: nan}), "non-finite"),
        ("Inf", with_tensors(**{k0u: inf}), "non-finite"),
        ("unknown key", with_tensors(**{"visual__transformer__resblocks__99__attn__in_proj_weight": tensors[k0].clone()}),
         "not a parameter"),
        ("missing key", with_tensors(**{k0u: None}), "missing"),
        ("key the mode does not train (metadata lies)", with_tensors(**{mlp_key.replace(".", "__"): torch.zeros(
            base.params[mlp_key].shape)}), "does not train"),
        ("another base model", with_meta(**{Meta.BASE: "open_clip:ViT-B-32:openai"}), "another base"),
        ("no base model in metadata", with_meta(**{Meta.BASE: None}), "which base"),
        ("no metadata at all", save(tensors), "metadata lacks"),
        ("unknown mode", with_meta(**{Meta.MODE: "lora"}), "unknown mode"),
        ("future format version", with_meta(**{Meta.FORMAT: "99"}), "format"),
        ("not a task vector", with_meta(**{Meta.KIND: "base_weights"}), "not a task vector"),
        ("steps that lie", with_meta(**{Meta.STEPS: "-3"}), "not a non-negative integer"),
        ("lr that is not a number", with_meta(**{Meta.LR: "fast"}), "not a number"),
        ("no tensors", save({}, metadata=meta), "no tensors"),
        # further container variations
        ("duplicate offsets (two tensors share bytes)", edit_header(_same_offsets), "same bytes"),
        ("gap between tensors", gap_after_first(), "gap of 4 bytes"),
        ("offsets not integers", edit_header(lambda h: h[first].__setitem__("data_offsets", ["0", "4"])),
         "not a pair of integers"),
        ("negative offsets", edit_header(lambda h: h[first].__setitem__("data_offsets", [-4, 0])), "fall outside"),
        ("entry with an extra field", edit_header(lambda h: h[first].__setitem__("extra", 1)), "exactly dtype"),
        ("shape of 10^24 elements", edit_header(lambda h: h[first].__setitem__("shape", [10**12, 10**12])),
         "bytes of data"),
        ("metadata is a list", edit_header(lambda h: h.__setitem__("__metadata__", ["a"])), "JSON object"),
        ("gzip renamed .safetensors", b"\x1f\x8b\x08\x00" + b"\x00" * 60, "gzip"),
        ("a JSON file renamed .safetensors", json.dumps({"weights": [1, 2, 3]}).encode(), "the file is text"),
        ("8-bit float tensor", with_tensors(**{k0u: torch.zeros(tensors[k0].shape).to(torch.float8_e4m3fn)}),
         "not floating"),
        ("transposed tensor", with_tensors(**{k0u: tensors[k0].T.contiguous()}), "shape"),
        ("half-precision Inf", save({k: (t.half() if k != k0 else inf.half()) for k, t in tensors.items()},
                                    metadata=meta), "float16"),
        ("NaN and Inf in float64", with_tensors(**{k0u: nan_inf}), "1 NaN, 1 infinite"),
        # metadata that lies about the mode, the other way round: linear trains every tensor
        ("mode says linear, holds attention only", with_meta(**{Meta.MODE: "linear"}), "missing"),
        ("mode says mlp, holds attention", with_meta(**{Meta.MODE: "mlp"}), "does not train"),
        # weights where a difference belongs: θ_t = θ0 + τ, θ0 itself, and the Export view's merged weights
        ("fine-tuned weights offered as a task vector", save({k: base.params[k] + t for k, t in tensors.items()},
                                                             metadata=meta), "not a task vector τ = θ_t − θ0"),
        ("θ0 itself offered as a task vector", save({k: base.params[k].clone() for k in tensors}, metadata=meta),
         "tensors are θ0's own (the base model's weights)"),
        ("merged weights offered as a task vector", with_meta(**{Meta.KIND: "merged_model"}),
         "load them as fine-tuned weights"),
    ]
    return cases
