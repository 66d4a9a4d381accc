"""`sparse-bench size DIR [--json]` through the real command group: figures, table, and one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from sparse_bench.harness_ext.checkpoints import checkpoint_sizes, save_checkpoint
from sparse_bench.harness_ext.cli import main


@pytest.fixture(scope="module")
def pruned_dirs(tiny_llama, tmp_path_factory):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (layer.mlp.up_proj, layer.mlp.down_proj, layer.self_attn.q_proj):
                linear.weight[linear.weight.abs() < linear.weight.abs().quantile(0.9)] = 0.0
    root = tmp_path_factory.mktemp("size_cli")
    return {fmt: save_checkpoint(model, None, root / fmt, {"method": "test"}, fmt) for fmt in ("dense", "compressed")}


def test_size_json_equals_checkpoint_sizes(pruned_dirs):
    result = CliRunner().invoke(main, ["size", str(pruned_dirs["compressed"]), "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    expected = json.loads(json.dumps(checkpoint_sizes(pruned_dirs["compressed"]), default=str))
    assert figures == expected
    assert figures["save_format"] == "compressed" and figures["prune_record"] == {"method": "test"}
    assert set(figures["by_dtype"]) == {"float32", "float16", "bfloat16"}
    assert figures["compressed_bytes"] == figures["files"]["model.sparse.safetensors"]


def test_size_table_for_a_dense_checkpoint(pruned_dirs):
    result = CliRunner().invoke(main, ["size", str(pruned_dirs["dense"])])
    assert result.exit_code == 0, result.output
    assert "| float16" in result.output and "compressed vs bound" in result.output
    assert "model.safetensors" in result.output


def test_size_errors_are_one_line_exit_2(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = CliRunner().invoke(main, ["size", str(tmp_path)])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no .safetensors weights" in result.output


def test_size_help_has_an_example():
    result = CliRunner().invoke(main, ["size", "--help"])
    assert result.exit_code == 0 and "sparse-bench size" in result.output and "--json" in result.output
