"""The pruning engine on tiny models: exact sparsity, N:M groups, global scope, the methods' math, determinism."""

from __future__ import annotations

import hashlib
import weakref

import numpy as np
import pytest
import torch
import torch.nn.utils.prune
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.magnitude import magnitude_mask
from sparse_bench.harness_ext.pruning.masks import prune_count
from sparse_bench.harness_ext.pruning.plan import (
    CalibrationConfig,
    NMStructure,
    OwlConfig,
    PruneStep,
    PruningPlan,
)
from sparse_bench.harness_ext.pruning.reproducible import one_cpu_thread
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.sparsegpt import inverse_hessian_factor, sparsegpt_prune
from sparse_bench.harness_ext.pruning.targets import find_target_layers, weight_matrix
from sparse_bench.harness_ext.pruning.wanda import wanda_mask

CALIBRATION = CalibrationConfig(data="c4", nsamples=8, seqlen=64, seed=0)


def _model(dirs, kind="llama", dtype=torch.float32):
    return AutoModelForCausalLM.from_pretrained(dirs[kind], dtype=dtype), AutoTokenizer.from_pretrained(dirs[kind])


def _prune(dirs, method, sparsity=None, structure=None, kind="llama", batch_size=None, **options):
    model, tokenizer = _model(dirs, kind)
    plan = shortcut_plan(method, sparsity, structure, **options)
    report = prune(model, plan, CALIBRATION, tokenizer, progress=False, batch_size=batch_size)
    return model, report


def _mask_digest(model) -> str:
    digest = hashlib.sha256()
    for name, module in find_target_layers(model).items():
        digest.update(name.encode())
        digest.update((weight_matrix(module) != 0).numpy().tobytes())
    return digest.hexdigest()


def _expected_zeros(method, rows, columns, sparsity):
    if method == "wanda":  # per output row
        return rows * prune_count(columns, sparsity)
    return prune_count(rows * columns, sparsity)  # per layer (magnitude) / per layer in blocks (SparseGPT)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.99])
def test_unstructured_sparsity_is_exact_per_layer(tiny_model_dirs, method, sparsity):
    model, report = _prune(tiny_model_dirs, method, sparsity)
    for name, module in find_target_layers(model).items():
        rows, columns = weight_matrix(module).shape
        layer = report.layers[name]
        assert layer.zeros == _expected_zeros(method, rows, columns, sparsity), name
        assert layer.target_sparsity == sparsity
        assert int((module.weight == 0).sum()) == layer.zeros
    assert report.overall_sparsity == pytest.approx(sparsity, abs=0.01)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("structure", ["2:4", "4:8", "1:4", "3:8"])
def test_nm_holds_group_by_group(tiny_model_dirs, method, structure):
    n, m = map(int, structure.split(":"))
    model, report = _prune(tiny_model_dirs, method, structure=structure)
    for name, module in find_target_layers(model).items():
        groups = weight_matrix(module).reshape(-1, m)
        nonzero_per_group = (groups != 0).sum(dim=1)
        assert bool((nonzero_per_group == n).all()), name  # random weights: exactly n survive in every group
    assert report.overall_sparsity == pytest.approx(1 - n / m)


def test_gpt2_conv1d_and_opt_are_pruned(tiny_model_dirs):
    for kind in ("gpt2", "opt"):
        for method in ("magnitude", "wanda", "sparsegpt"):
            model, report = _prune(tiny_model_dirs, method, structure="2:4", kind=kind)
            for name, module in find_target_layers(model).items():
                groups = weight_matrix(module).reshape(-1, 4)
                assert bool(((groups != 0).sum(dim=1) <= 2).all()), (kind, method, name)
            assert report.overall_sparsity >= 0.5


def test_global_and_layer_magnitude_differ_on_unequal_scales(tiny_model_dirs):
    def scaled_model():
        model, _ = _model(tiny_model_dirs)
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(10.0)
            model.model.layers[1].self_attn.q_proj.weight.mul_(0.1)
        return model

    layer_model, global_model = scaled_model(), scaled_model()
    layer_report = prune(layer_model, shortcut_plan("magnitude", 0.5), progress=False)
    global_report = prune(global_model, shortcut_plan("magnitude", 0.5, scope="global"), progress=False)
    assert all(layer.sparsity == 0.5 for layer in layer_report.layers.values())
    sparsities = {name: layer.sparsity for name, layer in global_report.layers.items()}
    assert sparsities["model.layers.0.mlp.down_proj"] < 0.1
    assert sparsities["model.layers.1.self_attn.q_proj"] > 0.9
    assert global_report.zeros == prune_count(global_report.numel, 0.5)  # one exact global threshold
    # the global threshold equals torch's own global L1 pruning
    reference = scaled_model()
    layers = find_target_layers(reference)
    torch.nn.utils.prune.global_unstructured([(m, "weight") for m in layers.values()],
                                             pruning_method=torch.nn.utils.prune.L1Unstructured, amount=0.5)
    for name, module in layers.items():
        assert torch.equal(module.weight_mask.bool(), global_model.get_submodule(name).weight != 0), name


