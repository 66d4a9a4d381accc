"""runtime=dense|sparse|auto|KERNEL: sparse kernels give the dense outputs, choices are measured and recorded,
bad requests are one-line errors, and a kernel failing mid-run falls back to dense for its layer."""

from __future__ import annotations

import dataclasses
import gc
import json
import weakref

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn
from transformers import AutoModelForCausalLM

from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.plan import CalibrationConfig
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.values import BlockStructure
from sparse_bench.harness_ext.runtime import choose
from sparse_bench.harness_ext.runtime.choose import AUTO_MARGIN, RuntimeShapes, apply_runtime, parse_runtime
from sparse_bench.harness_ext.runtime.kernels import KERNELS, unavailable
from sparse_bench.harness_ext.runtime.latency import measure_runtime
from sparse_bench.harness_ext.runtime.pairs import PairTimes, time_pairs
from sparse_bench.harness_ext.runtime.sparse_linear import SparseLinear


def _pruned_linear(sparsity: float, block: BlockStructure | None = None, shape=(48, 32)) -> nn.Linear:
    generator = torch.Generator().manual_seed(0)
    linear = nn.Linear(shape[1], shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.randn(shape, generator=generator))
        rows, columns = (block.rows, block.columns) if block else (1, 1)
        tiles = torch.rand(shape[0] // rows, shape[1] // columns, generator=generator) < sparsity
        linear.weight[tiles.repeat_interleave(rows, 0).repeat_interleave(columns, 1)] = 0
    return linear


def _pruned_tiny(path, sparsity: float = 0.9, structure: str | None = None) -> nn.Module:
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prune(model, shortcut_plan("magnitude", None if structure == "2:4" else sparsity, structure), CalibrationConfig())
    return model.eval()


@pytest.mark.parametrize("kernel, block", [("csr", None), ("scipy-csr", None), ("bsr", BlockStructure(2, 2))])
@pytest.mark.parametrize("tokens", [1, 7])
def test_each_sparse_kernel_gives_the_dense_output(kernel, block, tokens):
    linear = _pruned_linear(0.8, block)
    x = torch.randn(1, tokens, 32)
    module = SparseLinear(linear, {"decode": kernel, "prefill": kernel}, decode_tokens=1, block=block)
    with torch.no_grad():
        torch.testing.assert_close(module(x), F.linear(x, linear.weight, linear.bias), rtol=1e-5, atol=1e-5)
    assert module.fallback_reason is None and module.weight_bytes() < linear.weight.numel() * 4


def _logits_around_runtime(model, runtime: str, shapes, batch: int):
    """(logits before, `apply_runtime`'s report, logits after) on one fixed batch of `batch` x 12 ids."""
    ids = torch.randint(0, 500, (batch, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
        report = apply_runtime(model, runtime, shapes, repeats=1)
        return before, report, model(ids).logits


def test_sparse_runtime_keeps_a_pruned_model_outputs_and_records_every_layer(tiny_llama):
    dense, report, sparse = _logits_around_runtime(_pruned_tiny(tiny_llama), "sparse", RuntimeShapes(1, 24), 2)
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-4)
    summary = report.to_dict()
    assert summary["pruned_layers"] == summary["sparse_layers"] == 14
    layer = summary["layers"][0]
    assert set(layer["timings_ms"]) >= {"dense", "csr", "scipy-csr"} and layer["prefill"] != "dense"
    assert "CUDA" in layer["unavailable"]["semi-structured"] or "2:4" in layer["unavailable"]["semi-structured"]
    assert summary["pruned_linear_memory_ratio"] < 0.5  # 90 % zeros, int32 indices


def test_sparse_storage_frees_the_dense_weight(tiny_llama):
    model = _pruned_tiny(tiny_llama, 0.95)
    weight = weakref.ref(model.model.layers[0].mlp.up_proj.weight)
    apply_runtime(model, "csr", RuntimeShapes(1, 8), repeats=1)
    gc.collect()
    assert weight() is None
    assert isinstance(model.model.layers[0].mlp.up_proj, SparseLinear)


@pytest.mark.parametrize("mode", ["sparse", "csr", "semi-structured"])
def test_sparse_runtime_on_an_unpruned_model_is_refused(tiny_llama, mode):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with pytest.raises(UserError, match=f"runtime={mode}: the model has no pruned layers"):
        apply_runtime(model, mode)
    assert apply_runtime(model, "auto").to_dict()["pruned_layers"] == 0  # auto: nothing to choose, no error


def test_two_four_kernel_is_refused_on_cpu_and_on_a_layer_that_is_not_two_four(tiny_llama):
    with pytest.raises(UserError, match="need a CUDA GPU"):
        apply_runtime(_pruned_tiny(tiny_llama, structure="2:4"), "semi-structured")
    with pytest.raises(UserError, match="not 2:4 sparse"):
        apply_runtime(_pruned_tiny(tiny_llama, 0.5), "semi-structured")


def test_unknown_runtime_is_a_user_error():
    with pytest.raises(UserError, match="unknown runtime 'fast'; use one of: dense, sparse, auto, csr"):
        parse_runtime("fast")


def test_a_kernel_failing_at_run_time_falls_back_to_dense_with_a_reason(tiny_llama, monkeypatch):
    model = _pruned_tiny(tiny_llama)
    ids = torch.randint(0, 500, (1, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dense = model(ids).logits
        report = apply_runtime(model, "csr", RuntimeShapes(1, 6), repeats=1)

        def broken(storage, x):
            raise RuntimeError("kernel exploded\nsecond line")

        monkeypatch.setitem(KERNELS, "csr", dataclasses.replace(KERNELS["csr"], matmul=broken))
        after = model(ids).logits
    torch.testing.assert_close(after, dense, rtol=1e-5, atol=1e-5)
    fallbacks = report.to_dict()["fallbacks"]
    assert len(fallbacks) == 14 and "csr failed at run time" in fallbacks[0] and "kernel exploded" in fallbacks[0]
    assert report.to_dict()["layers"][0]["prefill"] == "dense"


@pytest.mark.parametrize("mode, timings, expected", [
    ("auto", {"dense": 1.0, "semi-structured": 0.5}, "semi-structured"),
    ("auto", {"dense": 1.0, "semi-structured": 1.0 / AUTO_MARGIN + 0.01}, "dense"),  # within the margin
    ("auto", {"dense": 1.0, "csr": 0.9, "semi-structured": 0.7}, "semi-structured"),
    ("sparse", {"dense": 1.0, "csr": 3.0, "scipy-csr": 2.0}, "scipy-csr"),  # sparse even when slower
    ("csr", {"dense": 1.0, "csr": 3.0}, "csr"),
])
def test_kernel_choice_from_timings(mode, timings, expected):
    assert choose._pick(mode, "decode", {name: {"decode": ms} for name, ms in timings.items()}) == expected


def test_two_four_kernel_is_a_candidate_only_for_two_four_layers_on_cuda():
    two_four = torch.tensor([[1.0, 0.0, 2.0, 0.0], [0.0, 3.0, 0.0, 4.0]])
    assert "CUDA" in unavailable("semi-structured", two_four, None)
    assert "not 2:4" in unavailable("semi-structured", torch.ones(2, 4), None)
    assert "block-structured" in unavailable("bsr", two_four, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_two_four_kernel_on_cuda_gives_the_dense_output():
    linear = _pruned_linear(0.0, shape=(256, 256)).half().cuda()
    with torch.no_grad():
        groups = linear.weight.view(256, 64, 4)
        groups[..., :2] = 0  # 2:4
    module = SparseLinear(linear, {"decode": "semi-structured", "prefill": "semi-structured"}, 1)
    x = torch.randn(64, 256, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        torch.testing.assert_close(module(x), F.linear(x, linear.weight, linear.bias), rtol=1e-2, atol=1e-2)


def test_latency_command_reports_dense_and_runtime_side_by_side(tiny_llama, tmp_path):
    model = _pruned_tiny(tiny_llama, 0.95)
    model.save_pretrained(tmp_path / "pruned")
    (tmp_path / "pruned" / "tokenizer.json").write_bytes((tiny_llama / "tokenizer.json").read_bytes())
    result = CliRunner().invoke(main, ["latency", str(tmp_path / "pruned"), "--runtime", "sparse", "--seqlen", "8",
                                       "--new-tokens", "3", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["runtime_report"]["sparse_layers"] == 14
    assert data["prefill_speedup"] == pytest.approx(data["pairs"]["prefill"]["ratio"], abs=1e-4)
    assert data["dense"]["forward_ms"] == data["pairs"]["prefill"]["dense_ms"] and data["pairs"]["decode"]["pairs"] == 1
    assert data["chosen"]["weights_bytes"] < data["dense"]["weights_bytes"]


def test_latency_command_on_an_unpruned_model_with_sparse_runtime_is_one_line(tiny_llama):
    result = CliRunner().invoke(main, ["latency", str(tiny_llama), "--runtime", "sparse", "--repeats", "1"])
    assert result.exit_code == 2
    last = result.stderr.strip().splitlines()[-1]  # after the loading progress bar: one line, no traceback
    assert last.startswith("error: runtime=sparse: the model has no pruned layers") and "Traceback" not in result.stderr


@pytest.fixture(scope="module")
def task_manager(tmp_path_factory):
    from sparse_bench.model_wrappers.registration import register_with_lm_eval

    register_with_lm_eval()
    from lm_eval.tasks import TaskManager
    from tiny_tasks import write_tiny_choice_task

    return TaskManager(include_path=str(write_tiny_choice_task(tmp_path_factory.mktemp("tasks"))))


def test_lm_eval_metrics_are_identical_with_sparse_auto_and_dense_runtimes(tiny_llama, task_manager):
    import lm_eval
    from tiny_tasks import TASK_NAME

    def evaluate(runtime: str) -> dict:
        return lm_eval.simple_evaluate(model="sparse-hf", model_args=f"pretrained={tiny_llama},method=magnitude,"
                                       f"sparsity=0.9,runtime={runtime}", tasks=[TASK_NAME], device="cpu",
                                       task_manager=task_manager, bootstrap_iters=0)

    runs = {runtime: evaluate(runtime) for runtime in ("dense", "auto", "sparse")}
    metrics = {runtime: run["results"][TASK_NAME] for runtime, run in runs.items()}
    assert metrics["auto"] == metrics["dense"] == metrics["sparse"]
    assert runs["sparse"]["config"]["runtime"]["sparse_layers"] == 14
    assert runs["dense"]["config"]["runtime"] == {**runs["dense"]["config"]["runtime"], "mode": "dense",
                                                  "pruned_layers": 0}


def test_bad_runtime_model_arg_fails_before_loading(tmp_path):
    from sparse_bench.model_wrappers.sparse_hf import SparseHFLM

    with pytest.raises(UserError, match="unknown runtime 'gpu'"):
        SparseHFLM(pretrained=str(tmp_path / "never-loaded"), runtime="gpu")


def test_leaderboard_latency_measure_with_a_runtime_reports_both_sides(tiny_llama):
    from types import SimpleNamespace

    from sparse_bench.leaderboards.cells import expand_cells
    from sparse_bench.leaderboards.families import evaluator_for
    from sparse_bench.leaderboards.measures import MEASURES, LoadedCell
    from sparse_bench.leaderboards.spec_parser import parse_spec

    spec = parse_spec({"models": ["m"], "methods": ["magnitude"], "sparsities": [0.9], "tasks": ["t"],
                       "latency": {"seqlen": 8, "new_tokens": 2, "repeats": 1, "runtime": "sparse"}})
    cell = expand_cells(spec)[1]
    model = _pruned_tiny(tiny_llama)
    run = LoadedCell(cell, spec, None, None, None, None, None, evaluator=evaluator_for(model.config),
                     lm=SimpleNamespace(model=model))
    record = MEASURES["latency"].function(run)
    runtime = record["runtime_latency"]
    assert runtime["runtime"] == "sparse" and runtime["report"]["sparse_layers"] == 14
    assert runtime["prefill_speedup"] > 0 and runtime["report"]["end_to_end"] == {}  # forced: no check
    assert list(MEASURES)[-1] == "latency"  # it swaps sparse layers in, so it runs after every other measure
    with pytest.raises(UserError, match="latency.runtime"):
        parse_spec({"models": ["m"], "tasks": ["t"], "latency": {"runtime": "turbo"}})


def test_pairs_interleave_dense_and_runtime_calls_and_report_the_median_pair_ratio():
    calls, state = [], {}
    times = time_pairs(lambda: calls.append("d" if state["dense"] else "r"), lambda dense: state.update(dense=dense),
                       3, torch.device("cpu"))
    # one warm-up pair first, then the order swaps every pair (a fixed order biases the ratio)
    assert calls == ["d", "r", "d", "r", "r", "d", "d", "r"] and len(times.dense) == len(times.runtime) == 3
    assert PairTimes([1.0, 3.0, 2.0], [2.0, 1.0, 1.0]).ratio == 2.0  # median of 0.5, 3, 2


def _sparse_wins_per_layer(monkeypatch, end_to_end_ratio: dict[str, float]) -> None:
    """Every sparse kernel times faster than dense per layer; the whole model times `end_to_end_ratio[regime]`
    (dense / runtime) in the end-to-end check (after really running both sides once)."""
    monkeypatch.setattr(choose, "time_kernel", lambda name, storage, x, repeats: 1.0 if name == "dense" else 0.5)
    regimes = iter(choose.REGIMES)

    def fake_pairs(run, use_dense, pairs, device):
        for dense in (True, False):
            use_dense(dense)
            run()
        return PairTimes([end_to_end_ratio[next(regimes)]] * pairs, [1.0] * pairs)

    monkeypatch.setattr(choose, "time_pairs", fake_pairs)


def test_auto_reverts_every_layer_to_dense_where_the_whole_model_is_not_faster(tiny_llama, monkeypatch):
    _sparse_wins_per_layer(monkeypatch, {"decode": 1.01, "prefill": 0.8})
    model = _pruned_tiny(tiny_llama)
    dense, runtime_report, after = _logits_around_runtime(model, "auto", RuntimeShapes(1, 24, 2), 2)
    report = runtime_report.to_dict()
    torch.testing.assert_close(after, dense, rtol=0, atol=0)
    assert not any(isinstance(module, SparseLinear) for module in model.modules())
    assert report["sparse_layers"] == 0 and report["pruned_linear_memory_ratio"] == 1.0
    assert report["kernel_counts"] == {"decode:dense": 14, "prefill:dense": 14}
    for regime, ratio in (("decode", 1.01), ("prefill", 0.8)):
        check = report["end_to_end"][regime]
        assert not check["kept"] and check["ratio"] == ratio and check["reverted_layers"] == 14
        assert f"{ratio:.3f}x dense at {regime}" in check["reason"] and check["margin"] == choose.E2E_MARGIN
    assert report["layers"][0]["layer_choice"] != {"decode": "dense", "prefill": "dense"}  # what timing picked


def test_a_regime_running_only_dense_kernels_reports_exactly_1x(tiny_llama, monkeypatch):
    """Where auto runs the dense kernel in every layer, both sides run the same modules: the speedup is 1 by
    construction, whatever the (noisy) pair timings say."""
    _sparse_wins_per_layer(monkeypatch, {"decode": 1.5, "prefill": 0.9})
    measured = measure_runtime(_pruned_tiny(tiny_llama), "auto", batch=1, seqlen=12, new_tokens=2, repeats=1)
    assert measured["identical_kernels"] == {"prefill": True, "decode": False}
    assert measured["prefill_speedup"] == 1.0
    assert measured["decode_speedup"] == pytest.approx(measured["pairs"]["decode"]["ratio"], abs=1e-4)


def test_auto_keeps_the_regime_that_wins_end_to_end_and_counts_both_storages(tiny_llama, monkeypatch):
    _sparse_wins_per_layer(monkeypatch, {"decode": 1.5, "prefill": 0.9})
    model = _pruned_tiny(tiny_llama)
    dense, report, after = _logits_around_runtime(model, "auto", RuntimeShapes(1, 12), 1)
    torch.testing.assert_close(after, dense, rtol=1e-4, atol=1e-4)
    summary = report.to_dict()
    assert summary["end_to_end"]["decode"]["kept"] and not summary["end_to_end"]["prefill"]["kept"]
    assert summary["sparse_layers"] == 14 and summary["kernel_counts"]["prefill:dense"] == 14
    module = model.model.layers[0].mlp.up_proj
    assert module.choice["prefill"] == "dense" and module.choice["decode"] != "dense"
    assert set(module.storage) == {"dense", module.choice["decode"]}  # prefill needs the dense weight back
    assert summary["pruned_linear_stored_bytes"] > summary["pruned_linear_dense_bytes"]  # dense + sparse forms
    assert all(layer.original is None for layer in report.layers)  # kept dense layers released


def test_forced_sparse_runtime_is_never_reverted(tiny_llama, monkeypatch):
    def no_check(*args):
        raise AssertionError("runtime=sparse must not be checked end to end")

    monkeypatch.setattr(choose, "time_pairs", no_check)
    report = apply_runtime(_pruned_tiny(tiny_llama), "sparse", RuntimeShapes(1, 12), repeats=1).to_dict()
    assert report["sparse_layers"] == 14 and report["end_to_end"] == {}
