"""The methods registry, RIA, ADMM and SparseGPT against independent NumPy computations of the papers' formulas.

The golden tests run on the inputs a tiny Llama's first block really sees (the normed embeddings of the
calibration tokens, read by q/k/v), so they check both the math and that the engine feeds it the right data.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pruning import methods
from sparse_bench.harness_ext.pruning.admm import AdmmGradualOptions, AdmmOptions, admm_gradual_prune, admm_refit
from sparse_bench.harness_ext.pruning.calibration import InputStatistics
from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.masks import prune_count
from sparse_bench.harness_ext.pruning.method_types import Target
from sparse_bench.harness_ext.pruning.plan import CalibrationConfig, NMStructure, OwlConfig
from sparse_bench.harness_ext.pruning.request import parse_request
from sparse_bench.harness_ext.pruning.sparsegpt import sparsegpt_prune
from sparse_bench.harness_ext.pruning.targets import find_target_layers, weight_matrix

CALIBRATION = CalibrationConfig(data="c4", nsamples=8, seqlen=64, seed=0)
Q_PROJ = "model.layers.0.self_attn.q_proj"


def _model(dirs):
    return AutoModelForCausalLM.from_pretrained(dirs["llama"], dtype=torch.float32), \
        AutoTokenizer.from_pretrained(dirs["llama"])


@pytest.fixture(scope="module")
def real_inputs(tiny_model_dirs):
    """(q_proj weight (out, in), its calibration inputs X (tokens, in)) of block 0, float64 NumPy."""
    model, tokenizer = _model(tiny_model_dirs)
    tokens, _, _ = calibration_tokens(CALIBRATION, tokenizer)
    with torch.no_grad():
        block = model.model.layers[0]
        inputs = block.input_layernorm(model.model.embed_tokens(tokens))
        return block.self_attn.q_proj.weight.double().numpy().copy(), \
            inputs.reshape(-1, inputs.shape[-1]).double().numpy()


def plan_from_arguments(method=None, sparsity=None, structure=None, scope=None, update=None, options=None, owl=None):
    """The plan these model_args describe, through the request layer (method options by name)."""
    owl_options = {} if owl is None else {"owl": True, "owl_m": owl.m, "owl_lambda": owl.lmbda}
    given = {"method": method, "sparsity": sparsity, "structure": structure, "scope": scope, "update": update,
             **(options or {}), **owl_options}
    return parse_request(given, source="model_args").plan


def _engine_weight(dirs, method, structure=None, **arguments):
    model, tokenizer = _model(dirs)
    plan = plan_from_arguments(method, None if structure else 0.5, structure, **arguments)
    report = prune(model, plan, CALIBRATION, tokenizer, progress=False)
    return weight_matrix(model.get_submodule(Q_PROJ)).double().numpy(), report


def _lowest(scores: np.ndarray, count: int) -> np.ndarray:
    """Keep-mask over the last axis pruning the `count` lowest (stable order for ties)."""
    keep = np.ones(scores.shape, dtype=bool)
    np.put_along_axis(keep, np.argsort(scores, axis=-1, kind="stable")[..., :count], False, axis=-1)
    return keep


def _layer_keep(scores: np.ndarray, sparsity: float) -> np.ndarray:
    return _lowest(scores.reshape(1, -1), prune_count(scores.size, sparsity)).reshape(scores.shape)


def _nm_keep(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    rows, columns = scores.shape
    return _lowest(scores.reshape(rows, columns // m, m), m - n).reshape(rows, columns)


# --- the registry ------------------------------------------------------------------------------------------

def test_every_registered_method_builds_a_plan_and_lists_in_the_docs_table():
    rows = methods.table_rows()
    for name in methods.method_names():
        assert plan_from_arguments(name, 0.5).steps[0].method == name
        assert any(row["argument"] == f"method={name}" for row in rows)
    assert {row["argument"] for row in rows} >= {"method=ria", "method=admm", "update=admm"}


@pytest.mark.parametrize("arguments, message", [
    ({"method": "obs"}, "unknown pruning method 'obs'; use one of: magnitude, wanda, sparsegpt, ria, admm"),
    ({"method": "wanda", "update": "lora"}, "unknown weight update 'lora'; use one of: admm, dsnot"),
    ({"method": "wanda", "options": {"ria_exponent": 0.5}}, "option ria_exponent applies to method=ria"),
    ({"method": "ria", "options": {"ria_exponent": 2.5}}, "ria_exponent must be in (0, 2]"),
    ({"method": "ria", "options": {"ria_exponent": 0}}, "ria_exponent must be in (0, 2]"),
    ({"method": "ria", "options": {"ria_reallocation": True}}, "ria_reallocation reorders channels for N:M"),
    ({"method": "ria", "options": {"ria_exponent": "half"}}, "ria_exponent must be a number"),
    ({"method": "wanda", "options": {"alpha": 1}}, "unknown pruning option 'alpha'; options are:"),
    ({"method": "admm", "update": "admm"}, "update=admm cannot follow method=admm (it already sets its weights)"),
    ({"method": "magnitude", "scope": "global", "update": "admm"}, "update=admm cannot follow method=magnitude"),
    ({"method": "wanda", "update": "admm", "options": {"admm_iterations": 0}}, "admm_iterations must be >= 1"),
    ({"method": "admm", "options": {"admm_prune_iterations": 30}}, "admm_prune_iterations must be in [1, "),
    ({"method": "ria", "scope": "global"}, "scope=global is defined for method=magnitude only"),
    ({"update": "admm", "sparsity": None}, "update given without method"),
])
def test_bad_method_arguments_are_one_line_errors(arguments, message):
    arguments = {"sparsity": 0.5, **arguments}
    with pytest.raises(UserError) as error:
        plan_from_arguments(**arguments)
    assert message in str(error.value) and "\n" not in str(error.value) and "; " in str(error.value)


def test_options_are_typed_from_text_and_stored_complete():
    step = plan_from_arguments("ria", None, "2:4", update="admm",
                               options={"ria_exponent": "1", "ria_reallocation": "true", "admm_iterations": "5"}).steps[0]
    assert step.method_options.ria_exponent == 1.0 and step.method_options.ria_reallocation is True
    assert step.update_options.admm_iterations == 5
    assert dict(step.options) == {"ria_exponent": 1.0, "ria_reallocation": True, "admm_iterations": 5,
                                  "admm_rho": 1.0, "admm_dampening": 0.1}
    assert plan_from_arguments("sparsegpt", 0.5) == plan_from_arguments("sparsegpt", 0.5, options={"block_size": 128})
    assert methods.split_grid_name("sparsegpt+admm") == ("sparsegpt", "admm")


def test_a_bad_option_fails_before_any_weight_changes(tiny_model_dirs):
    model, _ = _model(tiny_model_dirs)
    before = {name: module.weight.clone() for name, module in find_target_layers(model).items()}
    with pytest.raises(UserError):
        prune(model, plan_from_arguments("ria", 0.5, options={"ria_exponent": 3.0}), CALIBRATION, None)
    assert all(torch.equal(module.weight, before[name]) for name, module in find_target_layers(model).items())


# --- every new method on every structure --------------------------------------------------------------------

@pytest.mark.parametrize("method, update, structure", [  # unstructured RIA and Wanda+ADMM: golden tests below
    ("ria", None, "2:4"), ("ria", "admm", "owl"), ("admm", None, "unstructured"), ("admm", None, "2:4"),
    ("admm", None, "owl"), ("wanda", "admm", "2:4"), ("wanda", "dsnot", "2:4"), ("ria", "dsnot", "owl"),
    ("magnitude", "dsnot", "unstructured")])
def test_new_methods_are_exact_on_every_structure(tiny_model_dirs, method, update, structure):
    model, tokenizer = _model(tiny_model_dirs)
    options = {"owl": OwlConfig(m=3.0, lmbda=0.05)} if structure == "owl" else {}
    nm = structure == "2:4"
    plan = plan_from_arguments(method, None if nm else 0.5, "2:4" if nm else None, update=update, **options)
    report = prune(model, plan, CALIBRATION, tokenizer, progress=False)
    for name, module in find_target_layers(model).items():
        weight = weight_matrix(module)
        if nm:
            assert bool(((weight.reshape(-1, 4) != 0).sum(dim=1) <= 2).all()), name
        target, (rows, columns) = report.layers[name].target_sparsity, weight.shape
        per_row = methods.get_method(method).comparison == "row"
        expected = rows * prune_count(columns, target) if per_row else prune_count(rows * columns, target)
        assert report.layers[name].zeros >= expected, name
    assert report.overall_sparsity == pytest.approx(0.5, abs=0.01)


# --- RIA: the paper's formula -----------------------------------------------------------------------------

def _numpy_ria(weight, inputs, exponent=0.5):
    magnitude = np.abs(weight)
    relative = magnitude / magnitude.sum(axis=0, keepdims=True) + magnitude / magnitude.sum(axis=1, keepdims=True)
    return relative * np.sqrt((inputs ** 2).sum(axis=0))[None, :] ** exponent


def test_ria_matches_the_paper_formula_on_real_inputs(tiny_model_dirs, real_inputs):
    weight, inputs = real_inputs
    scores = _numpy_ria(weight, inputs, 0.5)
    got, _ = _engine_weight(tiny_model_dirs, "ria")
    assert ((got != 0) == _layer_keep(scores, 0.5)).mean() > 0.999  # float32 norms may swap a near-tie
    got_nm, _ = _engine_weight(tiny_model_dirs, "ria", "2:4")
    assert ((got_nm != 0) == _nm_keep(scores, 2, 4)).mean() > 0.999
    exponent_one = _numpy_ria(weight, inputs, 1.0)
    got_one, _ = _engine_weight(tiny_model_dirs, "ria", options={"ria_exponent": 1.0})
    assert ((got_one != 0) == _layer_keep(exponent_one, 0.5)).mean() > 0.999


def test_ria_channel_reallocation_is_the_snake_heuristic_and_says_it_is_not_deployable(tiny_model_dirs, real_inputs):
    weight, inputs = real_inputs
    scores = _numpy_ria(weight, inputs)
    ranked = np.argsort(scores.sum(axis=0), kind="stable")
    strips = np.split(ranked, 4)
    order = np.empty_like(ranked)
    for strip, part in enumerate(strips):  # strip i fills position i of every group; odd strips reversed
        order[strip::4] = part[::-1] if strip % 2 else part
    expected = np.empty_like(scores, dtype=bool)
    expected[:, order] = _nm_keep(scores[:, order], 2, 4)
    got, report = _engine_weight(tiny_model_dirs, "ria", "2:4", options={"ria_reallocation": True})
    assert ((got != 0) == expected).mean() > 0.999
    assert bool(((got[:, order].reshape(-1, 4) != 0).sum(axis=1) <= 2).all())  # N:M in the permuted order
    assert any("not a deployable N:M layout" in warning for warning in report.warnings)


# --- ADMM: the paper's iteration ---------------------------------------------------------------------------

def _numpy_admm(weight, hessian, keep_at, iterations=20, prune_iterations=0, rho=1.0, damp=0.1):
    """Boza (2024) ADMM on normalised inputs; keep_at(iteration, W + U) gives the mask (fixed or gradual)."""
    scale = np.sqrt(np.diag(hessian))
    scale[scale == 0] = 1.0
    normalised = hessian / np.outer(scale, scale)
    normalised += damp * np.mean(np.diag(normalised)) * np.eye(len(scale))
    dense = weight * scale
    target = dense @ normalised
    inverse = np.linalg.inv(normalised + rho * np.eye(len(scale)))
    current, dual, keep = dense.copy(), np.zeros_like(dense), None
    for iteration in range(iterations):
        keep = keep_at(iteration, current + dual) if keep is None or iteration < prune_iterations else keep
        masked = (current + dual) * keep
        dual = dual + current - masked
        current = (target + rho * (masked - dual)) @ inverse
    return keep, (current + dual) * keep / scale


def _error(weight, new, inputs):
    return float(((inputs @ weight.T - inputs @ new.T) ** 2).sum())


def test_admm_refit_matches_the_paper_iteration_and_the_least_squares_optimum(tiny_model_dirs, real_inputs):
    weight, inputs = real_inputs
    hessian = inputs.T @ inputs
    wanda = np.abs(weight) * np.sqrt(np.diag(hessian))[None, :]
    keep = _lowest(wanda, weight.shape[1] // 2)  # Wanda's per-row mask
    _, expected = _numpy_admm(weight, hessian, lambda *_: keep)
    got = admm_refit(torch.from_numpy(weight), torch.from_numpy(hessian), torch.from_numpy(keep), AdmmOptions())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5, atol=1e-8)  # float32 iterations (admm.py)
    exact = np.zeros_like(weight)
    for row in range(weight.shape[0]):
        kept = keep[row]
        exact[row, kept] = np.linalg.solve(hessian[np.ix_(kept, kept)], hessian[kept] @ weight[row])
    assert _error(weight, expected, inputs) < 1.1 * _error(weight, exact, inputs)
    assert _error(weight, expected, inputs) < 0.8 * _error(weight, weight * keep, inputs)
    engine, _ = _engine_weight(tiny_model_dirs, "wanda", update="admm")
    np.testing.assert_allclose(engine, expected, rtol=1e-4, atol=1e-5)  # float32 model weights


@pytest.mark.parametrize("structure", [None, "2:4"])
def test_gradual_admm_matches_the_paper_schedule(tiny_model_dirs, real_inputs, structure):
    weight, inputs = real_inputs
    hessian = inputs.T @ inputs

    def keep_at(iteration, current):
        fraction = 0.5 * (1 - (1 - (iteration + 1) / 15) ** 3)
        scores = np.abs(current)
        if structure:
            scores = np.where(_nm_keep(scores, 2, 4), np.inf, scores)
        return _layer_keep(scores, fraction)

    keep, expected = _numpy_admm(weight, hessian, keep_at, prune_iterations=15)
    stats = InputStatistics(weight.shape[1], True, torch.device("cpu"))
    stats.add(torch.from_numpy(inputs).float().reshape(1, *inputs.shape))
    target = Target(((weight.shape[0], 0.5),), NMStructure(2, 4) if structure else None)
    result = admm_gradual_prune(torch.from_numpy(weight), stats, target, AdmmGradualOptions())
    assert (result.keep.numpy() == keep).mean() > 0.999
    assert int((~result.keep).sum()) == weight.size // 2
    np.testing.assert_allclose(result.weight.numpy()[keep == result.keep.numpy()],
                               expected[keep == result.keep.numpy()], rtol=1e-3, atol=1e-5)
    assert _error(weight, result.weight.numpy(), inputs) < _error(weight, weight * keep, inputs)


# --- SparseGPT: the reference fasterprune, written independently ------------------------------------------

def _fasterprune(weight, hessian, sparsity, structure, block_size, percdamp):
    """SparseGPT's `fasterprune` (Frantar & Alistarh 2023, Algorithm 1) in NumPy float64.

    One deviation from the reference code: a block prunes exactly round(numel * sparsity) weights (stable
    order), where the reference's `tmp <= sorted[k]` prunes k + 1."""
    weight, hessian = weight.copy(), hessian.copy()
    dead = np.diag(hessian) == 0
    hessian[dead, dead] = 1.0
    weight[:, dead] = 0.0
    hessian += percdamp * np.mean(np.diag(hessian)) * np.eye(len(hessian))
    inverse = np.linalg.inv(hessian)
    upper = np.linalg.cholesky(inverse).T  # upper Cholesky factor of H^-1
    columns = weight.shape[1]
    for first in range(0, columns, block_size):
        last = min(first + block_size, columns)
        block, factor = weight[:, first:last].copy(), upper[first:last, first:last]
        errors = np.zeros_like(block)
        pruned = np.zeros_like(block, dtype=bool)
        if structure is None:
            scores = block ** 2 / np.diag(factor)[None, :] ** 2
            pruned = ~_layer_keep(scores, sparsity)
        for i in range(last - first):
            if structure is not None and i % structure[1] == 0:
                group = slice(i, i + structure[1])
                scores = block[:, group] ** 2 / np.diag(factor)[group][None, :] ** 2
                pruned[:, group] = ~_lowest(scores, structure[1] - structure[0])
            column = block[:, i]
            kept = np.where(pruned[:, i], 0.0, column)
            error = (column - kept) / factor[i, i]
            block[:, i:] -= np.outer(error, factor[i, i:])
            block[:, i] = kept
            errors[:, i] = error
        weight[:, first:last] = block
        weight[:, last:] -= errors @ upper[first:last, last:]
    return weight


