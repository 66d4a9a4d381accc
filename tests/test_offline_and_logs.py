"""Offline without a retry loop, and lm-eval's per-task warnings shown once."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest

from sparse_bench.harness_ext import hub
from sparse_bench.model_wrappers.log_filters import OncePerMessage

UNRESOLVABLE = "hub.sparse-bench.invalid"  # .invalid never resolves (RFC 2606)


def test_goes_offline_when_the_hub_is_unreachable_and_the_user_did_not_choose(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    assert hub.offline_if_hub_unreachable(UNRESOLVABLE, timeout=1.0)
    assert all(os.environ[name] == "1" for name in hub.OFFLINE_VARIABLES)
    assert huggingface_hub.constants.HF_HUB_OFFLINE and datasets.config.HF_HUB_OFFLINE


def test_an_explicit_choice_is_kept(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    assert not hub.offline_if_hub_unreachable(UNRESOLVABLE, timeout=1.0)
    assert os.environ["HF_HUB_OFFLINE"] == "0" and "HF_DATASETS_OFFLINE" not in os.environ


def test_plain_lm_eval_offline_without_data_dir_fails_at_once_with_one_line(tiny_llama, tmp_path):
    """The README's first example in a plain shell: no SPARSE_BENCH_DATA_DIR, no HF_HUB_OFFLINE."""
    if hub.hub_reachable():
        pytest.skip("this machine reaches the Hugging Face hub; the test needs one that does not")
    lm_eval = shutil.which("lm_eval", path=os.path.dirname(sys.executable))
    if lm_eval is None:
        pytest.skip("the lm_eval command is not installed beside this interpreter")
    env = {name: value for name, value in os.environ.items()
           if name not in (*hub.OFFLINE_VARIABLES, "SPARSE_BENCH_DATA_DIR")}
    env["HF_HOME"] = str(tmp_path / "hf_home")  # no cached dataset to fall back on
    run = subprocess.run([lm_eval, "--model", "sparse-hf", "--model_args", f"pretrained={tiny_llama}",
                          "--tasks", "sparsebench_mrpc", "--limit", "2", "--device", "cpu"],
                         capture_output=True, text=True, env=env, timeout=300)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2, run.stderr[-2000:]
    assert lines[-1].startswith("error: cannot load nyu-mll/glue/mrpc") and "SPARSE_BENCH_DATA_DIR" in lines[-1]
    assert "running offline" in run.stderr
    assert "Traceback" not in run.stderr


def _records(logger: logging.Logger, messages: list[str]) -> list[str]:
    shown: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            shown.append(record.getMessage())

    handler = Keep()
    logger.addHandler(handler)
    try:
        for message in messages:
            logger.warning(message)
        logger.error("task_a: broken")
        logger.error("task_a: broken")
    finally:
        logger.removeHandler(handler)
    return shown


def test_per_task_warnings_are_shown_once_and_errors_always():
    logger = logging.getLogger("sparse_bench.test.once")
    logger.propagate = False
    logger.addFilter(OncePerMessage())
    shown = _records(logger, ["task_a: Custom kwargs can be passed", "task_b: Custom kwargs can be passed",
                              "something else", "something else", "task b: has a space so is not a prefix"])
    assert shown == ["task_a: Custom kwargs can be passed", "something else",
                     "task b: has a space so is not a prefix", "task_a: broken", "task_a: broken"]


def test_git_lookup_runs_once_and_keeps_its_stderr_quiet(tmp_path, monkeypatch, capfd):
    import lm_eval.evaluator as evaluator

    from sparse_bench.model_wrappers.log_filters import git_lookup_once

    monkeypatch.chdir(tmp_path)  # not a git repository: `git describe` fails and says so on stderr
    calls = []

    def noisy_lookup():
        calls.append(1)
        os.write(2, b"fatal: not a git repository\n")
        return None

    monkeypatch.setattr(evaluator, "get_git_commit_hash", noisy_lookup)
    git_lookup_once()
    git_lookup_once()  # idempotent: not wrapped twice
    assert evaluator.get_git_commit_hash() is None and evaluator.get_git_commit_hash() is None
    assert calls == [1]
    assert "fatal" not in capfd.readouterr().err
    os.write(2, b"still shown\n")
    assert "still shown" in capfd.readouterr().err
