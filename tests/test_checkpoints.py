"""save_checkpoint / load_checkpoint / checkpoint_sizes on the tiny models: exact round trips, sizes equal to
the files written, and loud refusals of truncated, altered or incomplete checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM, AutoTokenizer

from sparse_bench.harness_ext.checkpoints import RECORD_NAME, checkpoint_sizes, load_checkpoint, save_checkpoint
from sparse_bench.harness_ext.checkpoints.container import WEIGHTS_NAME
from sparse_bench.harness_ext.errors import UserError

AUTO = {"llama": AutoModelForCausalLM, "gpt2": AutoModelForCausalLM, "opt": AutoModelForCausalLM,
        "bert": AutoModelForMaskedLM, "bart": AutoModelForSeq2SeqLM}


def prune_rows(model: torch.nn.Module, sparsity: float = 0.0, n_m: tuple[int, int] | None = None) -> None:
    """Zero the smallest weights of every 2-D weight except embeddings: per row, or n of every m along rows."""
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() != 2 or "embed" in name or "wte" in name or "wpe" in name or "shared" in name:
                continue
            if n_m is not None:
                n, m = n_m
                groups = parameter.data.reshape(-1, m)
                groups.scatter_(1, groups.abs().topk(m - n, dim=1, largest=False).indices, 0)
            elif sparsity > 0:
                k = int(parameter.shape[1] * sparsity)
                parameter.data.scatter_(1, parameter.abs().topk(k, dim=1, largest=False).indices, 0)


def assert_same_weights(loaded: torch.nn.Module, original: torch.nn.Module) -> None:
    loaded_state, original_state = loaded.state_dict(), original.state_dict()
    assert loaded_state.keys() == original_state.keys()
    for name, tensor in original_state.items():
        assert loaded_state[name].dtype == tensor.dtype, name
        assert torch.equal(loaded_state[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name


@pytest.fixture(scope="module")
def llama(tiny_llama):
    return AutoModelForCausalLM.from_pretrained(tiny_llama), AutoTokenizer.from_pretrained(tiny_llama)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sparsity", [0.1, 0.5, 0.9, 0.99])
def test_compressed_round_trip_is_exact(tiny_llama, tmp_path, sparsity, dtype):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype)
    prune_rows(model, sparsity)
    out = save_checkpoint(model, None, tmp_path / "ckpt", {"method": "test"}, save_format="compressed")
    loaded = load_checkpoint(AutoModelForCausalLM, out)
    assert loaded.dtype == dtype
    assert_same_weights(loaded, model)
    sizes = checkpoint_sizes(out)
    assert sizes["files"][WEIGHTS_NAME] == sizes["compressed_bytes"] == checkpoint_sizes(model)["compressed_bytes"]
    assert sizes["compressed_bytes"] < sizes["dense_bytes"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n_m", [(2, 4), (4, 8)])
def test_n_m_round_trip_uses_the_n_m_encoding(tiny_llama, tmp_path, n_m, dtype):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=dtype)
    prune_rows(model, n_m=n_m)
    out = save_checkpoint(model, None, tmp_path / "ckpt", save_format="compressed")
    assert_same_weights(load_checkpoint(AutoModelForCausalLM, out), model)
    assert checkpoint_sizes(out)["encodings"]["nm"] == 14  # 2 blocks x 7 projections


@pytest.mark.parametrize("kind", ["gpt2", "opt", "bert", "bart"])
def test_other_architectures_round_trip(tiny_model_dirs, tmp_path, kind):
    model = AUTO[kind].from_pretrained(tiny_model_dirs[kind])
    prune_rows(model, 0.7)
    out = save_checkpoint(model, None, tmp_path / kind, save_format="compressed")
    loaded = load_checkpoint(AUTO[kind], out)
    assert type(loaded) is type(model)
    assert_same_weights(loaded, model)


def test_tied_weights_stay_tied(llama, tmp_path):
    model, tokenizer = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    prune_rows(pruned, 0.5)
    out = save_checkpoint(pruned, tokenizer, tmp_path / "ckpt", save_format="compressed")
    loaded = load_checkpoint(AutoModelForCausalLM, out)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert checkpoint_sizes(out)["tied_tensors"] == 1


def test_dense_save_loads_with_stock_transformers_and_keeps_the_record(llama, tmp_path):
    model, tokenizer = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    prune_rows(pruned, 0.5)
    record = {"method": "magnitude", "sparsity": 0.5, "structure": "unstructured"}
    out = save_checkpoint(pruned, tokenizer, tmp_path / "dense", record)
    assert_same_weights(AutoModelForCausalLM.from_pretrained(out), pruned)
    assert_same_weights(load_checkpoint(AutoModelForCausalLM, out), pruned)
    saved = json.loads((out / RECORD_NAME).read_text())
    assert saved["save_format"] == "dense" and saved["prune_record"] == record
    assert saved["files"]["model.safetensors"]["bytes"] == (out / "model.safetensors").stat().st_size
    assert saved["sizes"]["sparsity"] == pytest.approx(checkpoint_sizes(pruned)["sparsity"])
    assert AutoTokenizer.from_pretrained(out).vocab == tokenizer.vocab


def test_stock_transformers_refuses_a_compressed_directory(llama, tmp_path):
    """Not silently random: stock from_pretrained finds no model.safetensors and fails."""
    model, _ = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    prune_rows(pruned, 0.9)
    out = save_checkpoint(pruned, None, tmp_path / "ckpt", save_format="compressed")
    with pytest.raises(OSError):
        AutoModelForCausalLM.from_pretrained(out)


def test_sizes_match_the_files_and_the_dtype_table(llama, tmp_path):
    model, _ = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    prune_rows(pruned, 0.9)
    figures = checkpoint_sizes(pruned)
    state = pruned.state_dict()
    unique = {name: t for name, t in state.items() if name != "lm_head.weight"}  # tied to the embedding
    assert figures["dense_bytes"] == sum(t.numel() * t.element_size() for t in unique.values())
    assert figures["by_dtype"]["float16"]["dense_bytes"] == figures["dense_bytes"] // 2
    assert figures["nonzero_parameters"] == sum(int((t != 0).sum()) for t in unique.values())
    for dtype in (torch.float16, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        out = save_checkpoint(pruned.to(dtype), None, tmp_path / name, save_format="compressed")
        assert (out / WEIGHTS_NAME).stat().st_size == figures["by_dtype"][name]["compressed_bytes"]
        pruned.float()


def test_compressed_of_an_unpruned_model_is_refused(llama, tmp_path):
    model, tokenizer = llama
    with pytest.raises(UserError, match="nothing to compress"):
        save_checkpoint(model, tokenizer, tmp_path / "ckpt", save_format="compressed")
    assert not (tmp_path / "ckpt").exists()
    assert list(tmp_path.iterdir()) == []  # no partial folder left behind


def test_an_interrupted_save_leaves_the_old_checkpoint(llama, tmp_path):
    model, tokenizer = llama
    out = save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    before = sorted(p.name for p in out.iterdir())

    class BrokenTokenizer:
        def save_pretrained(self, directory):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, BrokenTokenizer(), tmp_path / "ckpt")
    assert sorted(p.name for p in out.iterdir()) == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    with pytest.raises(UserError, match="unknown save format"):
        save_checkpoint(model, tokenizer, tmp_path / "other", save_format="sparse")


def test_folders_of_killed_saves_are_cleaned_up(llama, tmp_path):
    import socket
    import subprocess

    model, tokenizer = llama
    finished = subprocess.Popen(["true"])
    finished.wait()
    abandoned = tmp_path / f".ckpt.{socket.gethostname()}.{finished.pid}.0badc0de.partial"
    running = tmp_path / f".ckpt.{socket.gethostname()}.{os.getpid()}.0badc0de.partial"
    for folder in (abandoned, running):
        folder.mkdir()
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    assert not abandoned.exists() and running.exists()


def test_a_folder_that_is_not_a_checkpoint_is_never_replaced(llama, tmp_path):
    model, tokenizer = llama
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no sparse-bench checkpoint"):
        save_checkpoint(model, tokenizer, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


@pytest.fixture()
def compressed_dir(llama, tmp_path) -> Path:
    model, tokenizer = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    prune_rows(pruned, 0.9)
    return save_checkpoint(pruned, tokenizer, tmp_path / "ckpt", save_format="compressed")


def test_truncated_compressed_file_is_refused(compressed_dir):
    weights = compressed_dir / WEIGHTS_NAME
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(UserError, match="truncated"):
        load_checkpoint(AutoModelForCausalLM, compressed_dir)
    with pytest.raises(UserError, match="truncated or damaged"):  # without the record's checks too
        load_checkpoint(AutoModelForCausalLM, compressed_dir, verify=False)


def test_altered_compressed_file_is_refused(compressed_dir):
    weights = compressed_dir / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0x01  # one bit of one stored value
    weights.write_bytes(bytes(data))
    with pytest.raises(UserError, match="SHA-256"):
        load_checkpoint(AutoModelForCausalLM, compressed_dir)


def test_compressed_checkpoint_missing_a_tensor_is_refused(compressed_dir):
    weights = compressed_dir / WEIGHTS_NAME
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    arrays = load_file(str(weights))
    layout = json.loads(metadata["sparse_bench.tensors"])
    layout.pop("model.layers.1.mlp.down_proj.weight")
    metadata["sparse_bench.tensors"] = json.dumps(layout)
    save_file({k: v for k, v in arrays.items() if not k.startswith("model.layers.1.mlp.down_proj.weight:")},
              str(weights), metadata=metadata)
    with pytest.raises(UserError, match=r"1 missing .*model\.layers\.1\.mlp\.down_proj\.weight"):
        load_checkpoint(AutoModelForCausalLM, compressed_dir, verify=False)


def edited_copy(source: Path, out: Path, edit) -> Path:
    """A copy of the checkpoint folder `source` whose model.safetensors state dict went through `edit`."""
    out.mkdir()
    for path in source.iterdir():
        (out / path.name).write_bytes(path.read_bytes())
    state = load_file(str(out / "model.safetensors"))
    edit(state)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def test_dense_checkpoint_with_missing_tensors_is_refused(tiny_llama, tmp_path):
    def drop_two(state):
        del state["model.layers.0.mlp.up_proj.weight"], state["model.norm.weight"]

    out = edited_copy(tiny_llama, tmp_path / "broken", drop_two)
    with pytest.raises(UserError) as error:
        load_checkpoint(AutoModelForCausalLM, out)
    message = str(error.value)
    assert "\n" not in message and "2 missing" in message
    assert "model.layers.0.mlp.up_proj.weight" in message and "model.norm.weight" in message


def test_compressed_tensors_style_keys_get_a_hint(tiny_llama, tmp_path):
    def compress_one(state):
        weight = state.pop("model.layers.0.self_attn.q_proj.weight")
        state["model.layers.0.self_attn.q_proj.compressed"] = weight.reshape(-1)
        state["model.layers.0.self_attn.q_proj.bitmask"] = torch.ones(64, 8, dtype=torch.uint8)

    out = edited_copy(tiny_llama, tmp_path / "ct", compress_one)
    with pytest.raises(UserError, match="compressed-tensors"):
        load_checkpoint(AutoModelForCausalLM, out)


def test_truncated_dense_file_is_refused(tiny_llama, llama, tmp_path):
    model, tokenizer = llama
    for with_record in (True, False):
        out = save_checkpoint(model, tokenizer, tmp_path / f"dense{with_record}")
        if not with_record:
            (out / RECORD_NAME).unlink()
        weights = out / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        with pytest.raises(UserError, match="truncated" if with_record else "cannot load"):
            load_checkpoint(AutoModelForCausalLM, out)


def test_shape_mismatch_is_refused(tiny_llama, tmp_path):
    out = edited_copy(tiny_llama, tmp_path / "mismatch", lambda state: state.update({"model.norm.weight": torch.ones(7)}))
    with pytest.raises(UserError, match="model.norm.weight"):
        load_checkpoint(AutoModelForCausalLM, out)
    with pytest.raises(UserError, match="wrong shape"):
        load_checkpoint(AutoModelForCausalLM, out, ignore_mismatched_sizes=True)


def test_missing_paths_and_offline_hub_ids_fail_in_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_checkpoint(AutoModelForCausalLM, tmp_path / "nowhere")
    with pytest.raises(UserError, match="cannot load checkpoint sparse-bench-test/no-such-model") as error:
        load_checkpoint(AutoModelForCausalLM, "sparse-bench-test/no-such-model")
    assert "\n" not in str(error.value)


def test_hflm_keyword_arguments_are_accepted(compressed_dir, tiny_llama):
    """The keyword arguments lm-eval's HFLM._create_model passes to from_pretrained, for both formats."""
    hflm_kwargs = dict(revision="main", dtype=torch.float16, trust_remote_code=False, gguf_file=None,
                       quantization_config=None, subfolder="", device_map={"": "cpu"}, max_memory=None)
    compressed = load_checkpoint(AutoModelForCausalLM, compressed_dir, **hflm_kwargs)
    assert compressed.dtype == torch.float16
    reference = load_checkpoint(AutoModelForCausalLM, compressed_dir)
    assert torch.equal(compressed.model.layers[0].mlp.up_proj.weight, reference.model.layers[0].mlp.up_proj.weight.half())
    dense = load_checkpoint(AutoModelForCausalLM, tiny_llama, **hflm_kwargs)
    assert dense.dtype == torch.float16
    with pytest.raises(UserError, match="gguf_file does not apply"):
        load_checkpoint(AutoModelForCausalLM, compressed_dir, gguf_file="model.gguf")


