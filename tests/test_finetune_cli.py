"""`sparse-bench finetune` on the command line: a run prints its summary; every bad input gets one line
`error: ...`, exit status 2, and writes nothing; CUDA-only options are refused without a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sparse_bench.harness_ext.cli import main

FAST = ["--max-steps", "1", "--batch-size", "2", "--limit", "4", "--eval-limit", "4", "--max-length", "96",
        "--no-progress"]


def run(*args):
    return CliRunner().invoke(main, ["finetune", *map(str, args)])


def error_line(result) -> str:
    """The one `error: ...` line a refused run ends with (transformers' loading bars may come before it)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    last = result.stderr.rstrip("\n").rsplit("\n", 1)[-1].split("\r")[-1]
    assert last.startswith("error: ") and result.stderr.count("error: ") == 1
    return last


def test_cli_run_prints_summary_and_json(tiny_llama, tmp_path):
    result = run(tiny_llama, *FAST, "--mode", "lora", "--lora-r", "2", "--out", tmp_path / "ft", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["mode"] == "lora" and record["steps"] == 1 and record["data"]["name"] == "mrpc"
    assert (tmp_path / "ft" / "config.json").is_file()


@pytest.mark.parametrize("arguments, message", [
    (["--mode", "adapter"], "unknown fine-tuning mode 'adapter'"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--max-steps", "0"], "--max-steps must be > 0"),
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--data", "nowhere.jsonl"], "neither mrpc, billsum nor an existing JSON-lines file"),
    (["--require-sparse"], "--require-sparse: no pruned layer"),
    (["--save-format", "compressed"], "has no zeros to compress"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_llama, tmp_path, arguments, message):
    assert message in error_line(run(tiny_llama, *FAST, *arguments, "--out", tmp_path / "ft"))
    assert list(tmp_path.iterdir()) == []


def test_data_file_without_fields_is_refused(tiny_llama, tmp_path):
    data = tmp_path / "notes.jsonl"
    data.write_text('{"text": "a bill", "abstract": "no summary field"}\n', encoding="utf-8")
    assert "line 1: no summary string" in error_line(run(tiny_llama, *FAST, "--data", data, "--out", tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("arguments, what", [(["--mode", "qlora"], "qlora needs a CUDA GPU"),
                                             (["--precision", "fp16-amp"], "fp16-amp needs a CUDA GPU")])
def test_cuda_only_options_refused_on_cpu(tiny_llama, tmp_path, arguments, what):
    assert what in error_line(run(tiny_llama, *FAST, *arguments, "--out", tmp_path / "ft"))
    assert list(tmp_path.iterdir()) == []
