"""The one calibration loop on every model family: decoder-only (gpt2, opt, llama), encoder-only (bert, roberta,
deberta-v2) and encoder-decoder (bart, t5, m2m100), tiny models built from configs."""

from __future__ import annotations

import copy

import pytest
import torch
from tiny_models import AUTO_CLASSES, KINDS
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pruning.block_inputs import model_inputs
from sparse_bench.harness_ext.pruning.calibration import Stopwatch, layer_sequential
from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.masks import prune_count
from sparse_bench.harness_ext.pruning.plan import CalibrationConfig, OwlConfig
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.targets import find_target_layers, weight_matrix

METHODS = {  # name -> (shortcut_plan arguments, true_sequential)
    "magnitude": (("magnitude", 0.5, None), {}, False),
    "wanda": (("wanda", 0.5, None), {}, False),
    "sparsegpt": (("sparsegpt", 0.5, None), {}, False),
    "wanda-2:4": (("wanda", None, "2:4"), {}, False),
    "sparsegpt-owl": (("sparsegpt", 0.5, None), {"owl": OwlConfig(m=3.0, lmbda=0.08)}, False),
    "sparsegpt-true-sequential": (("sparsegpt", 0.5, None), {}, True),
}


@pytest.fixture(scope="module")
def dense_models(tiny_model_dirs):
    """{kind: (dense model, tokenizer)}, loaded once; tests prune deep copies."""
    cache = {}

    def get(kind):
        if kind not in cache:
            directory = tiny_model_dirs[kind]
            cache[kind] = (AUTO_CLASSES[kind].from_pretrained(directory).eval(),
                           AutoTokenizer.from_pretrained(directory))
        return cache[kind]
    return get


def _calibration(path, true_sequential=False):
    """8 x 24 tokens: more than the widest layer input (128), so SparseGPT's Hessians have full rank; with
    fewer tokens, near-singular Hessians turn float rounding (which the batch size changes) into other masks."""
    return CalibrationConfig(data=str(path), nsamples=8, seqlen=24, seed=0, true_sequential=true_sequential)


def _masks(model):
    return {name: weight_matrix(module) != 0 for name, module in find_target_layers(model).items()}


@pytest.mark.parametrize("kind", KINDS)
def test_the_loop_feeds_each_block_what_the_model_itself_feeds_it(kind, dense_models, tiny_calibration_file):
    model, tokenizer = dense_models(kind)
    tokens, _, _ = calibration_tokens(_calibration(tiny_calibration_file), tokenizer)
    with torch.no_grad():
        output = model(**model_inputs(model, tokens), output_hidden_states=True)
    if model.config.is_encoder_decoder:
        expected = list(output.encoder_hidden_states[:-1]) + list(output.decoder_hidden_states[:-1])
    else:
        expected = list(output.hidden_states[:-1])
    seen = [(step.name, step.inputs.hidden.clone())  # a step's inputs are current while it is yielded
            for step in layer_sequential(model, tokens, batch_size=3, stopwatch=Stopwatch(), progress=False)]
    assert len(seen) == len(expected)
    for (name, hidden), reference in zip(seen, expected):
        torch.testing.assert_close(hidden, reference, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_every_method_prunes_every_family_exactly_whatever_the_batch_size(kind, method, dense_models,
                                                                          tiny_calibration_file):
    (name, sparsity, structure), options, true_sequential = METHODS[method]
    dense, tokenizer = dense_models(kind)
    masks = []
    for batch_size in (2, 4) if name != "magnitude" else (4,):
        model = copy.deepcopy(dense)
        report = prune(model, shortcut_plan(name, sparsity, structure, **options),
                       _calibration(tiny_calibration_file, true_sequential), tokenizer, progress=False,
                       batch_size=batch_size)
        masks.append(_masks(model))
    assert masks[0].keys() == masks[-1].keys() and masks[0]
    for layer, keep in masks[0].items():
        assert torch.equal(keep, masks[-1][layer]), f"{layer}: mask depends on the batch size"
        zeros, target = int((~keep).sum()), report.layers[layer].target_sparsity
        if structure:
            assert bool(((~keep).reshape(-1, 4).sum(dim=1) == 2).all()), layer
        elif name == "wanda":
            assert zeros == keep.shape[0] * prune_count(keep.shape[1], target), layer
        else:
            assert zeros == prune_count(keep.numel(), target), layer
    if "owl" in options:
        assert len({layer.target_sparsity for layer in report.layers.values()}) > 1  # spread over blocks
    assert report.overall_sparsity == pytest.approx(0.5, abs=0.01)


def _wanda_mask_from_inputs(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Wanda (Sun et al. 2023) from scratch: per row, keep the half with the largest |W_ij| * ||X_j||."""
    norms = inputs.reshape(-1, inputs.shape[-1]).double().norm(dim=0)
    scores = weight.abs().double() * norms
    pruned = torch.argsort(scores, dim=1, stable=True)[:, :weight.shape[1] // 2]
    return torch.ones_like(weight, dtype=torch.bool).scatter_(1, pruned, False)


def test_bart_cross_attention_is_calibrated_on_the_pruned_encoders_outputs(dense_models, tiny_calibration_file):
    dense, tokenizer = dense_models("bart")
    layer = "model.decoder.layers.0.encoder_attn.k_proj"
    calibration = _calibration(tiny_calibration_file)
    model = copy.deepcopy(dense)
    prune(model, shortcut_plan("wanda", 0.5), calibration, tokenizer, progress=False)
    engine_mask = _masks(model)[layer]

    tokens, _, _ = calibration_tokens(calibration, tokenizer)
    independent = {}
    for encoder in ("pruned", "dense"):
        reference = copy.deepcopy(dense)
        if encoder == "pruned":  # the encoder pruned alone, as the full run prunes it before the decoder
            prune(reference, shortcut_plan("wanda", 0.5, targets=("re:model\\.encoder\\.layers\\..*",)),
                  calibration, tokenizer, progress=False)
        seen = []
        module = reference.get_submodule(layer)
        handle = module.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
        with torch.no_grad():
            reference(**model_inputs(reference, tokens))
        handle.remove()
        independent[encoder] = _wanda_mask_from_inputs(module.weight.detach(), torch.cat(seen))
    assert torch.equal(engine_mask, independent["pruned"])
    assert not torch.equal(engine_mask, independent["dense"])


def test_nm_on_a_width_not_divisible_by_m_is_refused_before_any_change(dense_models, tiny_calibration_file):
    for kind in ("roberta", "t5"):
        dense, tokenizer = dense_models(kind)
        model = copy.deepcopy(dense)
        with pytest.raises(UserError, match="not a multiple of 5|multiple"):
            prune(model, shortcut_plan("wanda", None, "2:5"), _calibration(tiny_calibration_file), tokenizer,
                  progress=False)
        assert all(bool(keep.all()) for keep in _masks(model).values())


def test_a_model_that_changes_hidden_states_between_blocks_is_refused(tiny_model_dirs, dense_models,
                                                                     tiny_calibration_file):
    _, tokenizer = dense_models("deberta-v2")
    config = AutoConfig.from_pretrained(tiny_model_dirs["deberta-v2"])
    config.conv_kernel_size = 3
    model = AutoModelForMaskedLM.from_config(config).eval()  # DeBERTa-v2's conv layer after block 0
    with pytest.raises(UserError, match="changes the hidden states between .*layer.0 and .*layer.1"):
        prune(model, shortcut_plan("wanda", 0.5), _calibration(tiny_calibration_file), tokenizer, progress=False)
    assert all(bool(keep.all()) for keep in _masks(model).values())