def test_subfolder_is_honoured(llama, tmp_path):
    model, tokenizer = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    prune_rows(pruned, 0.9)
    save_checkpoint(pruned, tokenizer, tmp_path / "repo" / "pruned", save_format="compressed")
    assert_same_weights(load_checkpoint(AutoModelForCausalLM, tmp_path / "repo", subfolder="pruned"), pruned)


def write_compressed_tensors_layout(model: torch.nn.Module, out: Path, two_four: bool = False) -> None:
    """A checkpoint laid out as compressed-tensors <= 0.14.0.1 wrote it (checked against that library):
    per Linear weight `.shape`, `.compressed` (kept values, row-major), `.bitmask` (rows x ceil(cols / 8),
    little bit order) and, for sparse-bitmask, `.row_offsets`; config.json carries the sparsity config."""
    import numpy as np

    model.save_pretrained(out)
    (out / "model.safetensors").unlink()
    arrays = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        if ".layers." not in name or not name.endswith("proj.weight"):
            arrays[name] = tensor.contiguous()
            continue
        prefix, kept = name[: -len(".weight")], tensor != 0
        arrays[f"{prefix}.shape"] = torch.tensor(list(tensor.shape))
        arrays[f"{prefix}.bitmask"] = torch.from_numpy(np.packbits(kept.numpy(), axis=-1, bitorder="little"))
        values = tensor[kept]
        arrays[f"{prefix}.compressed"] = values.reshape(tensor.shape[0], -1) if two_four else values
        if not two_four:
            counts = kept.sum(dim=1)
            arrays[f"{prefix}.row_offsets"] = torch.cumsum(counts, 0) - counts
    save_file(arrays, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "version": "0.14.0.1", "transform_config": {},
        "sparsity_config": {"format": "sparse-24-bitmask" if two_four else "sparse-bitmask",
                            "sparsity_structure": "2:4" if two_four else "unstructured",
                            "targets": ["Linear"], "ignore": ["lm_head"], "global_sparsity": 0.5}}
    (out / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("two_four", [False, True])
def test_compressed_tensors_sparse_layouts_load_exactly(llama, tmp_path, two_four):
    model, _ = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    prune_rows(pruned, 0.6, n_m=(2, 4) if two_four else None)
    write_compressed_tensors_layout(pruned, tmp_path / "ct", two_four)
    assert_same_weights(load_checkpoint(AutoModelForCausalLM, tmp_path / "ct"), pruned)
    sizes = checkpoint_sizes(tmp_path / "ct")
    assert sizes["save_format"].startswith("compressed-tensors sparse-")
    assert sizes["nonzero_parameters"] == checkpoint_sizes(pruned)["nonzero_parameters"]


def test_compressed_tensors_damage_and_quantized_variants_are_refused(llama, tmp_path):
    model, _ = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    prune_rows(pruned, 0.6)
    out = tmp_path / "ct"
    write_compressed_tensors_layout(pruned, out)
    arrays = load_file(str(out / "model.safetensors"))
    arrays["model.layers.0.mlp.up_proj.row_offsets"][1] += 1
    save_file(arrays, str(out / "model.safetensors"))
    with pytest.raises(UserError, match="row offsets disagree"):
        load_checkpoint(AutoModelForCausalLM, out)
    config = json.loads((out / "config.json").read_text())
    config["quantization_config"]["config_groups"] = {"group_0": {"targets": ["Linear"]}}
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="sparse and quantized"):
        load_checkpoint(AutoModelForCausalLM, out)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_sparse_hf_loads_a_compressed_checkpoint_bit_for_bit(llama, tmp_path, dtype):
    """lm-eval's `--model sparse-hf --model_args pretrained=DIR` path: HFLM's own from_pretrained call."""
    from sparse_bench.model_wrappers.sparse_hf import SparseHFLM

    model, tokenizer = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path, dtype=getattr(torch, dtype))
    prune_rows(pruned, n_m=(2, 4))
    out = save_checkpoint(pruned, tokenizer, tmp_path / "ckpt", {"method": "test"}, save_format="compressed")
    lm = SparseHFLM(pretrained=str(out), dtype=dtype, device="cpu", batch_size=1)
    assert_same_weights(lm.model, pruned)
    assert lm.sparsity_report.overall_sparsity == pytest.approx(0.5)