def test_wanda_mask_matches_numpy_formula():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(6, 16)).astype(np.float32)
    inputs = (rng.normal(size=(40, 16)) * rng.uniform(0.1, 5.0, size=16)).astype(np.float32)
    norms = np.sqrt((inputs.astype(np.float64) ** 2).sum(axis=0))
    scores = np.abs(weight) * norms[None, :]
    expected = np.ones_like(weight, dtype=bool)
    for row in range(6):
        expected[row, np.argsort(scores[row], kind="stable")[:8]] = False
    got = wanda_mask(torch.from_numpy(weight), torch.from_numpy(norms.astype(np.float32)), 0.5)
    assert np.array_equal(got.numpy(), expected)
    groups = scores.reshape(6, 4, 4)
    expected_nm = np.ones_like(groups, dtype=bool)
    np.put_along_axis(expected_nm, np.argsort(groups, axis=-1, kind="stable")[..., :2], False, axis=-1)
    got_nm = wanda_mask(torch.from_numpy(weight), torch.from_numpy(norms.astype(np.float32)), 0.5, NMStructure(2, 4))
    assert np.array_equal(got_nm.numpy(), expected_nm.reshape(6, 16))


def test_engine_wanda_uses_the_real_block_inputs(tiny_model_dirs):
    """q_proj of block 0: mask from the engine == NumPy Wanda on the normed embeddings of the same tokens."""
    model, tokenizer = _model(tiny_model_dirs)
    from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
    tokens, _, _ = calibration_tokens(CALIBRATION, tokenizer)
    with torch.no_grad():
        block = model.model.layers[0]
        inputs = block.input_layernorm(model.model.embed_tokens(tokens)).reshape(-1, 64).double().numpy()
        weight = block.self_attn.q_proj.weight.numpy().copy()
    scores = np.abs(weight) * np.sqrt((inputs ** 2).sum(axis=0))[None, :]
    expected = np.ones_like(weight, dtype=bool)
    np.put_along_axis(expected, np.argsort(scores, axis=1, kind="stable")[:, :32], False, axis=1)
    prune(model, shortcut_plan("wanda", 0.5), CALIBRATION, tokenizer, progress=False)
    got = (model.model.layers[0].self_attn.q_proj.weight != 0).numpy()
    assert (got == expected).mean() > 0.999  # float32 vs float64 norms may swap a near-tie


def _reconstruction_error(weight, pruned, inputs):
    return float(((inputs @ weight.T - inputs @ pruned.T) ** 2).sum())


@pytest.mark.parametrize("structure", [None, NMStructure(2, 4)])
def test_sparsegpt_reconstructs_better_than_magnitude(structure):
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(32, 32, generator=generator)
    inputs = torch.randn(512, 32, generator=generator) @ mixing  # correlated features, as in real layers
    weight = torch.randn(24, 32, generator=generator)
    hessian = inputs.T @ inputs
    pruned, damp = sparsegpt_prune(weight, hessian, [(24, 0.5)], structure, block_size=8, dampening=0.01)
    assert damp == 0.01
    assert int((pruned == 0).sum()) == 24 * 16
    magnitude = weight * magnitude_mask(weight, 0.5, structure)
    norms = inputs.norm(dim=0)
    wanda = weight * wanda_mask(weight, norms, 0.5, structure)
    error = _reconstruction_error(weight, pruned, inputs)
    assert error < 0.8 * _reconstruction_error(weight, magnitude, inputs)
    assert error < _reconstruction_error(weight, wanda, inputs)
    assert error < 0.8 * _reconstruction_error(weight, weight * (pruned != 0), inputs)  # the OBS update helps


def test_sparsegpt_stacked_segments_keep_each_layer_exact():
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(256, 16, generator=generator)
    weight = torch.randn(20, 16, generator=generator)
    pruned, _ = sparsegpt_prune(weight, inputs.T @ inputs, [(12, 0.25), (8, 0.75)], None, 4, 0.01)
    assert int((pruned[:12] == 0).sum()) == prune_count(12 * 16, 0.25)
    assert int((pruned[12:] == 0).sum()) == prune_count(8 * 16, 0.75)


