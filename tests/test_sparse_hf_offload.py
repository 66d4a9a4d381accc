"""Evaluating a model bigger than memory: sparse-hf with HFLM's own device_map / offload arguments.

On a CPU-only machine `parallelize=True` with `max_cpu_memory` gives accelerate `device_map="auto"` and
`max_memory={"cpu": ...}`; whatever does not fit is offloaded to disk (`offload_folder`) and its weights are
read back for each forward. Here a streamed, pruned tiny Llama gets a cap that forces offload, and must
score exactly what it scores in memory.
"""

from __future__ import annotations

import torch

from sparse_bench.model_wrappers.registration import register_with_lm_eval

register_with_lm_eval()

from lm_eval.api.instance import Instance  # noqa: E402

from sparse_bench.harness_ext.pruning.plan import CalibrationConfig  # noqa: E402
from sparse_bench.harness_ext.pruning.request import shortcut_plan  # noqa: E402
from sparse_bench.harness_ext.pruning.streaming import prune_streaming  # noqa: E402
from sparse_bench.model_wrappers.sparse_hf import SparseHFLM  # noqa: E402


def loglikelihoods(lm):
    requests = [Instance("loglikelihood", None, (context, continuation), 0)
                for context, continuation in [("The cat sat on the", " mat"), ("Paris is the capital of", " France")]]
    return [value for value, _ in lm.loglikelihood(requests, disable_tqdm=True)]


def test_offloaded_evaluation_scores_like_in_memory(tiny_llama, tmp_path):
    plan = shortcut_plan("wanda", 0.5, None, source="test")
    _, pruned = prune_streaming(str(tiny_llama), plan, CalibrationConfig(data="c4", nsamples=4, seqlen=32),
                                tmp_path / "pruned", progress=False)
    in_memory = SparseHFLM(pretrained=str(pruned), device="cpu", dtype="float32", batch_size=1)
    offloaded = SparseHFLM(pretrained=str(pruned), device="cpu", dtype="float32", batch_size=1, parallelize=True,
                           max_cpu_memory="150KB", offload_folder=str(tmp_path / "offload"))
    placement = set(offloaded.model.hf_device_map.values())
    assert "disk" in placement, offloaded.model.hf_device_map
    assert torch.allclose(torch.tensor(loglikelihoods(offloaded)), torch.tensor(loglikelihoods(in_memory)),
                          rtol=0, atol=1e-5)
    assert offloaded.sparsity_report.overall_sparsity == in_memory.sparsity_report.overall_sparsity == 0.5