def test_hub_ids_take_the_same_path_from_the_cache(llama, tmp_path):
    """A Hub repository (here a populated offline cache) holding a compressed checkpoint loads exactly."""
    model, tokenizer = llama
    pruned = AutoModelForCausalLM.from_pretrained(model.name_or_path)
    prune_rows(pruned, 0.9)
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "cache" / "models--sparse-bench-test--tiny-pruned"
    save_checkpoint(pruned, tokenizer, repo / "snapshots" / commit, save_format="compressed")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    loaded = load_checkpoint(AutoModelForCausalLM, "sparse-bench-test/tiny-pruned", cache_dir=str(tmp_path / "cache"))
    assert_same_weights(loaded, pruned)


@pytest.mark.parametrize("kind, axis", [("llama", -1), ("gpt2", 0)])
def test_engine_n_m_masks_get_the_n_m_encoding(tiny_model_dirs, tmp_path, kind, axis):
    """The pruning engine's 2:4 (along the input dimension: last for Linear, first for GPT-2's Conv1D)."""
    from sparse_bench.harness_ext.checkpoints.encoding import choose_encoding
    from sparse_bench.harness_ext.pruning.engine import prune
    from sparse_bench.harness_ext.pruning.request import shortcut_plan

    model = AUTO[kind].from_pretrained(tiny_model_dirs[kind])
    report = prune(model, shortcut_plan("magnitude", None, "2:4"), progress=False)
    out = save_checkpoint(model, None, tmp_path / kind, report.to_dict(), save_format="compressed")
    assert_same_weights(load_checkpoint(AUTO[kind], out), model)
    state = model.state_dict()
    for name in report.layers:
        encoding = choose_encoding(state[f"{name}.weight"])
        assert (encoding.kind, encoding.params["n"], encoding.params["m"], encoding.params["axis"]) == ("nm", 2, 4, axis)
    saved = json.loads((out / RECORD_NAME).read_text())["prune_record"]
    assert saved["overall_sparsity"] == pytest.approx(0.5)