def test_cholesky_failure_retries_with_more_dampening():
    hessian = torch.diag(torch.tensor([1.0, 1.0, 1.0, -0.05]))
    _, damp = inverse_hessian_factor(hessian, 0.01)
    assert damp == pytest.approx(0.1)
    with pytest.raises(UserError, match="not positive definite"):
        inverse_hessian_factor(-torch.eye(4), 0.01)


def _reference_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """The factor from the plain out-of-place calls (the solve before it worked in place), on one CPU thread as
    the solve runs (LAPACK's sums depend on the thread count)."""
    with one_cpu_thread():
        return _out_of_place_factor(hessian, damp)


def _out_of_place_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    fixed = hessian.double().clone()
    dead = fixed.diagonal() == 0
    fixed[dead, dead] = 1.0
    damped = fixed.clone()
    damped.diagonal().add_(damp * fixed.diagonal().mean())
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(damped)), upper=True)


@pytest.mark.parametrize("shift", [0.0, 0.05])  # 0.05: the first dampening fails, the retry's factor is returned
def test_inverse_hessian_factor_in_place_equals_out_of_place_bit_for_bit(shift):
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(300, 96, generator=generator, dtype=torch.float64)
    inputs[:, 5] = 0  # a dead input: 1 on its diagonal
    hessian = inputs.T @ inputs
    hessian -= shift * hessian.diagonal().mean() * torch.eye(96, dtype=torch.float64)
    before = hessian.clone()
    upper, damp = inverse_hessian_factor(hessian, 0.01)
    assert damp == pytest.approx(0.01 if shift == 0 else 0.1)
    assert torch.equal(upper, _reference_factor(before, damp))
    assert torch.equal(hessian, before)  # the input is not modified


def test_a_blocks_hessians_are_freed_as_their_layers_are_pruned(tiny_model_dirs, monkeypatch):
    """Each distinct input's Hessian is dropped once its layers are pruned: q/k/v, o, gate/up, down_proj
    are solved with 4, 3, 2, then 1 of the block's Hessians alive."""
    from sparse_bench.harness_ext.pruning import calibration, sparsegpt

    created, alive_at_solve = [], []
    init, solve = calibration.InputStatistics.__init__, sparsegpt.sparsegpt_prune

    def tracking(self, *args, **kwargs):
        init(self, *args, **kwargs)
        created.append(weakref.ref(self))

    def solving(*args, **kwargs):
        alive_at_solve.append(sum(ref() is not None for ref in created))
        return solve(*args, **kwargs)

    monkeypatch.setattr(calibration.InputStatistics, "__init__", tracking)
    monkeypatch.setattr(sparsegpt, "sparsegpt_prune", solving)
    model, _ = _prune(tiny_model_dirs, "sparsegpt", 0.5)
    assert alive_at_solve == [4, 3, 2, 1] * model.config.num_hidden_layers


@pytest.mark.parametrize("method, structure", [("wanda", None), ("sparsegpt", None), ("sparsegpt", "2:4")])
def test_masks_are_identical_across_reruns_and_batch_sizes(tiny_model_dirs, method, structure):
    sparsity = None if structure else 0.5
    digests = {_mask_digest(_prune(tiny_model_dirs, method, sparsity, structure, batch_size=size)[0])
               for size in (1, 3, 8, 8)}
    assert len(digests) == 1


def test_owl_spreads_sparsity_across_blocks_around_the_target(tiny_model_dirs):
    model, report = _prune(tiny_model_dirs, "wanda", 0.5, owl=OwlConfig(m=3.0, lmbda=0.05))
    per_block = {}
    for name, layer in report.layers.items():
        per_block.setdefault(name.split(".")[2], set()).add(layer.target_sparsity)
    values = [next(iter(targets)) for targets in per_block.values()]
    assert all(len(targets) == 1 for targets in per_block.values())  # one sparsity per block
    assert sorted(values) == pytest.approx([0.45, 0.55])  # two blocks: spread 2 * lmbda around 0.5
    assert report.overall_sparsity == pytest.approx(0.5, abs=0.002)


