"""Fuzzing the checkpoint loader: compressed checkpoints of a tiny llama (bitmask, Rice and N:M encodings) with
their weights file truncated, bit-flipped (in the header and in the data) or given an oversized header length,
and their record or config damaged; loaded with and without the record's hash check. Every case loads a model
or raises UserError (exit status 2 in every command), never another exception, within the per-case deadline
(tests/fuzzing.py)."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest
from fuzzing import mutated
from hypothesis import given
from hypothesis import strategies as st
from test_checkpoints import prune_rows
from transformers import AutoModelForCausalLM

from sparse_bench.harness_ext.checkpoints import (
    RECORD_NAME,
    load_checkpoint,
    save_checkpoint,
)
from sparse_bench.harness_ext.checkpoints.container import WEIGHTS_NAME
from sparse_bench.harness_ext.errors import UserError

FILES = [WEIGHTS_NAME, RECORD_NAME, "config.json"]


@pytest.fixture(scope="module")
def checkpoints(tiny_llama, tmp_path_factory) -> list[Path]:
    """Two compressed checkpoints: 90 % per row (bitmask / Rice) and 2:4 (N:M)."""
    root = tmp_path_factory.mktemp("fuzz_checkpoints")
    folders = []
    for label, options in (("rows90", {"sparsity": 0.9}), ("nm24", {"n_m": (2, 4)})):
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        prune_rows(model, **options)
        folders.append(save_checkpoint(model, None, root / label, {"method": label}, save_format="compressed"))
    return folders


@st.composite
def header_edit(draw, data: bytes) -> bytes:
    """The safetensors file with its 8-byte header length replaced (oversized, zero, off by a few) or a bit of
    its JSON header flipped."""
    (length,) = struct.unpack("<Q", data[:8])
    if draw(st.booleans()):
        new_length = draw(st.one_of(st.just(2**64 - 1), st.integers(0, 2**63), st.integers(length - 8, length + 8)))
        return struct.pack("<Q", max(new_length, 0)) + data[8:]
    at = draw(st.integers(8, 8 + length - 1))
    return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]


@given(data=st.data(), which=st.integers(0, 1), name=st.sampled_from(FILES), verify=st.booleans())
def test_damaged_checkpoints_load_or_refuse(checkpoints, tmp_path, data, which, name, verify):
    folder = tmp_path / "ckpt"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(checkpoints[which], folder)
    original = (folder / name).read_bytes()
    if name == WEIGHTS_NAME and data.draw(st.booleans()):
        damaged = data.draw(header_edit(original))
    else:
        damaged = data.draw(mutated([original]))
    (folder / name).write_bytes(damaged)
    try:
        model = load_checkpoint(AutoModelForCausalLM, folder, verify=verify)
    except UserError as error:
        assert "\n" not in str(error)
        return
    assert damaged == original or not verify or name != WEIGHTS_NAME, "a damaged weights file passed verification"
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize(("file", "edit", "message"), [
    ("config.json", ('"dtype": "float32"', '"dtype": "gloat32"'), "cannot read the config"),
    ("config.json", ('"initializer_range": 0.02', '"initializer_range": 1.02'), "cannot read the config"),
    ("config.json", ('"hidden_size": 64', '"iidden_size": 64'), "tensors have another shape than its config.json"),
    (RECORD_NAME, ("{", "\xfb"), "is not valid JSON"),
    (WEIGHTS_NAME, ("float32", "fload32"), "damaged header"),
])
def test_found_by_fuzzing(checkpoints, tmp_path, file, edit, message):
    """Damaged files that were tracebacks (AttributeError, StrictDataclassError, NotImplementedError from deep in
    transformers, UnicodeDecodeError, AttributeError from torch) before the loader checked them."""
    folder = shutil.copytree(checkpoints[0], tmp_path / "ckpt")
    path = folder / file
    data = path.read_bytes()
    old, new = (part.encode("latin-1") for part in edit)
    assert old in data
    path.write_bytes(data.replace(old, new, 1))
    with pytest.raises(UserError, match=message):
        load_checkpoint(AutoModelForCausalLM, folder, verify=False)
