"""Task vectors τ_t = θ_t − θ0 (method.md §1): files, validation, arithmetic, norms and similarities.

A task vector holds only the tensors its mode trains (zero elsewhere), keyed by open_clip state-dict names, in
fp32.  Files are safetensors with string metadata (keys in :class:`arith.specs.Meta`).  Loading an untrusted file
checks it against the base model and refuses it with a message naming the key at fault; nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path

import torch
from safetensors.torch import save as st_save

from .index import bundle_file_at
from .modes import MODES, Mode, get_mode
from .safefile import DEFAULT_MAX_BYTES, FLOAT_DTYPES, SafetensorsError, load_safetensors
from .specs import FORMAT_VERSION, Meta


class TaskVectorError(ValueError):
    """A task vector does not fit the base model or is malformed; the message names the key or field."""


class MissingMetadata(TaskVectorError):
    """A file lacks metadata fields (``keys``) that the caller can supply: task, mode, base model."""

    def __init__(self, message: str, keys: Sequence[str]):
        super().__init__(message)
        self.keys = tuple(keys)


# A fine-tune moves θ0 by a few percent, so a τ file within this fraction of ‖θ0‖ of θ0 itself is fine-tuned weights
# θ_t offered as a vector, and weights this far or further from θ0 are no fine-tune of it (arith.convert).
FAR = 0.5


def check_not_weights(tensors: Mapping[str, torch.Tensor], base) -> None:
    """Refuse tensors that are fine-tuned weights θ_t (or θ0 itself) rather than a task vector τ = θ_t − θ0: on the
    base's keys they hold, ‖tensors − θ0‖ < FAR · ‖θ0‖, where a task vector sits about ‖θ0‖ away from θ0 (it is a
    small difference, not weights).  Keys the base lacks and mis-shaped tensors are left to :func:`validate`.

    A vector that moves its tensors along θ0 by about their own size (a mode training only LayerNorm gains, say,
    raising them by half) would be refused too; no registered mode's vectors come near (a fine-tune's τ is a few
    percent of ‖θ0‖ long, so it sits about ‖θ0‖ from θ0); vectors imported from weights, and a bundle's own, skip this check
    (``validate(check_weights=False)``)."""
    params = as_base(base).params
    keys = [k for k, t in tensors.items() if k in params and tuple(t.shape) == tuple(params[k].shape)
            and t.dtype in _TORCH_FLOAT]
    # fp32 per tensor (torch.dist, no float64 copies: a threshold check needs no more), on θ0's device (the app's
    # base may be on a GPU, an uploaded file is read to the CPU)
    ref = math.sqrt(sum(float(torch.linalg.vector_norm(params[k].float())) ** 2 for k in keys))
    if not keys or not ref > 0:
        return
    near = math.sqrt(sum(float(torch.dist(tensors[k].to(params[k].device, torch.float32), params[k].float())) ** 2
                         for k in keys)) / ref
    if near < 1e-6:  # not a fine-tune of anything: no command would take a vector from it
        raise TaskVectorError(f"these {len(keys)} tensors are θ0's own (the base model's weights), not a task vector")
    if near < FAR:
        raise TaskVectorError(f"these {len(keys)} tensors are within {near:.2g} × ‖θ0‖ of θ0's own: fine-tuned "
                              "weights θ_t, not a task vector τ = θ_t − θ0 (which is a small difference, about ‖θ0‖ "
                              "away from θ0). Load them as fine-tuned weights (the app's Upload page, or `python -m "
                              "arith import`), which takes τ = θ_t − θ0")


def library_versions() -> dict[str, str]:
    import open_clip

    from . import __version__

    return {"torch": torch.__version__, "open_clip": open_clip.__version__, "arith": __version__}


@dataclass(frozen=True, eq=False)
class TaskVector:
    """A task vector, immutable by contract: arithmetic returns new vectors and this library never writes to a
    vector's tensors or its ``tensors`` mapping.  Neither is frozen (tensors cannot be), so do not edit them in place:
    anything computed from the vector is cached under its content hash (``uid``), taken once.

    The constructor checks only the mode; :func:`validate` checks tensors against a base model (keys, shapes,
    dtypes, finite values), as :func:`load_task_vector` does for files.  ``0.35 * tv``, ``tv / 2``, ``a + b``,
    ``a - b``, ``-tv`` and ``sum([a, b, c])`` build new vectors (fp32 tensors stay fp32); a derived vector records
    how it was made (``Meta.DERIVED``) and none of its sources' training provenance (``Meta.TRAINING``).
    """

    tensors: Mapping[str, torch.Tensor]
    task: str
    mode: str
    base_id: str
    meta: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self):
        unknown = [m for m in self.mode.split("+") if m not in MODES]  # a sum of two modes' vectors is "a+b"
        if unknown:
            raise TaskVectorError(f"mode {self.mode!r}: unknown mode {unknown[0]!r}; known: {', '.join(MODES)}")

    def __repr__(self) -> str:
        made = self.meta.get(Meta.DERIVED)
        part = self.meta.get(Meta.PART)
        return (f"TaskVector(task={self.task!r}, mode={self.mode!r}{f', cut to {part!r}' if part else ''}, "
                f"{len(self.tensors)} tensors, {self.numel:,} entries{f', made as {made!r}' if made else ''})")

    # -- identity -------------------------------------------------------------------------------------------------
    @cached_property
    def uid(self) -> str:
        """Content hash (keys, shapes, values): the cache key of anything computed from this vector."""
        h = hashlib.sha256(f"{self.mode}|{self.base_id}".encode())
        for k in sorted(self.tensors):
            t = self.tensors[k].detach().to("cpu", torch.float32).contiguous()
            h.update(f"{k}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:20]

    @cached_property
    def _thresholds(self) -> dict[tuple[float, str | None], float]:
        return {}  # memo of top_threshold: a function of the (never written) tensors alone

    def top_threshold(self, density: float, key: str | None = None) -> float:
        """The magnitude of the k-th largest entry of tensor ``key`` (None: of the whole vector at once), k =
        round(density · entries) ≥ 1, so that the entries at or above it are the top ``density`` fraction (TIES's
        trim, :func:`arith.merge.ties`).  Memoised per vector: after the first request a trim is one comparison."""
        memo = self._thresholds
        if (density, key) not in memo:
            flat = (self.tensors[key].reshape(-1) if key is not None
                    else torch.cat([t.reshape(-1) for t in self.tensors.values()])).abs()
            keep = max(1, int(round(density * flat.numel())))
            memo[(density, key)] = float(flat.kthvalue(flat.numel() - keep + 1).values)
        return memo[(density, key)]

    def dare_mask(self, density: float, seed: int, key: str) -> torch.Tensor:
        """DARE's random keep-mask of tensor ``key`` (bool, on the tensor's device): each entry kept with probability
        ``density`` (:func:`arith.merge.dare`).  Drawn on the CPU from a generator seeded by (``seed``, this vector's
        content ``uid``, ``key``) in fp32 whatever torch's default dtype, so it is the same on every device, for
        every order of the merged vectors, and for equal vectors.  Memoised for the latest (density, seed) only, on
        the tensor's device: a slider move re-uses it, the memo holds one byte per entry, and sessions merging with
        other settings at the same time replace it under each other (each still gets its own masks, redrawn)."""
        memo = self.__dict__.get("_dare")
        if memo is None or memo[0] != (density, seed):
            memo = ((density, seed), {})
            self.__dict__["_dare"] = memo  # replaced whole: a reader holding the old memo keeps a consistent one
        masks = memo[1]
        if key not in masks:
            # a cut (TaskVector.cut) draws with its source's uid: DARE of full@attn is the attention part of DARE of full
            digest = hashlib.sha256(f"{seed}|{self.__dict__.get('_mask_uid', self.uid)}|{key}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
            t = self.tensors[key]
            masks[key] = (torch.rand(t.shape, generator=gen, dtype=torch.float32, device="cpu") < density).to(t.device)
        return masks[key]

    @property
    def linearized(self) -> bool:
        return self.mode in MODES and get_mode(self.mode).linearized

    @property
    def numel(self) -> int:
        """The number of entries the vector holds (read from shapes only: a DARE vector's drops are not drawn)."""
        tensors = getattr(self.tensors, "unmapped", self.tensors)
        return sum(t.numel() for t in tensors.values())

    # -- arithmetic (method.md §3) -------------------------------------------------------------------------------
    def _combine(self, other: TaskVector, sign: float) -> TaskVector:
        if other.base_id != self.base_id:
            raise TaskVectorError(f"cannot combine vectors of different bases ({self.base_id} vs {other.base_id})")
        if other.linearized != self.linearized:
            raise TaskVectorError("cannot combine a linearized-mode vector with a non-linear one")
        out = dict(self.tensors)
        for k, t in other.tensors.items():
            out[k] = out[k] + sign * t if k in out else sign * t
        mode = self.mode if self.mode == other.mode else f"{self.mode}+{other.mode}"
        op = "+" if sign > 0 else "-"
        meta = {Meta.DERIVED: f"{self._made()} {op} {other._made(grouped=True)}"}
        part = self.meta.get(Meta.PART) or other.meta.get(Meta.PART)
        if part:  # a sum with a cut is a cut too: it lacks tensors its mode trains (to_bytes refuses it)
            meta[Meta.PART] = part
        return TaskVector(out, f"{self.task}{op}{other.task}", mode, self.base_id, meta)

    def _made(self, grouped: bool = False) -> str:
        """How this vector was made, for a derived vector's ``Meta.DERIVED``: its task, or its own recipe."""
        made = self.meta.get(Meta.DERIVED)
        if made is None:
            return self.task
        return f"({made})" if grouped and (" + " in made or " - " in made) else made

    def __add__(self, other: TaskVector) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented  # τ + 3 is not defined (sum([...]) starts from 0: __radd__)
        return self._combine(other, 1.0)

    def __radd__(self, other) -> TaskVector:
        if isinstance(other, (int, float)) and other == 0:  # sum([a, b]) starts from 0
            return self
        return NotImplemented

    def __sub__(self, other: TaskVector) -> TaskVector:
        if not isinstance(other, TaskVector):
            return NotImplemented
        return self._combine(other, -1.0)

    def scale(self, coef: float) -> TaskVector:
        """coef · τ as a new vector (the tensors it holds, each multiplied); a NaN or infinite ``coef`` is refused.
        Metadata other than training provenance is kept (a cut's ``Meta.PART``, an import's note)."""
        if isinstance(coef, TaskVector):
            raise TypeError("a task vector times a task vector is not defined: scale by a number")
        coef = float(coef)
        if not math.isfinite(coef):
            raise TaskVectorError(f"cannot scale a task vector by {coef}: coefficients must be finite")
        return TaskVector({k: coef * t for k, t in self.tensors.items()}, self.task, self.mode, self.base_id,
                          self.derived_meta(f"{coef:g} × {{}}"))

    def derived_meta(self, how: str) -> dict[str, str]:
        """The metadata of a vector made from this one by ``how`` (``{}`` stands for this vector: its task, or how
        it was made in turn): this one's, less training provenance (``Meta.TRAINING``), plus ``Meta.DERIVED``."""
        meta = {k: v for k, v in self.meta.items() if k not in Meta.TRAINING}
        meta[Meta.DERIVED] = how.format(self._made(grouped=True))
        return meta

    def __mul__(self, coef: float) -> TaskVector:
        return self.scale(coef)

    __rmul__ = __mul__

    def __truediv__(self, coef: float) -> TaskVector:
        if float(coef) == 0.0:
            raise TaskVectorError("cannot divide a task vector by 0")
        return self.scale(1.0 / float(coef))

    def __neg__(self) -> TaskVector:
        return self.scale(-1.0)

    def cut(self, part: Mode | str) -> TaskVector:
        """τ with every entry outside the tensors ``part`` (a mode, or its name) trains set to 0: a mode view's vector
        (:class:`arith.modes.ModeView`, e.g. full fine-tuning's τ cut to the attention weights).  It stays a vector of
        τ's mode (a linearized one is still evaluated as the linear model, with the tangent on the kept tensors only);
        the kept tensors are τ's own, not copies, and its ``uid`` names (τ's uid, part) without hashing them.  τ itself
        when the part holds all of τ's tensors.  Memoised on τ (one object per part, living as long as τ does: a
        session's vector and its cuts go together), so the caches keyed by the cut's uid keep hitting."""
        part = get_mode(part) if isinstance(part, str) else part
        cuts = self.__dict__.setdefault("_cuts", {})
        if part.name in cuts:
            return cuts[part.name]
        kept = {k: t for k, t in self.tensors.items() if part.trains(k)}
        if not kept:
            raise TaskVectorError(f"{self.task} ({self.mode}) holds no tensor that {part.name!r} trains")
        if len(kept) == len(self.tensors):
            return self
        out = TaskVector(kept, self.task, self.mode, self.base_id, {**self.meta, Meta.PART: part.name})
        out.__dict__["uid"] = hashlib.sha256(f"{self.uid}|cut|{part.name}".encode()).hexdigest()[:20]
        out.__dict__["_mask_uid"] = self.__dict__.get("_mask_uid", self.uid)  # DARE's draws: the source's (dare_mask)
        return cuts.setdefault(part.name, out)

    # -- norms ------------------------------------------------------------------------------------------------------
    def norm(self) -> float:
        """‖τ‖: the L2 norm over every tensor the vector holds (in fp64)."""
        return math.sqrt(sum(float(t.double().pow(2).sum()) for t in self.tensors.values()))

    def layer_norms(self) -> dict[str, float]:
        """L2 norm per key (the per-layer profile the app plots)."""
        return {k: float(t.double().norm()) for k, t in self.tensors.items()}

    def block_norms(self) -> dict[str, float]:
        """L2 norm grouped by transformer block (``resblocks.<i>``) or top-level module (``conv1``, ``proj``, …)."""
        groups: dict[str, float] = {}
        for k, t in self.tensors.items():
            m = re.search(r"resblocks\.(\d+)\.", k)
            g = f"block {int(m.group(1)):02d}" if m else k.removeprefix("visual.").split(".")[0]
            groups[g] = groups.get(g, 0.0) + float(t.double().pow(2).sum())
        return {g: math.sqrt(v) for g, v in sorted(groups.items())}

    # -- files --------------------------------------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        """The file's string metadata: this library's versions and the time written (a trained vector's own, when
        it records them), the vector's ``meta``, then its format, kind, base, mode and task."""
        meta = {Meta.VERSIONS: json.dumps(library_versions(), sort_keys=True),
                Meta.CREATED: datetime.now(UTC).isoformat(timespec="seconds"), **self.meta}
        meta.update({Meta.FORMAT: FORMAT_VERSION, Meta.KIND: "task_vector", Meta.BASE: self.base_id,
                     Meta.MODE: self.mode, Meta.TASK: self.task})
        return meta

    def to_bytes(self) -> bytes:
        """The file's bytes (:meth:`save`); refuses a vector no mode describes, and a cut (a view's vector), which
        lacks tensors its mode trains, so no loader would read the file back."""
        if self.mode not in MODES:
            raise TaskVectorError(f"mode {self.mode!r}: a sum of vectors of different modes cannot be saved (a file "
                                  "has one mode, which says what its tensors are); save the vectors one by one")
        part = self.meta.get(Meta.PART)
        if part and part != self.mode:
            raise TaskVectorError(f"{self.task} is {self.mode}'s τ cut to {part!r} (a view): a {self.mode} file must "
                                  f"hold every tensor {self.mode} trains, so it cannot be saved; save the uncut "
                                  "vector (a view cuts it again when loaded)")
        tensors = {k: t.detach().to("cpu", torch.float32).contiguous() for k, t in self.tensors.items()}
        return st_save(tensors, metadata=self.metadata())

    def save(self, path: str | Path) -> Path:
        """Write the vector as a safetensors file with its metadata (atomically: a temporary file, then renamed;
        an existing file at ``path`` is replaced) and return the path.  A sum of vectors of different modes
        (mode ``"attn+full"``) is refused: no mode describes its tensors, so no loader could check it."""
        path = check_output_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        try:
            tmp.write_bytes(self.to_bytes())
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)  # after a failed write or rename: no stray .tmp beside the path
        return path


