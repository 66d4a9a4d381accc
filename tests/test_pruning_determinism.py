"""SparseGPT (and ADMM) give the same masks whatever the summation order: batch order, thread count, BLAS kernel.

The Hessian is a sum over calibration tokens and its inverse amplifies rounding by the condition number, so
in fp32 a different summation order (another thread count, another CPU's kernel) flipped near-tie choices.
The statistics and the solve are float64; these tests fail if either goes back to fp32.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from sparse_bench.harness_ext.pruning.admm import AdmmOptions, _Problem
from sparse_bench.harness_ext.pruning.calibration import InputStatistics
from sparse_bench.harness_ext.pruning.sparsegpt import inverse_hessian_factor, sparsegpt_prune


def _outlier_inputs(samples: int = 64, tokens: int = 256, columns: int = 512) -> torch.Tensor:
    """Inputs shaped like an LLM layer's: low rank plus small noise, a log-spread scale and a few outlier features."""
    generator = torch.Generator().manual_seed(1)
    low_rank = torch.randn(samples, tokens, 64, generator=generator) @ torch.randn(64, columns, generator=generator)
    inputs = (low_rank + 0.01 * torch.randn(samples, tokens, columns, generator=generator))
    inputs = inputs * torch.logspace(0, 2, columns)
    inputs[..., :4] *= 50
    return inputs


def _mask_from(inputs: torch.Tensor, order: list[int], weight: torch.Tensor) -> torch.Tensor:
    stats = InputStatistics(inputs.shape[-1], with_hessian=True, device=inputs.device)
    for index in order:
        stats.add(inputs[index:index + 1])
    pruned, _ = sparsegpt_prune(weight, stats.hessian, [(weight.shape[0], 0.5)], None, 128, 0.01)
    return pruned != 0


def test_sparsegpt_mask_does_not_depend_on_the_hessian_summation_order():
    inputs = _outlier_inputs()
    weight = torch.randn(256, inputs.shape[-1], generator=torch.Generator().manual_seed(101))
    forward = _mask_from(inputs, list(range(inputs.shape[0])), weight)
    backward = _mask_from(inputs, list(reversed(range(inputs.shape[0]))), weight)
    # with an fp32 Hessian and solve, 6 of these 131,072 choices flip between the two orders
    assert torch.equal(forward, backward)


_DIGEST_SCRIPT = r"""
import hashlib, json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.plan import CalibrationConfig, NMStructure
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.targets import find_target_layers, weight_matrix
torch.set_num_threads(int(sys.argv[2]))
digests = {}
for method in ("sparsegpt", "admm"):
    for structure in (None, NMStructure(2, 4)):
        model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
        prune(model, shortcut_plan(method, 0.5 if structure is None else None, structure),
              CalibrationConfig(data="c4", nsamples=8, seqlen=64, seed=0), tokenizer, progress=False)
        digest = hashlib.sha256()
        for name, module in find_target_layers(model).items():
            digest.update(weight_matrix(module).detach().contiguous().numpy().tobytes())
        digests[f"{method} {structure}"] = digest.hexdigest()
print(json.dumps(digests))
"""


def test_sparsegpt_and_admm_weights_are_identical_with_one_and_two_threads(tiny_llama):
    # gradual ADMM iterates in float32 (admm.py): its N:M choices must not depend on the thread count either
    def digests(threads: int) -> dict[str, str]:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        done = subprocess.run([sys.executable, "-c", _DIGEST_SCRIPT, str(tiny_llama), str(threads)], env=env,
                              capture_output=True, text=True, timeout=300, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])

    assert digests(1) == digests(2)


def _with_threads(threads: int, compute):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return compute()
    finally:
        torch.set_num_threads(previous)


def test_hessian_factorisations_are_identical_with_one_and_two_threads():
    # LAPACK's blocked Cholesky sums in a thread-count-dependent order from 256 columns on: without
    # reproducible.one_cpu_thread these factors differ in their last bits (and SmolLM2's 2:4 masks with them)
    inputs = torch.randn(1024, 512, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    hessian = inputs.t() @ inputs
    weight = torch.randn(64, 512, generator=torch.Generator().manual_seed(4))
    sparsegpt_factor = [_with_threads(t, lambda: inverse_hessian_factor(hessian, 0.01)[0]) for t in (1, 2)]
    admm_inverse = [_with_threads(t, lambda: _Problem(weight, hessian, AdmmOptions()).inverse) for t in (1, 2)]
    assert torch.equal(*sparsegpt_factor)
    assert torch.equal(*admm_inverse)
