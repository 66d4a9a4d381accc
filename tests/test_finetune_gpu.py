"""QLoRA (bitsandbytes 4-bit base) and fp16 autocast with a gradient scaler: CUDA only, so these run where a GPU
is present and skip elsewhere."""

from __future__ import annotations

import pytest
import torch

from sparse_bench.harness_ext.checkpoints import load_checkpoint, save_checkpoint
from sparse_bench.harness_ext.finetune import FinetuneConfig, finetune
from sparse_bench.harness_ext.models import load_model
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.targets import find_target_layers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="QLoRA and fp16-amp need a CUDA GPU")
RUN = {"data": "mrpc", "max_steps": 3, "batch_size": 4, "limit": 12, "eval_limit": 8, "max_length": 128, "device": "cuda"}


def _pruned(tiny_llama, tmp_path):
    model, tokenizer = load_model(str(tiny_llama))
    prune(model, shortcut_plan("magnitude", 0.5), None, tokenizer, progress=False)
    return save_checkpoint(model, tokenizer, tmp_path / "llama50")


def _zero_maps(path):
    from transformers import AutoModelForCausalLM

    model = load_checkpoint(AutoModelForCausalLM, path)
    return {name: module.weight == 0 for name, module in find_target_layers(model).items()}


@pytest.mark.parametrize("mode, precision", [("qlora", "bf16-amp"), ("full", "fp16-amp"), ("lora", "fp16-amp")])
def test_cuda_modes_keep_every_zero(tiny_llama, tmp_path, mode, precision):
    pytest.importorskip("bitsandbytes") if mode == "qlora" else None
    pruned = _pruned(tiny_llama, tmp_path)
    record = finetune(str(pruned), FinetuneConfig(mode=mode, precision=precision, lr=1e-3, **RUN),
                      tmp_path / "ft", progress=False)
    before, after = _zero_maps(pruned), _zero_maps(tmp_path / "ft")
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert record["peak_cuda_bytes"] > 0 and record["precision"] == precision
