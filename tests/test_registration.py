"""`sparse-hf` is visible to lm-eval 0.4.13 without hiding its built-in models, in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("first_import", [
    "from lm_eval.tasks import TaskManager",  # the task manager module is mid-import when the registry hook runs
    "import lm_eval.evaluator",
    "from sparse_bench.model_wrappers.sparse_hf import SparseHFLM",
])
def test_start_up_hook_works_whatever_is_imported_first(first_import):
    result = run_python("import sparse_bench.model_wrappers.lm_eval_hook as hook; hook.install()\n"
                        f"{first_import}\n"
                        "from lm_eval.api.registry import get_model\n"
                        "from lm_eval.tasks import TaskManager\n"
                        "print(get_model('hf').__name__, get_model('sparse-hf').__name__,\n"
                        "      'sparsebench_mrpc' in TaskManager().all_tasks)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["HFLM", "SparseHFLM", "True"]


def test_registered_task_folder_is_indexed():
    result = run_python("from sparse_bench.model_wrappers.registration import register_with_lm_eval\n"
                        "register_with_lm_eval(); register_with_lm_eval()\n"
                        "from lm_eval.tasks import TaskManager\n"
                        "from sparse_bench.tasks import TASKS_DIR\n"
                        "tm = TaskManager(include_path='/nonexistent-extra')\n"
                        "print(tm.include_path[0] == TASKS_DIR, len(tm.include_path))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "2"]


def test_user_error_is_one_line_and_exit_2_in_any_lm_eval_program():
    result = run_python("from sparse_bench.model_wrappers.registration import register_with_lm_eval\n"
                        "register_with_lm_eval()\n"
                        "from sparse_bench.harness_ext.errors import UserError\n"
                        "raise UserError('sparsity must be in [0, 1); for 50 % write 0.5')")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: sparsity must be in [0, 1); for 50 % write 0.5"


def test_other_exceptions_keep_their_traceback():
    result = run_python("from sparse_bench.model_wrappers.registration import register_with_lm_eval\n"
                        "register_with_lm_eval()\n"
                        "raise RuntimeError('a bug')")
    assert result.returncode == 1 and "Traceback" in result.stderr


HOOK = Path(sysconfig.get_paths()["purelib"]) / "sparse_bench_lm_eval_hook.pth"


@pytest.mark.skipif(not HOOK.exists(), reason="editable install: no start-up hook (CI installs with pip install .)")
def test_plain_lm_eval_command_sees_sparse_hf(tiny_llama, tmp_path):
    from tiny_tasks import TASK_NAME, write_tiny_choice_task

    tasks = write_tiny_choice_task(tmp_path / "tasks")
    lm_eval = Path(sys.executable).with_name("lm_eval")
    result = subprocess.run(
        [str(lm_eval), "--model", "sparse-hf", "--model_args",
         f"pretrained={tiny_llama},method=magnitude,sparsity=0.5", "--tasks", TASK_NAME, "--include_path",
         str(tasks), "--device", "cpu", "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert TASK_NAME in result.stdout
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    import json

    sparsity = json.loads(results_file.read_text())["config"]["sparsity"]
    assert abs(sparsity["overall_sparsity"] - 0.5) < 0.01
