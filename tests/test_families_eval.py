"""Evaluating every family through lm-eval: encoder-decoder models through sparse-hf's seq2seq backend, and
the combinations that cannot work refused in one line before any weight is loaded or changed."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.model_wrappers.registration import register_with_lm_eval

register_with_lm_eval()

import lm_eval  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from tiny_tasks import TASK_NAME, write_tiny_choice_task  # noqa: E402

from sparse_bench.model_wrappers.sparse_hf import SparseHFLM  # noqa: E402

HOOK = Path(sysconfig.get_paths()["purelib"]) / "sparse_bench_lm_eval_hook.pth"


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_tiny_choice_task(tmp_path_factory.mktemp("tasks"))


def test_seq2seq_backend_prunes_an_encoder_decoder_on_load(tiny_model_dirs, tasks_dir, tiny_calibration_file):
    args = (f"pretrained={tiny_model_dirs['bart']},backend=seq2seq,method=wanda,sparsity=0.5,"
            f"calibration={tiny_calibration_file},nsamples=4,seqlen=16")
    results = lm_eval.simple_evaluate(model="sparse-hf", model_args=args, tasks=[TASK_NAME], device="cpu",
                                      task_manager=TaskManager(include_path=str(tasks_dir), include_defaults=False),
                                      bootstrap_iters=0)
    sparsity = results["config"]["sparsity"]
    assert sparsity["overall_sparsity"] == pytest.approx(0.5)
    layers = sparsity["layers"]
    assert "model.encoder.layers.0.fc1" in layers and "model.decoder.layers.1.encoder_attn.k_proj" in layers
    assert all(layer["sparsity"] == pytest.approx(0.5) for layer in layers.values())
    assert 0.0 <= results["results"][TASK_NAME]["acc,none"] <= 1.0


@pytest.mark.parametrize("kind, backend, message", [
    ("bart", "causal", "encoder-decoder model and backend=causal would load its decoder alone; use backend=seq2seq"),
    ("t5", "causal", "encoder-decoder model"),
    ("llama", "seq2seq", "decoder-only model and has no seq2seq form"),
    ("bert", "default", "encoder-only model, which sparse-hf"),
])
def test_a_backend_that_cannot_fit_the_family_is_refused_before_loading(tiny_model_dirs, kind, backend, message,
                                                                        monkeypatch):
    from sparse_bench.model_wrappers import sparse_hf

    monkeypatch.setattr(sparse_hf, "load_checkpoint", lambda *args, **kwargs: pytest.fail("weights were loaded"))
    with pytest.raises(UserError) as error:
        SparseHFLM(pretrained=str(tiny_model_dirs[kind]), backend=backend, device="cpu", method="magnitude",
                   sparsity=0.5)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.skipif(not HOOK.exists(), reason="editable install: no start-up hook (CI installs with pip install .)")
def test_plain_lm_eval_prunes_tiny_bart_with_the_seq2seq_backend(tiny_model_dirs, tasks_dir, tiny_calibration_file,
                                                                 tmp_path):
    lm_eval_command = str(Path(sys.executable).with_name("lm_eval"))
    common = ["--tasks", TASK_NAME, "--include_path", str(tasks_dir), "--device", "cpu"]
    result = subprocess.run(
        [lm_eval_command, "--model", "sparse-hf", "--model_args",
         f"pretrained={tiny_model_dirs['bart']},backend=seq2seq,method=sparsegpt,sparsity=0.5,"
         f"calibration={tiny_calibration_file},nsamples=4,seqlen=16", *common, "--output_path", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    assert json.loads(results_file.read_text())["config"]["sparsity"]["overall_sparsity"] == pytest.approx(0.5)
    refused = subprocess.run(
        [lm_eval_command, "--model", "sparse-hf", "--model_args",
         f"pretrained={tiny_model_dirs['bart']},backend=causal,method=magnitude,sparsity=0.5", *common],
        capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines()[-1].startswith("error: bart is an encoder-decoder model")
