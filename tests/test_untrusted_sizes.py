"""Size limits on untrusted files (arith/safefile.py): a file over the limit is refused by its size, before it is
read, whatever it holds, from a path, bytes or a file object."""

from __future__ import annotations

import io

import pytest
import torch
from safetensors.torch import save

from arith.safefile import SafetensorsError, load_safetensors, read_bytes


@pytest.mark.parametrize("over", [1, 50, 1000])
def test_a_file_over_the_limit_is_refused_by_its_size(tmp_path, over):
    data = save({"w": torch.zeros(64)})  # a valid file: only its size is wrong
    limit = len(data) - over
    path = tmp_path / "v.safetensors"
    path.write_bytes(data)
    for source in (path, data, io.BytesIO(data)):
        with pytest.raises(SafetensorsError, match=f"over the {limit}-byte limit"):
            load_safetensors(source, max_bytes=limit)
    assert read_bytes(path, len(data)) == data  # at the limit: read whole
