"""Sparsity analysis: exact fractions on synthetic weights, per block / module type / side, tied weights, formats."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from tiny_models import AUTO_CLASSES

from sparse_bench.harness_ext.analysis import analyze, parse_thresholds
from sparse_bench.harness_ext.analysis.naming import classify
from sparse_bench.harness_ext.analysis.report import markdown_summary
from sparse_bench.harness_ext.analysis.stats import HISTOGRAM_BINS, MagnitudeStats
from sparse_bench.harness_ext.errors import UserError

# Per-block fill patterns and their exact fractions: (zeros, |w| < 0.01, |w| < 0.1). Edge values equal to a
# threshold are not below it (strict); -0.0 is a zero.
PATTERN_A = [0.0, 0.005, -0.05, 0.5]
FRACTIONS_A = (1 / 4, 2 / 4, 3 / 4)
PATTERN_B = [0.0, -0.0, 0.01, -0.0099, 0.1, -0.0999, 0.3, -1.0]
FRACTIONS_B = (2 / 8, 3 / 8, 5 / 8)
OUTSIDE_VALUE = 1.0  # embeddings, final norm, heads: never below a threshold


def load(tiny_model_dirs, kind):
    return AUTO_CLASSES[kind].from_pretrained(tiny_model_dirs[kind]).eval()


@torch.no_grad()
def fill_by_block(model, patterns: dict) -> None:
    """Every parameter of block (side, index) -> its pattern repeated; everything outside blocks -> 1.0."""
    for name, parameter in model.named_parameters():
        kind = classify(name)
        pattern = patterns.get((kind.side, kind.block)) if kind.block is not None else None
        if pattern is None:
            parameter.fill_(OUTSIDE_VALUE)
            continue
        values = torch.tensor(pattern, dtype=parameter.dtype)
        assert parameter.numel() % len(pattern) == 0
        parameter.copy_(values.repeat(parameter.numel() // len(pattern)).reshape(parameter.shape))


def fractions(group) -> tuple[float, float, float]:
    return group["zero_fraction"], group["below"]["0.01"]["fraction"], group["below"]["0.1"]["fraction"]


def test_synthetic_weights_give_exact_fractions_per_block_and_overall(tiny_model_dirs):
    model = load(tiny_model_dirs, "llama")
    fill_by_block(model, {(None, 0): PATTERN_A, (None, 1): PATTERN_B})
    result = analyze(model)
    assert [row["label"] for row in result["per_layer"]] == ["0", "1"]
    assert fractions(result["per_layer"][0]) == FRACTIONS_A
    assert fractions(result["per_layer"][1]) == FRACTIONS_B
    outside = result["outside_blocks"]
    assert outside["numel"] > 0 and fractions(outside) == (0.0, 0.0, 0.0)

    sizes = [result["per_layer"][0]["numel"], result["per_layer"][1]["numel"], outside["numel"]]
    assert sum(sizes) == sum(p.numel() for p in model.parameters())  # tied lm_head counted once
    expected = [sum(size * share for size, share in zip(sizes, column))
                for column in zip(FRACTIONS_A, FRACTIONS_B, (0.0, 0.0, 0.0))]
    overall = result["overall"]
    assert [overall["zeros"], overall["below"]["0.01"]["count"], overall["below"]["0.1"]["count"]] == expected
    assert overall["nonzero"] == overall["numel"] - overall["zeros"]
    assert overall["max_abs"] == 1.0


def test_module_types_and_block_linear(tiny_model_dirs):
    model = load(tiny_model_dirs, "llama")
    fill_by_block(model, {(None, 0): PATTERN_A, (None, 1): PATTERN_A})
    result = analyze(model)
    types = result["per_module_type"]
    assert set(types) == {"attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down",
                          "embed.tokens", "norm"}
    for name in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.gate", "mlp.up", "mlp.down"):
        assert fractions(types[name]) == FRACTIONS_A
    assert types["mlp.up"]["leaves"] == ["up_proj"]
    # block norms follow the block pattern, the final norm is 1.0
    assert types["norm"]["zeros"] == 2 * 2 * 64 // 4
    assert fractions(types["embed.tokens"]) == (0.0, 0.0, 0.0)
    linear = sum(p.numel() for n, p in model.named_parameters() if n.endswith("proj.weight"))
    assert result["block_linear"]["numel"] == linear and fractions(result["block_linear"]) == FRACTIONS_A


def test_encoder_and_decoder_blocks_are_reported_separately(tiny_model_dirs):
    model = load(tiny_model_dirs, "bart")
    fill_by_block(model, {("encoder", 0): PATTERN_A, ("encoder", 1): PATTERN_A,
                          ("decoder", 0): PATTERN_B, ("decoder", 1): PATTERN_B})
    result = analyze(model)
    assert result["architecture_kind"] == "encoder-decoder"
    assert [row["label"] for row in result["per_layer"]] == ["encoder.0", "encoder.1", "decoder.0", "decoder.1"]
    assert [fractions(row) for row in result["per_layer"]] == [FRACTIONS_A] * 2 + [FRACTIONS_B] * 2
    assert result["per_layer"][2]["numel"] > result["per_layer"][0]["numel"]  # cross-attention
    assert fractions(result["per_module_type"]["cross_attn.q"]) == FRACTIONS_B
    tied = {entry["name"] for entry in result["tied"]}
    assert tied == {"model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight"}


@pytest.mark.parametrize("kind, expected_kind", [("bert", "encoder-only"), ("opt", "decoder-only"),
                                                  ("gpt2", "decoder-only")])
def test_block_labels_without_sides(tiny_model_dirs, kind, expected_kind):
    model = load(tiny_model_dirs, kind)
    fill_by_block(model, {(side, 0): PATTERN_A for side in (None, "encoder", "decoder")}
                  | {(side, 1): PATTERN_B for side in (None, "encoder", "decoder")})
    result = analyze(model)
    assert result["architecture_kind"] == expected_kind
    assert [row["label"] for row in result["per_layer"]] == ["0", "1"]
    assert [fractions(row) for row in result["per_layer"]] == [FRACTIONS_A, FRACTIONS_B]
    assert "bias" in result["per_module_type"]  # biases kept apart from their layers


@pytest.mark.parametrize("kind", ["llama", "gpt2", "opt", "bert", "bart"])
def test_checkpoint_streaming_matches_in_memory(tiny_model_dirs, kind):
    from_disk = analyze(tiny_model_dirs[kind])
    in_memory = analyze(load(tiny_model_dirs, kind))
    for key in ("overall", "block_linear", "per_module_type", "per_layer", "outside_blocks", "architecture_kind"):
        assert from_disk[key] == in_memory[key], key
    assert {t["name"] for t in from_disk["tied"]} == {t["name"] for t in in_memory["tied"]}
    assert from_disk["missing"] == []
    assert from_disk["model"]["kind"] == "safetensors"


def test_tied_weights_counted_once_and_reported(tiny_model_dirs):
    model = load(tiny_model_dirs, "llama")
    result = analyze(model)
    embedding = model.get_input_embeddings().weight
    assert result["tied"] == [{"name": "lm_head.weight", "tied_to": "model.embed_tokens.weight",
                               "numel": embedding.numel(), "stored": None}]
    assert "lm_head" not in result["per_module_type"]
    assert result["overall"]["numel"] == sum(p.numel() for p in model.parameters())
    with_duplicates = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    assert with_duplicates - result["overall"]["numel"] == embedding.numel()

    model.lm_head.weight = torch.nn.Parameter(embedding.detach().clone())  # untied: now two tensors
    untied = analyze(model)
    assert untied["tied"] == [] and untied["overall"]["numel"] == with_duplicates
    assert untied["per_module_type"]["lm_head"]["numel"] == embedding.numel()


def test_checkpoint_storing_both_tied_copies_counts_one(tiny_model_dirs, tmp_path):
    model = load(tiny_model_dirs, "llama")
    state = {name: p.detach().clone() for name, p in model.named_parameters(remove_duplicate=False)}
    assert "lm_head.weight" in state
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_model_dirs["llama"] / "config.json").read_text())
    result = analyze(tmp_path)
    assert result["tied"][0]["name"] == "lm_head.weight" and result["tied"][0]["stored"] is True
    assert result["overall"] == analyze(model)["overall"]


@torch.no_grad()
def test_pruned_model_reports_the_sparsity_applied(tiny_model_dirs):
    model = load(tiny_model_dirs, "opt")
    zeroed = 0
    for name, parameter in model.named_parameters():
        if name.endswith("proj.weight") or name.endswith(("fc1.weight", "fc2.weight")):
            keep = parameter.abs().topk(parameter.shape[1] // 4, dim=1).indices  # keep 25 % per row
            mask = torch.zeros_like(parameter, dtype=torch.bool).scatter_(1, keep, True)
            parameter.mul_(mask)
            zeroed += int((~mask).sum())
    result = analyze(model)
    assert result["block_linear"]["zeros"] == zeroed
    assert result["block_linear"]["zero_fraction"] == 0.75
    assert result["per_module_type"]["mlp.up"]["zero_fraction"] == 0.75
    assert result["per_module_type"]["embed.tokens"]["zeros"] == 0
    assert result["overall"]["zeros"] == zeroed


def test_engine_pruned_model_reports_the_engine_sparsity(tiny_model_dirs):
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.request import shortcut_plan

    model = load(tiny_model_dirs, "llama")
    report = prune(model, shortcut_plan("magnitude", 0.5), progress=False).to_dict()
    result = analyze(model)
    per_tensor = {row["name"]: row for row in result["per_tensor"]}
    for layer, measured in report["layers"].items():
        assert per_tensor[f"{layer}.weight"]["zeros"] == measured["zeros"]
    assert result["block_linear"]["zeros"] == report["zeros"]
    assert math.isclose(result["block_linear"]["zero_fraction"], 0.5, abs_tol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_weights(tiny_model_dirs, dtype, tmp_path):
    model = load(tiny_model_dirs, "llama")
    fill_by_block(model, {(None, 0): PATTERN_A, (None, 1): PATTERN_A})
    model = model.to(dtype)
    result = analyze(model)
    assert result["dtypes"] == {str(dtype).removeprefix("torch."): result["overall"]["numel"]}
    assert fractions(result["block_linear"]) == FRACTIONS_A
    model.save_pretrained(tmp_path)
    assert analyze(tmp_path)["block_linear"] == result["block_linear"]


def test_sharded_single_file_and_bin_checkpoints(tiny_model_dirs, tmp_path):
    model = load(tiny_model_dirs, "gpt2")
    expected = analyze(model)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert analyze(tmp_path / "sharded")["overall"] == expected["overall"]

    single = analyze(tiny_model_dirs["gpt2"] / "model.safetensors")  # config.json beside it: tied detected
    assert single["overall"] == expected["overall"] and single["tied"]

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    torch.save(model.state_dict(), bin_dir / "pytorch_model.bin")
    (bin_dir / "config.json").write_text((tiny_model_dirs["gpt2"] / "config.json").read_text())
    from_bin = analyze(bin_dir)
    assert from_bin["model"]["kind"] == "pytorch_bin" and from_bin["overall"] == expected["overall"]


def test_compressed_checkpoint_is_read_through_the_checkpoints_package(tiny_model_dirs, tmp_path):
    from sparse_bench.harness_ext.checkpoints import save_checkpoint

    model = load(tiny_model_dirs, "llama")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("proj.weight"):
                parameter[parameter.abs() < 0.03] = 0.0
    save_checkpoint(model, None, tmp_path / "compressed", save_format="compressed")
    result = analyze(tmp_path / "compressed")
    assert result["model"]["kind"] == "sparse_bench_compressed"
    assert result["overall"] == analyze(model)["overall"]
    assert [t["name"] for t in result["tied"]] == ["lm_head.weight"]


def test_unreadable_inputs_raise_user_errors(tmp_path, tiny_model_dirs):
    with pytest.raises(UserError, match="no weights"):
        analyze(tmp_path)
    save_file({"model.layers.0.mlp.up_proj.weight.bitmask": torch.zeros(4, dtype=torch.uint8)},
              str(tmp_path / "model.safetensors"))
    with pytest.raises(UserError, match="compressed-tensors"):
        analyze(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="cannot read"):
        analyze(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        analyze(tmp_path / "missing" / "model")
    config = load(tiny_model_dirs, "llama").config
    with torch.device("meta"):
        meta_model = AUTO_CLASSES["llama"].from_config(config)
    with pytest.raises(UserError, match="meta device"):
        analyze(meta_model)


def test_missing_parameters_are_reported(tiny_model_dirs, tmp_path):
    model = load(tiny_model_dirs, "llama")
    state = {n: p.detach().clone() for n, p in model.state_dict().items() if "layers.1.mlp" not in n}
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((tiny_model_dirs["llama"] / "config.json").read_text())
    result = analyze(tmp_path)
    assert sorted(result["missing"]) == [f"model.layers.1.mlp.{p}_proj.weight" for p in ("down", "gate", "up")]
    assert "MISSING from the checkpoint (3 parameters" in markdown_summary(result)

    renamed = {f"legacy.{name}": tensor for name, tensor in state.items()}  # nothing matches the definition
    save_file(renamed, str(tmp_path / "model.safetensors"))
    result = analyze(tmp_path)
    assert result["missing"] == [] and result["tied"] == [] and "no stored name" in result["tied_detection"]
    assert result["overall"]["numel"] == sum(tensor.numel() for tensor in state.values())


def test_chunk_statistics_nonfinite_and_histogram():
    values = torch.tensor([0.0, -0.0, 1e-12, 3e-3, -0.02, 0.5, 2e4, float("nan"), float("inf")])
    stats = MagnitudeStats.of_chunk(values, (0.01, 0.1))
    assert (stats.numel, stats.zeros, stats.nonfinite, stats.below) == (9, 2, 2, [4, 5])
    assert stats.histogram.shape == (HISTOGRAM_BINS + 2,)
    assert stats.histogram[0] == 1 and stats.histogram[-1] == 1  # 1e-12 underflows, 2e4 overflows
    assert stats.histogram.sum() == stats.numel - stats.zeros - stats.nonfinite
    merged = MagnitudeStats((0.01, 0.1)).add(stats).add(stats)
    assert merged.below == [8, 10] and merged.histogram.sum() == 2 * stats.histogram.sum()
    assert json.loads(json.dumps(stats.to_dict(with_histogram=True)))["below"]["0.01"]["count"] == 4


def test_thresholds_are_validated():
    assert parse_thresholds("0.1,0.01,0.1") == (0.01, 0.1)
    assert parse_thresholds(0.05) == (0.05,) and parse_thresholds([1e-3]) == (0.001,)
    for bad in ("", "0.1,x", "-0.1", "0", "nan"):
        with pytest.raises(UserError):
            parse_thresholds(bad)


@pytest.mark.parametrize("name, block, side, module_type", [
    ("model.layers.3.self_attn.q_proj.weight", 3, None, "attn.q"),
    ("model.layers.0.mlp.gate_proj.weight", 0, None, "mlp.gate"),
    ("model.layers.0.input_layernorm.weight", 0, None, "norm"),
    ("model.embed_tokens.weight", None, None, "embed.tokens"),
    ("lm_head.weight", None, None, "lm_head"),
    ("transformer.h.11.attn.c_attn.weight", 11, None, "attn.qkv"),
    ("transformer.h.1.attn.c_proj.weight", 1, None, "attn.o"),
    ("transformer.h.1.mlp.c_proj.weight", 1, None, "mlp.down"),
    ("transformer.h.1.mlp.c_fc.bias", 1, None, "bias"),
    ("transformer.wpe.weight", None, None, "embed.positions"),
    ("transformer.ln_f.weight", None, None, "norm"),
    ("model.decoder.layers.2.fc1.weight", 2, "decoder", "mlp.up"),
    ("model.decoder.layers.2.self_attn.out_proj.weight", 2, "decoder", "attn.o"),
    ("bert.encoder.layer.5.attention.self.query.weight", 5, "encoder", "attn.q"),
    ("bert.encoder.layer.5.attention.output.dense.weight", 5, "encoder", "attn.o"),
    ("bert.encoder.layer.5.intermediate.dense.weight", 5, "encoder", "mlp.up"),
    ("bert.encoder.layer.5.output.dense.weight", 5, "encoder", "mlp.down"),
    ("bert.encoder.layer.5.output.LayerNorm.weight", 5, "encoder", "norm"),
    ("bert.embeddings.token_type_embeddings.weight", None, None, "embed.token_type"),
    ("cls.predictions.transform.dense.weight", None, None, "head"),
    ("cls.predictions.decoder.weight", None, None, "lm_head"),
    ("roberta.encoder.layer.0.attention.self.key.weight", 0, "encoder", "attn.k"),
    ("lm_head.dense.weight", None, None, "head"),
    ("model.decoder.layers.1.encoder_attn.v_proj.weight", 1, "decoder", "cross_attn.v"),
    ("model.encoder.layers.1.fc2.weight", 1, "encoder", "mlp.down"),
    ("model.shared.weight", None, None, "embed.tokens"),
    ("encoder.block.2.layer.1.DenseReluDense.wo.weight", 2, "encoder", "mlp.down"),
    ("decoder.block.0.layer.1.EncDecAttention.q.weight", 0, "decoder", "cross_attn.q"),
    ("gpt_neox.layers.4.attention.query_key_value.weight", 4, None, "attn.qkv"),
    ("gpt_neox.layers.4.mlp.dense_4h_to_h.weight", 4, None, "mlp.down"),
    ("model.layers.0.block_sparse_moe.experts.3.w1.weight", 0, None, "mlp.gate"),
    ("model.layers.0.block_sparse_moe.gate.weight", 0, None, "mlp.router"),
])
def test_parameter_names_are_classified(name, block, side, module_type):
    kind = classify(name)
    assert (kind.block, kind.side, kind.module_type) == (block, side, module_type)


def test_hub_id_is_read_from_the_local_cache(tiny_model_dirs, tmp_path, monkeypatch):
    import huggingface_hub

    commit = "0" * 40
    snapshot = tmp_path / "models--tiny-org--tiny-gpt2" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((tiny_model_dirs["gpt2"] / name).read_bytes())
    (tmp_path / "models--tiny-org--tiny-gpt2" / "refs").mkdir()
    (tmp_path / "models--tiny-org--tiny-gpt2" / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    result = analyze("tiny-org/tiny-gpt2")
    assert result["model"]["path"] == str(snapshot)
    assert result["overall"] == analyze(tiny_model_dirs["gpt2"])["overall"]
    with pytest.raises(UserError, match="neither a local path nor a hub model"):
        analyze("tiny-org/not-cached")
