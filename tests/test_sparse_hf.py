"""The sparse-hf wrapper end to end through lm-eval on tiny models: numbers, not just "it ran"."""

from __future__ import annotations

import pytest
import torch

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.model_wrappers.registration import register_with_lm_eval

register_with_lm_eval()

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from tiny_tasks import TASK_NAME, write_tiny_choice_task  # noqa: E402

from sparse_bench.model_wrappers.sparse_hf import SparseHFLM  # noqa: E402


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    return TaskManager(include_path=str(write_tiny_choice_task(tmp_path_factory.mktemp("tasks"))))


def evaluate(model: str, model_args: str, task_manager) -> dict:
    return lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=[TASK_NAME], device="cpu",
                                   task_manager=task_manager, bootstrap_iters=0)


def test_unpruned_sparse_hf_matches_hf_exactly(tiny_model_dirs, task_manager):
    for kind in ("llama", "gpt2"):
        args = f"pretrained={tiny_model_dirs[kind]},dtype=float32"
        plain = evaluate("hf", args, task_manager)
        ours = evaluate("sparse-hf", args, task_manager)
        assert ours["results"][TASK_NAME]["acc,none"] == plain["results"][TASK_NAME]["acc,none"]
        sparsity = ours["config"]["sparsity"]
        assert sparsity["overall_sparsity"] == 0.0  # random normal weights have no exact zeros
        assert sparsity["nonzero_params"] == sum(
            p.numel() for p in torch.nn.Module.parameters(_load(tiny_model_dirs[kind])))


def _load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path)


def test_magnitude_half_is_measured_in_results(tiny_llama, task_manager):
    results = evaluate("sparse-hf", f"pretrained={tiny_llama},method=magnitude,sparsity=0.5", task_manager)
    sparsity = results["config"]["sparsity"]
    assert abs(sparsity["overall_sparsity"] - 0.5) < 0.005
    assert sparsity["layers"] and all(abs(layer["sparsity"] - 0.5) < 0.01 for layer in sparsity["layers"].values())
    assert sparsity["nonzero_params"] < results["config"]["model_num_parameters"]
    assert 0.0 <= results["results"][TASK_NAME]["acc,none"] <= 1.0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_dtype_reaches_the_model(tiny_llama, dtype):
    lm = SparseHFLM(pretrained=str(tiny_llama), dtype=dtype, device="cpu", method="magnitude", structure="2:4")
    assert lm.model.dtype == getattr(torch, dtype)
    assert lm.get_model_info()["sparsity"]["overall_sparsity"] == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("args, message", [
    (dict(method="pruneit", sparsity=0.5), "unknown pruning method 'pruneit'"),
    (dict(method="magnitude", sparsity=1.5), "sparsity must be in [0, 1)"),
    (dict(method="magnitude", sparsity=-0.1), "sparsity must be in [0, 1)"),
    (dict(method="magnitude", structure="2:4x"), "malformed structure '2:4x'"),
    (dict(method="magnitude", structure="5:4"), "impossible N:M structure '5:4'"),
    (dict(method="magnitude", sparsity=0.7, structure="2:4"), "fixes sparsity at 0.5"),
    (dict(sparsity=0.5), "without method"),
    (dict(dtype="float8"), "unknown dtype 'float8'"),
    (dict(method="magnitude", sparsity=0.5, scope="everywhere"), "unknown scope 'everywhere'"),
    (dict(method="wanda", sparsity=0.5, true_sequential="maybe"), "true_sequential must be true or false"),
])
def test_bad_model_args_fail_before_loading(tiny_llama, args, message):
    with pytest.raises(UserError, match=None) as error:
        SparseHFLM(pretrained=str(tiny_llama), device="cpu", **args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_true_sequential_model_arg_reaches_the_engine(tiny_llama):
    lm = SparseHFLM(pretrained=str(tiny_llama), device="cpu", method="wanda", sparsity=0.5, calibration="c4",
                    nsamples="4", seqlen="32", true_sequential="True")  # model_args arrive as text
    sparsity = lm.get_model_info()["sparsity"]
    assert sparsity["calibration"]["true_sequential"] is True
    assert sparsity["overall_sparsity"] == pytest.approx(0.5)


def test_missing_model_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        SparseHFLM(pretrained=str(tmp_path / "no-such-model"), device="cpu", method="magnitude", sparsity=0.5)


def test_recipe_that_only_holds_masks_prunes_nothing_and_says_so(tiny_llama):
    from pathlib import Path

    recipe = Path(__file__).parent / "data" / "recipes" / "sparseml_stage_constant_only.yaml"
    lm = SparseHFLM(pretrained=str(tiny_llama), device="cpu", recipe=str(recipe))
    sparsity = lm.get_model_info()["sparsity"]
    assert sparsity["overall_sparsity"] == 0.0
    assert sparsity["plan"]["steps"] == [] and sparsity["plan"]["recipe_sha256"]
    assert any("nothing" in warning for warning in sparsity["warnings"]), sparsity["warnings"]


def test_recipe_and_shortcut_arguments_together_are_refused(tiny_llama):
    from pathlib import Path

    recipe = Path(__file__).parent / "data" / "recipes" / "llmc_wanda_2of4.yaml"
    with pytest.raises(UserError, match="a recipe already defines"):
        SparseHFLM(pretrained=str(tiny_llama), device="cpu", recipe=str(recipe), method="magnitude")