def check_output_path(path: str | Path, what: str = "task-vector file", example: str = "vector.safetensors") -> Path:
    """``path`` (``~`` expanded) as a ``what`` to write, or a ValueError when it cannot be one: a directory (the
    message suggests ``example`` in it), a path under a file, one of a bundle's own files
    (:func:`arith.index.bundle_file_at`: overwriting it would leave the bundle unloadable), or a folder that cannot
    be made or written to (its missing folders are made here).  Commands check it before they train or convert."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ValueError(f"{path} is a directory: give the {what} to write, e.g. {path / example}")
    owned = bundle_file_at(path)
    if owned is not None:
        root, rel = owned
        raise ValueError(f"{path} is the bundle {root}'s own {rel} (its manifest records the file's checksum, so "
                         f"writing over it would leave the bundle unloadable): write the {what} elsewhere")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"{path}: {parent} is a file, not a directory")
    try:  # the file is written beside a temporary one in this folder (save): it must exist and take new files
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{path}: cannot make its folder {path.parent} ({e.strerror or e})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{path}: no permission to write there")
    return path


def cosine_matrix(vectors: Sequence[TaskVector]) -> torch.Tensor:
    """Cosine similarity between flattened task vectors (keys missing from one count as zeros)."""
    n = len(vectors)
    out = torch.eye(n, dtype=torch.float64)
    norms = [v.norm() for v in vectors]
    for i in range(n):
        for j in range(i + 1, n):
            a, b = vectors[i].tensors, vectors[j].tensors
            dot = sum(float((a[k].double() * b[k].double()).sum()) for k in a.keys() & b.keys())
            denom = norms[i] * norms[j]
            out[i, j] = out[j, i] = dot / denom if denom > 0 else 0.0
    return out


# -- validation ---------------------------------------------------------------------------------------------------
_TORCH_FLOAT = {torch.float64, torch.float32, torch.float16, torch.bfloat16}


def as_base(base):
    """θ0 (an :class:`arith.models.Base`) of ``base``: itself, or a loaded bundle's ``base``."""
    return base.base if not hasattr(base, "shapes") and hasattr(base, "base") else base