@pytest.mark.parametrize("structure", [None, (2, 4)])
def test_sparsegpt_matches_the_reference_fasterprune_on_real_inputs(real_inputs, structure):
    weight, inputs = real_inputs
    hessian = inputs.T @ inputs
    expected = _fasterprune(weight, hessian, 0.5, structure, 16, 0.01)
    got, damp = sparsegpt_prune(torch.from_numpy(weight), torch.from_numpy(hessian), [(weight.shape[0], 0.5)],
                                NMStructure(*structure) if structure else None, 16, 0.01)
    assert damp == 0.01
    assert ((got.numpy() != 0) == (expected != 0)).mean() > 0.999
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-9)


# --- every entry point reads the registry -------------------------------------------------------------------

def test_docs_table_is_the_registry():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "pruning.md").read_text(encoding="utf-8")
    assert methods.markdown_table() in docs


def test_cli_flags_come_from_the_registry(tiny_llama, tmp_path):
    from click.testing import CliRunner

    from sparse_bench.harness_ext.cli import main

    runner = CliRunner()
    help_text = runner.invoke(main, ["prune", "--help"]).output
    assert "--update [admm|dsnot]" in help_text and "--ria-exponent" in help_text and "--dsnot-cycles" in help_text
    bad = runner.invoke(main, ["prune", str(tiny_llama), "--method", "wanda", "--sparsity", "0.5", "--ria-exponent",
                               "1", "--out", str(tmp_path / "never")])
    assert bad.exit_code == 2 and "option ria_exponent applies to method=ria" in bad.stderr
    assert not (tmp_path / "never").exists()
    out = tmp_path / "wanda_admm"
    good = runner.invoke(main, ["prune", str(tiny_llama), "--method", "wanda", "--update", "admm", "--structure",
                                "2:4", "--admm-iterations", "3", "--nsamples", "4", "--seqlen", "32", "--no-progress",
                                "--json", "--out", str(out)])
    assert good.exit_code == 0, good.output
    step = __import__("json").loads(good.stdout[good.stdout.index("{"):])["plan"]["steps"][0]
    assert step["update"] == "admm" and step["options"]["admm_iterations"] == 3


