"""A strict reader for untrusted safetensors files.

The ``safetensors`` library parses the format safely, but its errors are terse and it reads whatever size it is
given.  This module checks the container first — size cap before reading, the 8-byte header length, the JSON
header, dtypes, shapes and byte ranges — and says exactly what is wrong, then hands the bytes to
``safetensors.torch.load``.  Nothing here unpickles anything: a pickle or a zip (``torch.save``) renamed
``.safetensors`` is recognised and refused.

Format (huggingface/safetensors): u64 little-endian N, N bytes of UTF-8 JSON
``{"name": {"dtype", "shape", "data_offsets": [begin, end]}, ..., "__metadata__": {str: str}}``, then the data
section; offsets are relative to it, tensors are contiguous, non-overlapping and cover it exactly.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import BinaryIO

import torch
from safetensors.torch import load as st_load

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB: a ViT-L/14 image-encoder task vector is ~1.2 GB in fp32
# The safetensors library allows 100 MB of header, which takes ~1 minute and GBs of memory to parse when it lists
# millions of tiny tensors.  The header of a real image-encoder task vector is small (ViT-L/14: ~300 tensors, ~40 kB;
# ViT-bigG/14 under 200 kB), so 4 MiB is ample and bounds the work a hostile header can cause (~2 s).
MAX_HEADER_BYTES = 4 * 1024**2

DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


class SafetensorsError(ValueError):
    """A file is not a well-formed safetensors file; the message says what and where."""


def _sniff(prefix: bytes) -> str | None:
    if prefix.startswith(b"PK\x03\x04"):
        return ("a zip archive (what torch.save writes), not safetensors; it is never unpickled here (a checkpoint of "
                "fine-tuned weights? `python -m arith import` converts it, reading it with weights_only=True)")
    if prefix[:1] == b"\x80" and prefix[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"}:
        return "a Python pickle, not safetensors; it is never unpickled here"
    if prefix.startswith(b"\x1f\x8b"):
        return "gzip-compressed data, not safetensors"
    return None


def _garbage(data: bytes) -> str | None:
    """What a file whose first 8 bytes give an impossible header length most likely is, when the byte after them
    is not the ``{`` that opens every safetensors header (as opposed to a real header cut short)."""
    if data[8:9] in (b"{", b""):  # a header, or nothing after the length: a file cut short
        return None
    head, text = data[:64], None
    for cut in range(4):  # a multi-byte character may straddle byte 64
        try:
            text = head[:len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    text = text and text.removeprefix("\ufeff")  # a byte-order mark opens some text files
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        return f"the file is text (it begins {text[:24]!r}), not safetensors"
    return "not a safetensors file: its first 8 bytes are not a header length and no JSON header follows them"


def _no_duplicates(pairs):
    seen = {}
    for k, v in pairs:
        if k in seen:
            raise SafetensorsError(f"header lists {k!r} twice")
        seen[k] = v
    return seen


def parse_header(data: bytes, file_size: int | None = None) -> tuple[dict, dict[str, str]]:
    """Validate the container of ``data`` (the whole file) and return (tensor entries, metadata)."""
    size = len(data) if file_size is None else file_size
    if size == 0:
        raise SafetensorsError("the file is empty")
    kind = _sniff(data[:8])
    if kind:
        raise SafetensorsError(f"the file is {kind}")
    if size < 8:
        raise SafetensorsError(f"the file is {size} bytes: too short for the 8-byte header length of safetensors")
    n = int.from_bytes(data[:8], "little")
    garbage = _garbage(data) if n > MAX_HEADER_BYTES or 8 + n > size else None
    if garbage:
        raise SafetensorsError(garbage)
    if n > MAX_HEADER_BYTES:
        raise SafetensorsError(f"header length {n} bytes is over the {MAX_HEADER_BYTES}-byte cap")
    if 8 + n > size:
        raise SafetensorsError(f"header length {n} runs past the end of the file ({size} bytes): truncated or not safetensors")
    raw = data[8:8 + n]
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsError:
        raise
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SafetensorsError(f"header is not valid UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise SafetensorsError(f"__metadata__ must be a JSON object, not {type(metadata).__name__}")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise SafetensorsError("__metadata__ must map strings to strings")

    data_len = size - 8 - n
    spans = []
    for key, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{key}: entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offs = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPE_SIZES:
            raise SafetensorsError(f"{key}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise SafetensorsError(f"{key}: shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offs, list) or len(offs) != 2
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in offs)):
            raise SafetensorsError(f"{key}: data_offsets {offs!r} is not a pair of integers")
        begin, end = offs
        if not 0 <= begin <= end <= data_len:
            raise SafetensorsError(f"{key}: data_offsets {offs} fall outside the {data_len}-byte data section")
        expected = math.prod(shape) * DTYPE_SIZES[dtype]
        if end - begin != expected:
            raise SafetensorsError(f"{key}: {end - begin} bytes of data for shape {shape} {dtype} (expected {expected})")
        spans.append((begin, end, key))
    spans.sort()
    pos, prev, prev_begin = 0, None, None
    for begin, end, key in spans:
        if begin == prev_begin and end == pos and end > begin:
            raise SafetensorsError(f"{key}: data_offsets {[begin, end]} are the same bytes as {prev}'s")
        if begin < pos:
            raise SafetensorsError(f"{key}: data overlaps {prev}")
        if begin > pos:
            raise SafetensorsError(f"{key}: gap of {begin - pos} bytes before its data")
        pos, prev, prev_begin = end, key, begin
    if pos != data_len:
        raise SafetensorsError(f"{data_len - pos} trailing bytes after the last tensor")
    return header, metadata


def read_bytes(source: str | os.PathLike | bytes | BinaryIO, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The bytes of ``source`` (a path, bytes or a file object), refusing anything over ``max_bytes`` before
    reading it whole."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if len(data) > max_bytes:
            raise SafetensorsError(f"file is {len(data)} bytes, over the {max_bytes}-byte limit")
        return data
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if path.is_dir():
            raise SafetensorsError(f"{path} is a directory, not a safetensors file")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")  # not errno's "[Errno 2] No such file or directory: …"
        size = path.stat().st_size
        if size > max_bytes:
            raise SafetensorsError(f"{path.name} is {size} bytes, over the {max_bytes}-byte limit")
        with open(path, "rb") as fh:
            return fh.read(max_bytes + 1)
    size = getattr(source, "size", None)  # e.g. Streamlit's UploadedFile
    if isinstance(size, int) and size > max_bytes:
        raise SafetensorsError(f"file is {size} bytes, over the {max_bytes}-byte limit")
    data = source.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise SafetensorsError(f"file is over the {max_bytes}-byte limit")
    return data


def load_safetensors(source, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read an untrusted safetensors file: (tensors, metadata), or a :class:`SafetensorsError` saying why not."""
    data = read_bytes(source, max_bytes)
    _, metadata = parse_header(data)
    try:
        tensors = st_load(data)
    except Exception as e:  # the library's own checks, should ours have missed something
        raise SafetensorsError(f"safetensors could not read the file: {e}") from None
    return tensors, metadata