def validate(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str], base,
             *, task: str | None = None, mode: str | None = None, assume_base: bool = False,
             check_weights: bool = True) -> TaskVector:
    """Check tensors + metadata against ``base`` (an :class:`arith.models.Base`) and build a fp32 TaskVector.

    Refuses, naming the key or field: missing metadata, an unknown format version or mode, a base-model id that is
    not ``base.id``, keys the base does not have, keys the mode does not train (metadata that lies), keys the mode
    trains but the file lacks, wrong shapes, non-float dtypes and NaN/Inf values.  ``task``/``mode`` fill in what
    the metadata lacks (files written by other tools); one that contradicts the metadata is refused, not applied
    (a full vector read as linear would be scored as another model).  The base-model id is never filled in from a
    string: ``assume_base`` takes a file that names no base as made for ``base`` (vectors written by other tools; its
    keys, shapes and values are checked all the same, but not which checkpoint it was fine-tuned from), while a file
    naming another base is refused as before.
    ``base`` may also be a loaded bundle (its θ0).  Fine-tuned weights offered as a vector are refused
    (:func:`check_not_weights`) unless ``check_weights`` is False: the caller took τ = θ_t − θ0 itself.
    """
    base = as_base(base)
    meta = dict(meta)
    for key, given in ((Meta.TASK, task), (Meta.MODE, mode)):
        if given is not None and meta.get(key) and meta[key] != given:
            raise TaskVectorError(f"metadata {key}={meta[key]!r}, not {given!r} as asked: the file says what it is")
        if given is not None:
            meta[key] = given
    meta.setdefault(Meta.FORMAT, FORMAT_VERSION)
    if meta[Meta.FORMAT] != FORMAT_VERSION:
        raise TaskVectorError(f"metadata {Meta.FORMAT}={meta[Meta.FORMAT]!r}: this version reads format {FORMAT_VERSION!r}")
    # what the file is, before what it lacks: no task or mode given for it would make it a task vector
    kind = meta.get(Meta.KIND, "task_vector")
    if kind != "task_vector":
        from .export import MERGED_KIND

        hint = ""
        if kind == MERGED_KIND:  # a linearized mode's merge is the linear model's point, not weights to subtract θ0 from
            hint = (" (a linearized mode's merged weights are the linear model's point θ0 + δ: neither a task vector "
                    "nor fine-tuned weights)"
                    if meta.get("arith.linearized") == "true" else
                    " (merged weights: load them as fine-tuned weights θ_t to take θ − θ0)")
        raise TaskVectorError(f"metadata {Meta.KIND}={kind!r}: not a task vector{hint}")
    if not tensors:
        raise TaskVectorError("the file holds no tensors")
    if check_weights:
        check_not_weights(tensors, base)
    claimed = meta.get(Meta.BASE) or (base.id if assume_base else None)
    # every field the caller must supply, named at once (one error per field would ask for them one at a time)
    missing = [k for k in (Meta.TASK, Meta.MODE) if not meta.get(k)] + ([] if claimed else [Meta.BASE])
    if missing:
        why = [w for w, keys in (("which task and mode it was fine-tuned for", {Meta.TASK, Meta.MODE}),
                                 ("which base model it is for", {Meta.BASE})) if keys & set(missing)]
        raise MissingMetadata(f"metadata lacks {', '.join(missing)}: cannot tell {' nor '.join(why)}", missing)
    if meta.get(Meta.MODE) not in MODES:
        raise TaskVectorError(f"metadata {Meta.MODE}={meta.get(Meta.MODE)!r}: unknown mode; known: {', '.join(MODES)}")
    if claimed != base.id:
        raise TaskVectorError(f"metadata {Meta.BASE}={claimed!r}: this vector was made for another base model "
                              f"(this one is {base.id!r})")
    for key in (Meta.STEPS, Meta.SEED):
        if key in meta and not re.fullmatch(r"\d+", meta[key]):
            raise TaskVectorError(f"metadata {key}={meta[key]!r} is not a non-negative integer")
    if Meta.LR in meta:
        try:
            float(meta[Meta.LR])
        except ValueError:
            raise TaskVectorError(f"metadata {Meta.LR}={meta[Meta.LR]!r} is not a number") from None

    m = get_mode(meta[Meta.MODE])
    shapes = base.shapes
    for key in sorted(tensors):
        t = tensors[key]
        if key not in shapes:
            raise TaskVectorError(f"{key}: not a parameter of the base model {base.spec.label}")
        if not m.trains(key):
            raise TaskVectorError(f"{key}: mode {m.name!r} does not train this tensor (metadata and contents disagree)")
        if t.dtype not in _TORCH_FLOAT:
            raise TaskVectorError(f"{key}: dtype {t.dtype} is not floating point")
        if tuple(t.shape) != shapes[key]:
            raise TaskVectorError(f"{key}: shape {tuple(t.shape)} but the base model has {shapes[key]}")
        if not torch.isfinite(t).all():
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            raise TaskVectorError(f"{key}: {nan + inf} non-finite value(s) ({nan} NaN, {inf} infinite) in "
                                  f"{str(t.dtype).removeprefix('torch.')}")
        big = int((~torch.isfinite(t.to(torch.float32))).sum()) if t.dtype == torch.float64 else 0  # kept in fp32
        if big:
            raise TaskVectorError(f"{key}: {big} value(s) beyond float32's range (±{torch.finfo(torch.float32).max:.3g}); "
                                  "task vectors are kept in fp32")
    absent = [k for k in m.trainable_keys(shapes) if k not in tensors]
    if absent:
        raise TaskVectorError(f"{absent[0]}: missing, but mode {m.name!r} trains it ({len(absent)} key(s) missing)")
    clean = {k: t.detach().to(torch.float32).clone() for k, t in tensors.items()}
    extra = {k: v for k, v in meta.items() if k not in (Meta.BASE, Meta.MODE, Meta.TASK)}
    return TaskVector(clean, meta[Meta.TASK], m.name, claimed, extra)


def load_task_vector(source, base, *, max_bytes: int = DEFAULT_MAX_BYTES, **overrides) -> TaskVector:
    """Read and validate a task-vector file (path, bytes or file object) against ``base`` (a :class:`Base`, or a
    bundle: its θ0).

    Raises :class:`SafetensorsError` for a malformed container and :class:`TaskVectorError` for contents that
    do not fit ``base``; both are ``ValueError`` with a message meant for the user.
    """
    tensors, meta = load_safetensors(source, max_bytes=max_bytes)
    return validate(tensors, meta, base, **overrides)


__all__ = ["TaskVector", "TaskVectorError", "MissingMetadata", "SafetensorsError", "check_not_weights", "validate",
           "load_task_vector", "cosine_matrix", "FLOAT_DTYPES", "library_versions"]