def test_explicit_layer_sparsity_list_and_multi_step_plan(tiny_model_dirs):
    model, tokenizer = _model(tiny_model_dirs)
    plan = PruningPlan(steps=(
        PruneStep(method="wanda", sparsity=0.5, targets=(r"re:.*self_attn.*",),
                  layer_sparsity=((r"re:.*\.0\.self_attn\.q_proj", 0.8),)),
        PruneStep(method="magnitude", sparsity=0.3, targets=(r"re:.*mlp.*",)),
    ), source="test")
    report = prune(model, plan, CALIBRATION, tokenizer, progress=False)
    assert report.layers["model.layers.0.self_attn.q_proj"].zeros == _expected_zeros("wanda", 64, 64, 0.8)
    assert report.layers["model.layers.0.self_attn.q_proj"].target_sparsity == 0.8
    assert report.layers["model.layers.1.self_attn.q_proj"].sparsity == 0.5
    assert report.layers["model.layers.0.mlp.up_proj"].sparsity == pytest.approx(0.3, abs=1e-3)
    assert report.to_dict()["plan"]["source"] == "test"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_models_keep_their_dtype(tiny_model_dirs, dtype):
    model, tokenizer = _model(tiny_model_dirs, dtype=dtype)
    report = prune(model, shortcut_plan("sparsegpt", 0.5), CALIBRATION, tokenizer, progress=False)
    assert all(p.dtype == dtype for p in model.parameters())
    assert report.overall_sparsity >= 0.5 and report.overall_sparsity < 0.51
    assert report.calibration["nsamples"] == 8


def test_bad_arguments_are_user_errors(tiny_model_dirs, tmp_path):
    model, tokenizer = _model(tiny_model_dirs)
    with pytest.raises(UserError, match="need calibration data"):
        prune(model, shortcut_plan("wanda", 0.5), progress=False)
    with pytest.raises(UserError, match="targeted by steps 1 and 2"):
        prune(model, PruningPlan(steps=(PruneStep(), PruneStep())), progress=False)
    with pytest.raises(UserError, match="fixes every layer's sparsity"):
        prune(model, PruningPlan(steps=(PruneStep(sparsity=0.5, structure=NMStructure(2, 4), owl=OwlConfig()),)))
    with pytest.raises(UserError, match="not a multiple of M"):
        prune(model, shortcut_plan("magnitude", None, "3:7"), progress=False)
    with pytest.raises(UserError, match="neither c4 nor wikitext2 nor a file"):
        prune(model, shortcut_plan("wanda", 0.5), CalibrationConfig(data=str(tmp_path / "missing.txt")),
              tokenizer, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"body": "no text field"}\n')
    with pytest.raises(UserError, match="field 'text'"):
        prune(model, shortcut_plan("wanda", 0.5), CalibrationConfig(data=str(bad)), tokenizer, progress=False)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(UserError, match="fewer than seqlen"):
        prune(model, shortcut_plan("wanda", 0.5), CalibrationConfig(data=str(short), seqlen=64), tokenizer,
              progress=False)
    assert int((model.model.layers[0].mlp.up_proj.weight == 0).sum()) == 0  # errors came before any change


def test_prune_lowest_equals_a_stable_sort_with_many_ties():
    from sparse_bench.harness_ext.pruning.masks import prune_lowest
    generator = torch.Generator().manual_seed(0)
    for _ in range(100):
        scores = torch.randint(0, 4, (5, 17), generator=generator).float()
        count = int(torch.randint(0, 18, (1,), generator=generator))
        expected = torch.ones_like(scores, dtype=torch.bool)
        expected.scatter_(-1, torch.argsort(scores, dim=-1, stable=True)[:, :count], False)
        assert torch.equal(prune_lowest(scores, count), expected)


def test_pruning_a_tied_lm_head_says_so(tiny_model_dirs):
    model, _ = _model(tiny_model_dirs)
    report = prune(model, shortcut_plan("magnitude", 0.5, targets=("lm_head",), ignore=()), progress=False)
    assert any("lm_head shares its weight with model.embed_tokens" in warning for warning in report.warnings)
    assert float((model.model.embed_tokens.weight == 0).float().mean()) == 0.5


def test_shared_inputs_get_one_statistic(tiny_model_dirs):
    from sparse_bench.harness_ext.pruning.calibration import Stopwatch, layer_sequential
    from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
    model, tokenizer = _model(tiny_model_dirs)
    tokens, _, _ = calibration_tokens(CALIBRATION, tokenizer)
    layers = {name: module for name, module in find_target_layers(model).items() if ".layers.0." in name}
    block = next(layer_sequential(model, tokens, 3, Stopwatch(), progress=False))
    stats = block.collect(layers, with_hessian=True, keep_outputs=False)
    prefix = "model.layers.0."
    assert stats[prefix + "self_attn.q_proj"] is stats[prefix + "self_attn.k_proj"] is stats[prefix + "self_attn.v_proj"]
    assert stats[prefix + "mlp.gate_proj"] is stats[prefix + "mlp.up_proj"]
    assert len({id(s) for s in stats.values()}) == 4  # qkv, o, gate/up, down
    assert all(s.tokens == 8 * 64 for s in stats.values())
    assert stats[prefix + "mlp.down_proj"].hessian.shape == (128, 128)
