"""DSnoT mask refinement (`update=dsnot`) against an independent NumPy computation of the paper's rule, on the
inputs a tiny Llama's first block really sees (q_proj reads the normed embeddings of the calibration tokens)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_methods import (  # noqa: F401 (real_inputs is a fixture)
    CALIBRATION,
    Q_PROJ,
    _lowest,
    _model,
    _nm_keep,
    plan_from_arguments,
    real_inputs,
)

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pruning.calibration import InputStatistics
from sparse_bench.harness_ext.pruning.dsnot import DsnotOptions, dsnot_refine
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.method_types import Target
from sparse_bench.harness_ext.pruning.targets import find_target_layers, weight_matrix
from sparse_bench.harness_ext.pruning.values import NMStructure


def _numpy_dsnot(weight, inputs, keep, m=None, cycles=50, threshold=0.1, power=1.0):
    """The paper's Algorithm 1 (a swap must lower |e|), row by row in Python/NumPy float64 (m: N:M group size)."""
    mean, variance = inputs.mean(axis=0), np.maximum(inputs.var(axis=0), 1e-12)
    norms = np.sqrt((inputs ** 2).sum(axis=0))
    start, keep = keep, keep.copy()
    for row in range(weight.shape[0]):
        contribution = weight[row] * mean
        growth, wanda = contribution / variance ** power, np.abs(weight[row]) * norms
        error = contribution[~start[row]].sum()
        grown, cut = set(), set()
        for _ in range(cycles):
            if abs(error) <= threshold:
                break
            sign = np.sign(error)
            grow_candidates = [j for j in np.flatnonzero(~start[row]) if j not in grown]
            if not grow_candidates:
                break
            grow = max(grow_candidates, key=lambda j: (sign * growth[j], -j))
            if m is None:
                prune_candidates = [k for k in np.flatnonzero(start[row])
                                    if k not in cut and sign * contribution[k] < 0]
            else:
                first = grow - grow % m
                prune_candidates = [k for k in range(first, first + m) if start[row, k] and k not in cut]
            if not prune_candidates:
                break
            cut_one = min(prune_candidates, key=lambda k: (wanda[k], k))
            after = error - contribution[grow] + contribution[cut_one]
            if abs(after) >= abs(error):
                break
            keep[row, grow], keep[row, cut_one] = True, False
            grown.add(grow)
            cut.add(cut_one)
            error = after
    return keep


def _statistics(inputs: np.ndarray) -> InputStatistics:
    stats = InputStatistics(inputs.shape[1], False, torch.device("cpu"))
    stats.add(torch.from_numpy(inputs).float().reshape(CALIBRATION.nsamples, -1, inputs.shape[1]))
    return stats


def _mean_error(weight, keep, inputs):
    """Per row, E[x (w - M w)] over the tokens: the expected output error DSnoT drives towards zero."""
    return (weight * ~keep) @ inputs.mean(axis=0)


# The tiny model's thresholds are below the paper's 0.1: its random-init row errors are ~1e-4 (SmolLM2: ~1e-2).
@pytest.mark.parametrize("structure, threshold", [(None, 1e-4), (None, 0.0), ("2:4", 1e-4), ("2:4", 0.0)])
def test_dsnot_matches_the_paper_rule_on_real_inputs(real_inputs, structure, threshold):  # noqa: F811
    weight, inputs = real_inputs
    wanda = np.abs(weight) * np.sqrt((inputs ** 2).sum(axis=0))[None, :]
    start = _nm_keep(wanda, 2, 4) if structure else _lowest(wanda, weight.shape[1] // 2)
    expected = _numpy_dsnot(weight, inputs, start, m=4 if structure else None, threshold=threshold)
    target = Target(((weight.shape[0], 0.5),), NMStructure(2, 4) if structure else None)
    got = dsnot_refine(torch.from_numpy(weight), _statistics(inputs), torch.from_numpy(start), target,
                       DsnotOptions(dsnot_threshold=threshold)).keep.numpy()
    np.testing.assert_array_equal(got, expected)
    assert (got != start).sum() > 0  # it did swap
    np.testing.assert_array_equal(got.sum(axis=1), start.sum(axis=1))  # every row keeps its count
    if structure:
        assert (got.reshape(weight.shape[0], -1, 4).sum(axis=-1) == 2).all()
    before, after = np.abs(_mean_error(weight, start, inputs)), np.abs(_mean_error(weight, got, inputs))
    assert (after <= before + 1e-15).all() and after.sum() < 0.9 * before.sum()


def test_wanda_dsnot_through_the_engine_is_the_paper_rule(tiny_model_dirs, real_inputs):  # noqa: F811
    weight, inputs = real_inputs
    wanda = np.abs(weight) * np.sqrt((inputs ** 2).sum(axis=0))[None, :]
    expected = _numpy_dsnot(weight, inputs, _lowest(wanda, weight.shape[1] // 2))
    model, tokenizer = _model(tiny_model_dirs)
    report = prune(model, plan_from_arguments("wanda", 0.5, update="dsnot"), CALIBRATION, tokenizer, progress=False)
    np.testing.assert_array_equal(weight_matrix(model.get_submodule(Q_PROJ)).numpy() != 0, expected)
    assert report.overall_sparsity == pytest.approx(0.5, abs=1e-3)


def test_feature_sums_do_not_depend_on_the_batch_size(real_inputs):  # noqa: F811
    _, inputs = real_inputs
    whole = _statistics(inputs)
    one_by_one = InputStatistics(inputs.shape[1], False, torch.device("cpu"))
    for sample in torch.from_numpy(inputs).float().reshape(CALIBRATION.nsamples, 1, -1, inputs.shape[1]):
        one_by_one.add(sample)
    assert torch.equal(whole.sums, one_by_one.sums)
    mean, variance = whole.feature_moments()
    np.testing.assert_allclose(mean.numpy(), inputs.mean(axis=0), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(variance.numpy(), inputs.var(axis=0), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("arguments, message", [
    ({"method": "sparsegpt", "update": "dsnot"}, "update=dsnot refines the mask of a method that keeps the dense"),
    ({"method": "admm", "update": "dsnot"}, "update=dsnot cannot follow method=admm"),
    ({"method": "wanda", "update": "dsnot", "options": {"dsnot_cycles": 0}}, "dsnot_cycles must be >= 1"),
    ({"method": "wanda", "update": "dsnot", "options": {"dsnot_threshold": -1}}, "dsnot_threshold must be"),
    ({"method": "wanda", "update": "dsnot", "options": {"dsnot_variance_power": "nan"}}, "dsnot_variance_power"),
    ({"method": "wanda", "options": {"dsnot_cycles": 5}}, "option dsnot_cycles applies to update=dsnot"),
])
def test_bad_dsnot_arguments_are_one_line_errors(arguments, message):
    with pytest.raises(UserError) as error:
        plan_from_arguments(sparsity=0.5, **arguments)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_dsnot_after_a_permuted_nm_mask_fails_before_any_weight_changes(tiny_model_dirs):
    model, tokenizer = _model(tiny_model_dirs)
    before = {name: module.weight.clone() for name, module in find_target_layers(model).items()}
    plan = plan_from_arguments("ria", None, "2:4", update="dsnot", options={"ria_reallocation": True})
    with pytest.raises(UserError, match="drop ria_reallocation"):
        prune(model, plan, CALIBRATION, tokenizer, progress=False)
    assert all(torch.equal(module.weight, before[name]) for name, module in find_target_layers(model).items())
