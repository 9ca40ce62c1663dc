"""sdlora.tensorfile: the one safetensors reader; a torn or foreign file is one line naming the file."""

from __future__ import annotations

import pickle

import pytest
import torch
from safetensors.torch import save_file

from sdlora.errors import SdloraError
from sdlora.tensorfile import read_safetensors


def test_reads_tensors_and_metadata_or_the_header_alone(tmp_path):
    path = tmp_path / "a.safetensors"
    save_file({"w": torch.arange(6.0).reshape(2, 3)}, str(path), metadata={"ss_steps": "7"})
    tensors, meta = read_safetensors(path)
    assert torch.equal(tensors["w"], torch.arange(6.0).reshape(2, 3)) and meta == {"ss_steps": "7"}
    assert read_safetensors(path, tensors=False) == ({}, {"ss_steps": "7"})


@pytest.mark.parametrize("kind, fragment", [("torn", "not a readable .safetensors file"),
                                            ("garbage", "not a readable .safetensors file (no valid header)"),
                                            ("pickle", "pickled PyTorch checkpoint"), ("missing", "no such file")])
def test_a_torn_or_foreign_file_is_one_line_naming_it(tmp_path, kind, fragment):
    path = tmp_path / "x.safetensors"
    if kind in ("torn", "garbage"):
        save_file({"w": torch.zeros(64, 64)}, str(path))
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2] if kind == "torn" else b"\x00\x01garbage" * 50)
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"w": [1, 2]}))
    with pytest.raises(SdloraError) as err:
        read_safetensors(path, label=f"cache file {path}", advice="delete it")
    message = str(err.value)
    assert message.startswith(f"cache file {path}: ") and fragment in message and "\n" not in message
    if kind == "torn":
        assert message.endswith("delete it")
