"""Target discovery and measured sparsity on tiny Llama, GPT-2 (Conv1D), OPT, BERT and BART models."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pruning.report import report_as_loaded
from sparse_bench.harness_ext.pruning.targets import find_target_layers, transformer_blocks, weight_matrix


def _load(dirs, kind):
    cls = AutoModelForCausalLM if kind in ("llama", "gpt2", "opt") else AutoModel
    return cls.from_pretrained(dirs[kind])


@pytest.mark.parametrize("kind, per_block, layer_type", [("llama", 7, nn.Linear), ("gpt2", 4, Conv1D),
                                                         ("opt", 6, nn.Linear)])
def test_default_targets_are_block_layers_only(tiny_model_dirs, kind, per_block, layer_type):
    model = _load(tiny_model_dirs, kind)
    layers = find_target_layers(model)
    assert len(layers) == 2 * per_block
    assert all(isinstance(module, layer_type) for module in layers.values())
    assert not any("lm_head" in name or "embed" in name or name.endswith("wte") for name in layers)
    blocks = [name for name, _ in transformer_blocks(model)]
    assert len(blocks) == 2 and all(any(layer.startswith(b + ".") for layer in layers) for b in blocks)


def test_conv1d_weight_matrix_is_out_by_in(tiny_model_dirs):
    model = _load(tiny_model_dirs, "gpt2")
    c_fc = model.transformer.h[0].mlp.c_fc
    matrix = weight_matrix(c_fc)
    assert matrix.shape == (c_fc.nf, c_fc.weight.shape[0])
    matrix[0, 1] = 123.0  # the view writes the parameter
    assert c_fc.weight[1, 0] == 123.0


def test_names_regexes_containers_and_class_names(tiny_model_dirs):
    model = _load(tiny_model_dirs, "llama")
    assert list(find_target_layers(model, ["model.layers.0.mlp.down_proj"])) == ["model.layers.0.mlp.down_proj"]
    assert len(find_target_layers(model, [r"re:.*\.self_attn\..*"])) == 8
    assert len(find_target_layers(model, ["model.layers.1"])) == 7
    every_linear = find_target_layers(model, ["Linear"])
    assert "lm_head" not in every_linear and len(every_linear) == 14
    assert "lm_head" in find_target_layers(model, ["Linear"], ignore=())
    kept = find_target_layers(model, ignore=["lm_head", r"re:.*mlp.*"])
    assert len(kept) == 8 and not any("mlp" in name for name in kept)


def test_encoder_and_encoder_decoder_stacks(tiny_model_dirs):
    assert len(find_target_layers(_load(tiny_model_dirs, "bert"))) == 12
    bart_blocks = transformer_blocks(_load(tiny_model_dirs, "bart"))
    assert [name.rsplit(".", 1)[0] for name, _ in bart_blocks] == ["encoder.layers"] * 2 + ["decoder.layers"] * 2


@pytest.mark.parametrize("targets, ignore, message", [
    (["model.layers.9.mlp.up_proj"], ("lm_head",), "matches no Linear"),
    ([r"re:.*nonsense.*"], ("lm_head",), "matches no Linear"),
    ([], ("lm_head", "model.layers.0.mlp.up_projj"), "ignore entry"),
    ([], ("lm_head", r"re:model\..*"), "no layer"),
    (["re:[unclosed"], ("lm_head",), "bad regex"),
])
def test_bad_patterns_are_user_errors(tiny_model_dirs, targets, ignore, message):
    with pytest.raises(UserError, match=message):
        find_target_layers(_load(tiny_model_dirs, "llama"), targets, ignore)


def test_architecture_without_blocks_is_a_user_error():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    with pytest.raises(UserError, match="cannot find the transformer blocks"):
        find_target_layers(model)
    assert list(find_target_layers(model, ["0"])) == ["0"]  # explicit targets still work


def test_report_as_loaded_counts_exact_zeros_and_tied_weights_once(tiny_model_dirs):
    model = _load(tiny_model_dirs, "llama")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    report = report_as_loaded(model)
    assert report.zeros == 0 and report.overall_sparsity == 0.0
    unique_total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    assert report.total_params == unique_total == report.nonzero_params
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, :10] = 0  # 64 rows x 10
        model.model.embed_tokens.weight[0] = 0  # not a target, but counted in nonzero_params once
    report = report_as_loaded(model)
    assert report.layers["model.layers.0.mlp.down_proj"].zeros == 640
    assert report.zeros == 640
    assert report.nonzero_params == unique_total - 640 - model.config.hidden_size
    record = report.to_dict()
    assert record["layers"]["model.layers.0.mlp.down_proj"]["sparsity"] == pytest.approx(640 / (64 * 128))
    assert set(record) >= {"overall_sparsity", "zeros", "numel", "nonzero_params", "total_params", "layers",
                           "plan", "calibration", "prune_seconds", "calibration_seconds", "peak_rss_bytes",
                           "warnings"}
