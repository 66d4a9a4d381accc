"""Latency measurement of one model: what is timed, what is only a warm-up, and the units reported."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from sparse_bench.leaderboards.latency import WARM_UP_TOKENS, measure_latency


def test_generation_is_timed_at_the_asked_length_after_a_short_warm_up(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    lengths, generate = [], model.generate

    def recording_generate(*args, **kwargs):
        lengths.append(kwargs["max_new_tokens"])
        output = generate(*args, **kwargs)
        assert output.shape[1] - args[0].shape[1] == kwargs["max_new_tokens"]  # exactly that many new tokens
        return output

    model.generate = recording_generate
    result = measure_latency(model, batch=2, seqlen=8, new_tokens=5, repeats=4)
    assert lengths == [WARM_UP_TOKENS, 5, 5, 5]  # warm-up, then at most 3 timed runs
    assert result["forward_shape"] == [2, 8] and result["new_tokens"] == 5
    assert result["forward_ms"] > 0 and result["generate_tokens_per_s"] > 0
    assert result["peak_memory_bytes"] > result["weights_bytes"] > 0
    assert result["device"] == "cpu" and result["torch_threads"] >= 1
