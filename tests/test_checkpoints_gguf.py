"""A model read from the bundled GGUF (it carries `hf_quantizer` and `quantization_config`) saves dense and
compressed and loads back bit for bit; the model keeps its quantizer attributes afterwards. Slow: ~15 s load."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from sparse_bench.harness_ext.checkpoints import checkpoint_sizes, load_checkpoint, save_checkpoint
from sparse_bench.harness_ext.errors import UserError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gguf_model():
    from sparse_bench.harness_ext.models import GGUF_FILE, _gguf_folder

    try:
        folder = _gguf_folder()
    except UserError as error:
        pytest.skip(str(error))
    model = load_checkpoint(AutoModelForCausalLM, folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers[:4]:
            for linear in (layer.mlp.up_proj, layer.self_attn.q_proj):
                groups = linear.weight.data.reshape(-1, 4)
                groups.scatter_(1, groups.abs().topk(2, dim=1, largest=False).indices, 0)
    return model


@pytest.mark.parametrize("save_format", ["dense", "compressed"])
def test_gguf_model_round_trips(gguf_model, tmp_path, save_format):
    assert gguf_model.hf_quantizer is not None
    out = save_checkpoint(gguf_model, None, tmp_path / save_format, save_format=save_format)
    assert gguf_model.hf_quantizer is not None and hasattr(gguf_model.config, "quantization_config")
    loaded = load_checkpoint(AutoModelForCausalLM, out)
    assert getattr(loaded, "hf_quantizer", None) is None
    expected = gguf_model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    if save_format == "compressed":
        assert checkpoint_sizes(out)["encodings"]["nm"] == 8
