"""The tasks inside lm-eval, end to end on a tiny model with --limit, offline: `hf` and `sparse-hf`, found with
and without an include path, through the Python API and the CLI."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import lm_eval
import pytest
from lm_eval.tasks import TaskManager
from task_utils import load_task_utils

from sparse_bench.model_wrappers.registration import register_with_lm_eval
from sparse_bench.tasks import TASKS_DIR

billsum = load_task_utils("sparsebench_billsum")
mrpc = load_task_utils("sparsebench_mrpc")

OUR_TASKS = ("sparsebench_mrpc", "sparsebench_mrpc_fewshot", "sparsebench_billsum", "sparsebench_billsum_loglik")
MRPC_METRICS = {"acc", "f1", "yes_rate", "majority_acc", "majority_f1", "auc", "auc_low", "auc_high", "gold_nll",
                "one_class", "auc_at_chance"}
BILLSUM_METRICS = {*billsum.ROUGE_TYPES, *(f"lead_{name}" for name in billsum.ROUGE_TYPES), "empty",
                   "bertscore_precision", "bertscore_recall", "bertscore_f1", "repeated_4gram", "distinct_1",
                   "distinct_2"}


@pytest.fixture(scope="module", autouse=True)
def registered():
    register_with_lm_eval()


@pytest.fixture(scope="module")
def data_with_train(data_dir, tmp_path_factory):
    """The shared data plus a small MRPC train.tsv whose sentences say where they come from."""
    root = tmp_path_factory.mktemp("data")
    for name in ("glue_mrpc", "billsum"):
        shutil.copytree(data_dir / name, root / name)
    lines = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    lines += [f"{k % 2}\t{k}\t{k + 100}\tTrain sentence {k} a.\tTrain sentence {k} b." for k in range(20)]
    (root / "glue_mrpc" / "train.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def metrics_of(results: dict, task: str) -> dict[str, float]:
    return {key.split(",")[0]: value for key, value in results["results"][task].items()
            if key.endswith(",none") and "_stderr" not in key}


def check_task_results(results: dict, tokenizer) -> None:
    mrpc_metrics = metrics_of(results, "sparsebench_mrpc")
    assert set(mrpc_metrics) == MRPC_METRICS
    assert all(0.0 <= mrpc_metrics[name] <= 1.0 for name in MRPC_METRICS - {"gold_nll", "auc", "auc_low", "auc_high"})
    assert mrpc_metrics["gold_nll"] > 0
    generation = metrics_of(results, "sparsebench_billsum")
    assert set(generation) == BILLSUM_METRICS and all(0.0 <= value <= 1.0 for value in generation.values())
    assert generation["lead_rouge1"] > 0.1  # the bills' own first tokens share words with their summaries
    assert 0 < metrics_of(results, "sparsebench_billsum_loglik")["bits_per_byte"] < 20
    for sample in results["samples"]["sparsebench_billsum"]:
        prompt = sample["arguments"][0][0]
        assert prompt.startswith("Summarize the following bill:") and prompt.endswith("Summary:")
        assert len(tokenizer(prompt)["input_ids"]) + 128 <= 512  # lm-eval had nothing to cut off
    for sample in results["samples"]["sparsebench_billsum_loglik"]:
        context, continuation = sample["arguments"][0]
        assert len(tokenizer(context + continuation)["input_ids"]) <= 512


def test_tasks_and_group_are_found_without_include_path():
    manager = TaskManager(include_defaults=False)  # lm-eval's own ~10,000 YAMLs take 10 s to index
    assert set(OUR_TASKS) <= set(manager.all_tasks) and "sparsebench" in manager.all_groups


def test_short_model_names_reach_task_loaders_as_checkpoint_directories(monkeypatch):
    import sparse_bench.harness_ext.models as models
    from sparse_bench.model_wrappers.registration import with_resolved_model_name

    monkeypatch.setattr(models, "find_or_prepare_model", lambda name: f"/prepared/{name}")
    assert with_resolved_model_name({"pretrained": "smollm2-135m", "sparsity": 0.5}) == {
        "pretrained": "/prepared/smollm2-135m", "sparsity": 0.5}
    assert with_resolved_model_name({"pretrained": "org/model"}) == {"pretrained": "org/model"}
    assert with_resolved_model_name(None) is None


def test_a_checkout_works_with_include_path_alone(tmp_path, data_dir):
    """A copy of tasks/ in a plain lm-eval process (no plugin), with sparse_bench not importable at all."""
    checkout = tmp_path / "tasks"
    shutil.copytree(TASKS_DIR, checkout, ignore=shutil.ignore_patterns("__pycache__", "__init__.py"))
    script = (
        "import sys; sys.modules['sparse_bench'] = None\n"
        "from lm_eval.tasks import TaskManager\n"
        f"manager = TaskManager(include_path={str(checkout)!r}, include_defaults=False)\n"
        f"print(sorted(set(manager.all_tasks) & set({list(OUR_TASKS)!r})), 'sparsebench' in manager.all_groups)\n"
        "task = manager.load(['sparsebench_mrpc'])['tasks']['sparsebench_mrpc']\n"
        "print(len(task.eval_docs))\n"
        "import os; os.environ['SPARSE_BENCH_DATA_DIR'] = '/nonexistent'\n"
        "try:\n    manager.load(['sparsebench_mrpc'])\nexcept Exception as error:\n"
        "    print(type(error).__name__, '|', error)\n")
    env = {**os.environ, "SPARSE_BENCH_DATA_DIR": str(data_dir), "SPARSE_BENCH_DISABLE_HOOK": "1"}
    output = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                            check=True).stdout.splitlines()
    assert output[0] == f"{sorted(OUR_TASKS)} True"
    assert output[1] == "408"
    assert output[2] == "DataError | /nonexistent/glue_mrpc/validation.tsv is missing; put the GLUE MRPC TSV " \
                        "there or unset SPARSE_BENCH_DATA_DIR to use the hub"


def test_hf_end_to_end(tiny_llama, tiny_tokenizer, data_with_train, monkeypatch):
    monkeypatch.setenv("SPARSE_BENCH_DATA_DIR", str(data_with_train))
    results = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_llama}", tasks=["sparsebench", "sparsebench_mrpc_fewshot"],
        limit=3, bootstrap_iters=0, log_samples=True, device="cpu", batch_size=2)
    check_task_results(results, tiny_tokenizer)
    assert set(metrics_of(results, "sparsebench_mrpc_fewshot")) == MRPC_METRICS
    for sample in results["samples"]["sparsebench_mrpc_fewshot"]:
        prompt = sample["arguments"][0][0]
        assert prompt.count("Answer:") == 6 and prompt.count("Train sentence") == 10  # 5 shots from train.tsv
        assert prompt.endswith(f"Sentence 2: {sample['doc']['sentence2']}\nQuestion: Do both sentences mean "
                               "the same thing?\nAnswer:")


def test_sparse_hf_end_to_end(tiny_llama, tiny_tokenizer, data_dir, monkeypatch):
    monkeypatch.setenv("SPARSE_BENCH_DATA_DIR", str(data_dir))
    model_args = {"pretrained": str(tiny_llama), "method": "magnitude", "sparsity": 0.5}
    manager = TaskManager(include_defaults=False, metadata=model_args)  # what simple_evaluate builds, minus
    results = lm_eval.simple_evaluate(                                  # the 10 s of lm-eval's own tasks
        model="sparse-hf", model_args=model_args, tasks=["sparsebench"], limit=2, bootstrap_iters=0,
        log_samples=True, device="cpu", batch_size=2, task_manager=manager)
    check_task_results(results, tiny_tokenizer)
    assert results["config"]["sparsity"]["overall_sparsity"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_cli_runs_a_task_with_model_args_as_task_metadata(tiny_llama, data_dir, tmp_path):
    """`sparse-bench eval` = lm-eval's CLI: its TaskManager gets the model args that Billsum needs."""
    command = [sys.executable, "-m", "sparse_bench.harness_ext.cli", "eval", "--model", "hf", "--model_args",
               f"pretrained={tiny_llama}", "--tasks", "sparsebench_billsum_loglik", "--limit", "2", "--device",
               "cpu", "--output_path", str(tmp_path / "out"), "--log_samples"]
    env = {**os.environ, "SPARSE_BENCH_DATA_DIR": str(data_dir)}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    [result_file] = (tmp_path / "out").rglob("results_*.json")
    value = json.loads(result_file.read_text())["results"]["sparsebench_billsum_loglik"]["bits_per_byte,none"]
    assert math.isfinite(value) and value > 0
    assert len(list((tmp_path / "out").rglob("samples_sparsebench_billsum_loglik_*.jsonl"))) == 1
