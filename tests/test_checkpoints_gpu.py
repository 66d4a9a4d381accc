"""Checkpoints on a CUDA device (skipped without one): a compressed checkpoint loads onto the GPU exactly,
and sizes of a model that lives on the GPU equal those of the same model on the CPU."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from sparse_bench.harness_ext.checkpoints import checkpoint_sizes, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_pruned_llama(dtype: torch.dtype) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config).to(dtype)
    with torch.no_grad():
        for layer in model.model.layers:
            for linear in (layer.mlp.up_proj, layer.mlp.down_proj, layer.self_attn.q_proj):
                groups = linear.weight.data.reshape(-1, 4)
                groups.scatter_(1, groups.abs().topk(2, dim=1, largest=False).indices, 0)
            weight = layer.mlp.gate_proj.weight
            weight[weight.abs() < weight.abs().float().quantile(0.9).to(weight.dtype)] = 0
    return model


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compressed_checkpoint_loads_onto_the_gpu_exactly(tmp_path, dtype):
    model = small_pruned_llama(dtype)
    out = save_checkpoint(model, None, tmp_path / "ckpt", save_format="compressed")
    loaded = load_checkpoint(AutoModelForCausalLM, out, device_map={"": "cuda:0"}, dtype="auto")
    assert loaded.model.layers[0].mlp.up_proj.weight.device.type == "cuda"
    expected = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == dtype and torch.equal(tensor.cpu(), expected[name]), name


def test_sizes_of_a_gpu_model_equal_the_cpu_figures():
    model = small_pruned_llama(torch.float16)
    on_cpu = checkpoint_sizes(model)
    on_gpu = checkpoint_sizes(model.to("cuda:0"))
    assert on_gpu == on_cpu
    assert on_gpu["encodings"]["nm"] == 6
