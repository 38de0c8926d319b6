"""Exporting an edited model: merged weights as safetensors and coefficient sets as JSON.

* :func:`merged_state` / :func:`merged_safetensors`: θ0 + δ(vectors, coefficients) for every image-encoder tensor
  (open_clip ``visual.*`` names, fp32), built as a new dict per request; θ0 and the vectors are never written to.
  For a linearized mode the file holds θ = θ0 + δ, the parameters of the *linear* model
  f(x; θ0) + J(θ0)(θ − θ0): loading them into the ordinary encoder gives the non-linear model at θ, which is not
  what was evaluated (the metadata says so under ``arith.linearized``).
* :func:`coefficient_set` / :func:`parse_coefficient_set`: the JSON the app downloads and reads back; it names the
  base model, the mode, the merge method and one λ per task-vector name, and records the content hash (``uid``)
  of each vector so a reader can tell whether it still has the same vectors.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import torch
from safetensors.torch import save as st_save

from .merge import canonical_method, merge
from .modes import is_linearized, resolve
from .specs import FORMAT_VERSION
from .taskvec import TaskVector, library_versions

COEFFICIENTS_FORMAT = "arith-coefficients"
MAX_COEFFICIENT_SET_BYTES = 1024**2  # a coefficient set is a few hundred bytes; refuse anything near a megabyte
MERGED_KIND = "merged_model"


def merged_state(theta0: Mapping[str, torch.Tensor], vectors: Mapping[str, TaskVector], coefs: Mapping[str, float],
                 method: str = "task_arithmetic") -> dict[str, torch.Tensor]:
    """θ0 + δ for the named ``vectors`` with coefficients ``coefs`` (names missing from ``coefs`` get 0), as fp32 CPU
    tensors in a new dict of the caller's own (copies: editing one never writes to θ0, which the app shares).
    Raises ``KeyError`` for a coefficient whose vector is not given."""
    unknown = sorted(set(coefs) - set(vectors))
    if unknown:
        raise KeyError(f"no task vector named {unknown}; have {sorted(vectors)}")
    coefs = {n: _coefficient(n, v, "λ") for n, v in coefs.items()}  # numbers, numpy or torch scalars; True is no λ
    names = [n for n in coefs if coefs[n] != 0.0]
    merged = merge(theta0, [vectors[n] for n in names], [float(coefs[n]) for n in names], method)
    out = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in merged.items()}
    return {k: v.clone() if v.untyped_storage().data_ptr() == theta0[k].untyped_storage().data_ptr() else v
            for k, v in out.items()}  # untouched entries were θ0's own tensors (merge costs only what it changes)


def merged_safetensors(theta0: Mapping[str, torch.Tensor], vectors: Mapping[str, TaskVector],
                       coefs: Mapping[str, float], *, base_id: str, mode: str, method: str = "task_arithmetic") -> bytes:
    """The merged encoder θ0 + δ as safetensors bytes, with string metadata: ``arith.kind`` (``merged_model``),
    ``arith.base_model``, ``arith.mode``, ``arith.method``, ``arith.coefficients`` (JSON), ``arith.linearized``."""
    method = canonical_method(method)
    source = resolve(mode).name  # a mode or a view of this registry (a view's vectors are its source mode's)
    used = [vectors[n] for n in coefs if n in vectors and _coefficient(n, coefs[n], "λ") != 0.0]
    if any(v.mode != source for v in used):
        v = next(v for v in used if v.mode != source)
        raise ValueError(f"{v.task} is a {v.mode} vector: the file cannot say it is mode {mode!r}")
    other = next((v for v in used if v.base_id != base_id), None)
    if other is not None:
        raise ValueError(f"{other.task} ({other.mode}) was made for the base {other.base_id!r}, not {base_id!r}")
    linearized = is_linearized(mode)  # the vectors' own, as they are the mode's (checked above)
    state = merged_state(theta0, vectors, coefs, method)
    meta = {"arith.format": FORMAT_VERSION, "arith.kind": MERGED_KIND, "arith.base_model": base_id, "arith.mode": mode,
            "arith.method": method, "arith.linearized": "true" if linearized else "false",
            "arith.coefficients": json.dumps({n: float(c) for n, c in coefs.items()}, sort_keys=True),
            "arith.versions": json.dumps(library_versions(), sort_keys=True)}
    return st_save(state, metadata=meta)


def coefficient_set(*, bundle: str, base_id: str, mode: str, coefs: Mapping[str, float],
                    vectors: Mapping[str, TaskVector], method: str = "task_arithmetic") -> dict:
    """A JSON-ready record of one edit: base, mode, method and λ per vector name (with each vector's task, mode and
    content hash)."""
    missing = sorted(set(coefs) - set(vectors))
    if missing:
        raise KeyError(f"no task vector named {missing}")
    for name, value in coefs.items():  # what parse_coefficient_set reads back (strict JSON has no NaN)
        _coefficient(name, value)
    return {"format": COEFFICIENTS_FORMAT, "format_version": FORMAT_VERSION, "bundle": bundle, "base_model": base_id,
            "mode": mode, "method": canonical_method(method), "coefficients": {n: float(c) for n, c in coefs.items()},
            "vectors": {n: {"task": vectors[n].task, "mode": vectors[n].mode, "uid": vectors[n].uid} for n in coefs}}


def changed_vectors(record: Mapping, vectors: Mapping[str, TaskVector]) -> list[str]:
    """Names of a coefficient set (:func:`coefficient_set`) whose vector here is not the one it was saved with: the
    recorded content hash differs (another file uploaded under the same name, a retrained vector).  Names the set
    records no hash for, or that are not here, are not listed."""
    saved = record.get("vectors") if isinstance(record.get("vectors"), Mapping) else {}
    return [n for n in record.get("coefficients", {}) if n in vectors and isinstance(saved.get(n), Mapping)
            and saved[n].get("uid") not in (None, vectors[n].uid)]


def parse_coefficient_set(data: bytes | str | Mapping, base_id: str | None = None) -> dict:
    """Read a coefficient set back, checking its format, base model, mode, method and coefficient values.

    ``data`` may also be a file object (an upload): its size is checked before it is read.  Returns the record
    (``coefficients`` as floats).  Raises ``ValueError`` with a message for the user.
    """
    if hasattr(data, "read"):
        from .safefile import read_bytes

        try:
            data = read_bytes(data, MAX_COEFFICIENT_SET_BYTES)
        except ValueError:
            raise ValueError(f"not a coefficient set: over {MAX_COEFFICIENT_SET_BYTES} bytes") from None
    if isinstance(data, (bytes, bytearray, str)) and len(data) > MAX_COEFFICIENT_SET_BYTES:
        raise ValueError(f"not a coefficient set: over {MAX_COEFFICIENT_SET_BYTES} bytes")
    if isinstance(data, (bytes, bytearray)):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("not a coefficient set: the file is not UTF-8 text") from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as e:  # invalid JSON, or an integer beyond Python's digit limit
            raise ValueError(f"not a coefficient set: invalid JSON ({str(e)[:120]})") from None
        except RecursionError:
            raise ValueError("not a coefficient set: JSON nested too deeply") from None
    if not isinstance(data, Mapping) or data.get("format") != COEFFICIENTS_FORMAT:
        raise ValueError(f"not a coefficient set: expected \"format\": \"{COEFFICIENTS_FORMAT}\"")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"coefficient set format version {data.get('format_version')!r}; this version reads "
                         f"{FORMAT_VERSION!r}")
    if base_id is not None and data.get("base_model") != base_id:
        raise ValueError(f"this coefficient set is for base model {data.get('base_model')!r}, not {base_id!r}")
    resolve(str(data.get("mode")))  # a mode or a view (full@attn)
    method = data.get("method", "task_arithmetic")
    try:
        method = canonical_method(method)
    except ValueError as e:
        raise ValueError(f"coefficient set: {e}") from None
    coefs = data.get("coefficients")
    if not isinstance(coefs, Mapping):
        raise ValueError("coefficient set: \"coefficients\" must be an object {name: number}")
    out = {str(name): _coefficient(name, value) for name, value in coefs.items()}
    return {**dict(data), "method": method, "coefficients": out}


def _coefficient(name, value, what: str = "coefficient set") -> float:
    """A λ: a finite real number (a Python, numpy or one-element torch number), not a bool, a string or an integer
    beyond float's range; else a ValueError naming it."""
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    ok = not isinstance(value, (bool, str, bytes)) and type(value).__name__ != "bool_"
    try:
        ok = ok and math.isfinite(float(value))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        shown = (f"an integer of {value.bit_length()} bits" if isinstance(value, int) and value.bit_length() > 64
                 else repr(value)[:40])
        raise ValueError(f"{what}: {name!r} has a non-numeric or non-finite value {shown}")
    return float(value)
