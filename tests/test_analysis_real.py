"""The analysis on the real default model (SmolLM2-135M-Instruct): checkpoint streaming, in memory, pruned."""

from __future__ import annotations

import pytest

from sparse_bench.harness_ext.analysis import analyze

pytestmark = pytest.mark.slow

PARAMETERS = 134_515_008  # FACTS.md: tied embeddings counted once
LAYERS = 30


@pytest.fixture(scope="module")
def dense_analysis():
    return analyze("smollm2-135m")


def test_default_model_checkpoint(dense_analysis):
    result = dense_analysis
    assert result["overall"]["numel"] == PARAMETERS and result["dtypes"] == {"float32": PARAMETERS}
    assert [row["label"] for row in result["per_layer"]] == [str(index) for index in range(LAYERS)]
    assert len({row["numel"] for row in result["per_layer"]}) == 1
    assert [(t["name"], t["tied_to"]) for t in result["tied"]] == [("lm_head.weight", "model.embed_tokens.weight")]
    assert set(result["per_module_type"]) == {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up",
                                              "mlp.down", "embed.tokens", "norm"}
    assert result["missing"] == [] and result["skipped"] == []
    # FACTS.md: ~0.03 % of the weights are exact zeros already (Q4_1 GGUF origin)
    assert 0.0002 < result["block_linear"]["zero_fraction"] < 0.0005
    below = result["overall"]["below"]
    assert 0 < below["0.01"]["fraction"] < below["0.1"]["fraction"] < 1


def test_default_model_in_memory_and_pruned(dense_analysis):
    from sparse_bench.harness_ext.models import load_model
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.request import shortcut_plan

    model, _ = load_model("smollm2-135m", "float32")
    in_memory = analyze(model)
    for key in ("overall", "block_linear", "per_module_type", "per_layer"):
        assert in_memory[key] == dense_analysis[key], key
    report = prune(model, shortcut_plan("magnitude", 0.5), progress=False)
    pruned = analyze(model)
    assert pruned["block_linear"]["zeros"] == report.zeros
    assert pruned["block_linear"]["zero_fraction"] == pytest.approx(0.5, abs=1e-9)
    assert pruned["per_module_type"]["embed.tokens"] == dense_analysis["per_module_type"]["embed.tokens"]