def test_model_args_take_method_options(tiny_llama):
    from sparse_bench.model_wrappers.sparse_hf import SparseHFLM

    lm = SparseHFLM(pretrained=str(tiny_llama), device="cpu", method="ria", structure="2:4", update="admm",
                    ria_exponent="1.0", admm_iterations="2", nsamples="4", seqlen="32")  # model_args arrive as text
    step = lm.get_model_info()["sparsity"]["plan"]["steps"][0]
    assert step["update"] == "admm" and step["options"]["ria_exponent"] == 1.0
    assert step["options"]["admm_iterations"] == 2


def test_grid_spec_method_names_and_options(tmp_path):
    from sparse_bench.leaderboards.cells import expand_cells
    from sparse_bench.leaderboards.spec_parser import parse_spec

    base = {"name": "g", "models": ["m"], "structures": ["2:4"], "tasks": ["t"]}
    spec = parse_spec({**base, "methods": ["wanda+admm", {"method": "ria", "options": {"ria_exponent": 1.0}}]},
                      base_dir=tmp_path)
    labels = [cell.method_label for cell in expand_cells(spec)]
    assert labels == ["dense", "wanda+admm", "ria,ria_exponent=1.0"]
    assert expand_cells(spec)[1].plan().steps[0].update == "admm"
    for bad, message in (("wanda+lora", "unknown weight update 'lora'"), ("ria2", "unknown pruning method")):
        with pytest.raises(UserError, match=message):
            parse_spec({**base, "methods": [bad]}, base_dir=tmp_path)
