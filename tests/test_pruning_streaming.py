"""`--stream`: block-by-block pruning from disk equals the in-memory engine bit for bit, resumes, refuses bad input."""

from __future__ import annotations

import json
import shutil
import weakref

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoConfig, AutoModelForCausalLM

from sparse_bench.harness_ext.checkpoints import (
    checkpoint_sizes,
    load_checkpoint,
    read_record,
    save_checkpoint,
    stream_writer,
)
from sparse_bench.harness_ext.checkpoints.container import WEIGHTS_NAME, read_compressed
from sparse_bench.harness_ext.checkpoints.tensor_files import TensorFiles, checkpoint_files
from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.models import load_model
from sparse_bench.harness_ext.pruning import streaming
from sparse_bench.harness_ext.pruning.calibration_data import calibration_tokens
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.plan import CalibrationConfig, OwlConfig
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.streaming import prune_streaming

CALIBRATION = CalibrationConfig(data="c4", nsamples=4, seqlen=32)
CLI_CALIBRATION = ["--calibration", "c4", "--nsamples", "4", "--seqlen", "32", "--no-progress"]


@pytest.fixture(scope="module")
def llama4(tiny_llama, tmp_path_factory):
    """The tiny Llama with 4 blocks, so a resumed run has finished blocks before and after the kill."""
    config = AutoConfig.from_pretrained(tiny_llama)
    config.num_hidden_layers = 4
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.05)
    out = tmp_path_factory.mktemp("llama4")
    model.save_pretrained(out)
    shutil.copy(tiny_llama / "tokenizer.json", out)
    shutil.copy(tiny_llama / "tokenizer_config.json", out)
    return out


def tensors(directory):
    files = TensorFiles(checkpoint_files(directory))
    return {name: files.read(name) for name in files.where}


def assert_same_bits(first, second):
    a, b = tensors(first), tensors(second)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


def in_memory(model_dir, plan, out):
    model, tokenizer = load_model(str(model_dir))
    report = prune(model, plan, CALIBRATION, tokenizer, progress=False)
    save_checkpoint(model, tokenizer, out, prune_record=report.to_dict())
    return report


@pytest.mark.parametrize("method, sparsity, structure, owl", [
    ("magnitude", 0.5, None, False), ("wanda", 0.5, None, False), ("sparsegpt", 0.5, None, False),
    ("wanda", None, "2:4", False), ("sparsegpt", None, "2:4", False), ("wanda", 0.6, None, True)])
def test_streamed_equals_in_memory_bit_for_bit(llama4, tmp_path, method, sparsity, structure, owl):
    options = {"owl": OwlConfig(m=3.0, lmbda=0.1)} if owl else {}
    plan = shortcut_plan(method, sparsity, structure, source="test", **options)
    expected = in_memory(llama4, plan, tmp_path / "memory")
    report, out = prune_streaming(str(llama4), plan, CALIBRATION, tmp_path / "stream", progress=False)
    assert_same_bits(out, tmp_path / "memory")
    assert report.to_dict()["layers"] == expected.to_dict()["layers"]
    assert (report.nonzero_params, report.total_params) == (expected.nonzero_params, expected.total_params)


def test_streamed_in_another_dtype_equals_in_memory(llama4, tmp_path):
    """Blocks and embedding rows (read on first use) cast as the in-memory load casts them."""
    plan = shortcut_plan("wanda", 0.5, None, source="test")
    model, tokenizer = load_model(str(llama4), dtype="bfloat16")
    report = prune(model, plan, CALIBRATION, tokenizer, progress=False)
    save_checkpoint(model, tokenizer, tmp_path / "memory", prune_record=report.to_dict())
    _, out = prune_streaming(str(llama4), plan, CALIBRATION, tmp_path / "stream", dtype="bfloat16", progress=False)
    assert_same_bits(out, tmp_path / "memory")
    assert read_record(out)["prune_record"]["layers"] == report.to_dict()["layers"]


def test_tokenizer_freed_and_only_looked_up_embedding_rows_read(llama4, tmp_path, monkeypatch):
    """While the blocks are pruned the tokenizer is no longer held, and the embedding was read from the file
    only at the calibration tokens' rows, each once."""
    import transformers

    tokenizers, freed, rows_read = [], [], []
    load_tokenizer, read_rows, finish = (transformers.AutoTokenizer.from_pretrained, TensorFiles.read_rows,
                                         streaming.StreamedBlocks.finish)

    def loading(*args, **kwargs):
        tokenizer = load_tokenizer(*args, **kwargs)
        tokenizers.append(weakref.ref(tokenizer))
        return tokenizer

    def reading(self, name, rows, out):
        rows_read.extend(rows)
        read_rows(self, name, rows, out)

    def finishing(self, name, block):
        freed.append(tokenizers[0]() is None)
        finish(self, name, block)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", loading)
    monkeypatch.setattr(TensorFiles, "read_rows", reading)
    monkeypatch.setattr(streaming.StreamedBlocks, "finish", finishing)
    prune_streaming(str(llama4), shortcut_plan("wanda", 0.5, None, source="test"), CALIBRATION, tmp_path / "out",
                    progress=False)
    assert freed == [True] * 4
    tokens, _, _ = calibration_tokens(CALIBRATION, load_tokenizer(llama4), None)
    assert sorted(rows_read) == sorted(set(tokens.reshape(-1).tolist()))


def test_blas_buffer_pool_is_turned_off_before_streaming(llama4, tmp_path, monkeypatch):
    assert streaming._no_blas_buffer_pool() == torch.backends.mkl.is_available()  # this torch's MKL takes it
    calls = []
    monkeypatch.setattr(streaming, "_no_blas_buffer_pool", lambda: calls.append("off") or True)

    class Stop(Exception):
        pass

    def first_read(*args):
        calls.append("first read")
        raise Stop  # the order is what is tested; the rest of the run is the other tests'

    monkeypatch.setattr(streaming, "_skeleton", first_read)
    with pytest.raises(Stop):
        prune_streaming(str(llama4), shortcut_plan("magnitude", 0.5, None, source="test"), None, tmp_path / "out",
                        progress=False)
    assert calls == ["off", "first read"]


def test_output_is_a_normal_checkpoint(llama4, tmp_path):
    plan = shortcut_plan("wanda", 0.5, None, source="test")
    _, out = prune_streaming(str(llama4), plan, CALIBRATION, tmp_path / "out", progress=False)
    record = read_record(out)
    assert record["save_format"] == "dense" and len(record["files"]) == 5  # outside the blocks + 4 blocks
    assert set(record["stream_record"]["block_seconds"]) == {f"model.layers.{i}" for i in range(4)}
    model = load_checkpoint(AutoModelForCausalLM, out)  # hashes checked, no missing or random weight
    assert torch.count_nonzero(model.model.layers[3].mlp.down_proj.weight) == model.model.layers[3].mlp.down_proj.weight.numel() // 2
    assert checkpoint_sizes(out)["save_format"] == "dense"
    assert not any(path.name.startswith(".") for path in out.parent.iterdir())  # no staging left


def test_streamed_compressed_equals_in_memory_compressed(llama4, tmp_path):
    plan = shortcut_plan("wanda", None, "2:4", source="test")
    model, tokenizer = load_model(str(llama4))
    report = prune(model, plan, CALIBRATION, tokenizer, progress=False)
    expected = save_checkpoint(model, tokenizer, tmp_path / "memory", prune_record=report.to_dict(),
                               save_format="compressed")
    _, out = prune_streaming(str(llama4), plan, CALIBRATION, tmp_path / "stream", progress=False,
                             save_format="compressed")
    assert sorted(path.name for path in out.glob("*.safetensors")) == [WEIGHTS_NAME]
    a, b = read_compressed(out / WEIGHTS_NAME), read_compressed(expected / WEIGHTS_NAME)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    sizes = checkpoint_sizes(out)  # checks the file's size against the size formula
    assert sizes["files"][WEIGHTS_NAME] == checkpoint_sizes(expected)["files"][WEIGHTS_NAME]
    reloaded = load_checkpoint(AutoModelForCausalLM, out)
    assert torch.equal(reloaded.model.layers[2].mlp.up_proj.weight, model.model.layers[2].mlp.up_proj.weight)


def test_spilled_activations_change_nothing(llama4, tmp_path):
    plan = shortcut_plan("sparsegpt", 0.5, None, source="test")
    in_memory(llama4, plan, tmp_path / "memory")
    _, out = prune_streaming(str(llama4), plan, CALIBRATION, tmp_path / "stream", progress=False, spill_over_bytes=0)
    assert_same_bits(out, tmp_path / "memory")
    assert not list(out.glob("activations-*"))


def test_resume_after_kill(llama4, tmp_path, monkeypatch):
    plan = shortcut_plan("sparsegpt", 0.5, None, source="test")
    in_memory(llama4, plan, tmp_path / "memory")
    real_write, written = stream_writer.StreamWriter.write, []

    def killed_after_two_blocks(self, key, shard):
        if len(written) == 2:  # blocks 0 and 1 (the shard outside the blocks is copied, not written)
            raise KeyboardInterrupt
        written.append(key)
        real_write(self, key, shard)

    monkeypatch.setattr(stream_writer.StreamWriter, "write", killed_after_two_blocks)
    out = tmp_path / "stream"
    with pytest.raises(KeyboardInterrupt):
        prune_streaming(str(llama4), plan, CALIBRATION, out, progress=False)
    assert not out.exists()  # nothing that looks like a checkpoint
    staging = tmp_path / ".stream.stream.partial"
    assert json.loads((staging / "stream_progress.json").read_text())["shards"].keys() == {
        streaming.NON_BLOCK, "model.layers.0", "model.layers.1"}
    monkeypatch.setattr(stream_writer.StreamWriter, "write", real_write)
    _, out = prune_streaming(str(llama4), plan, CALIBRATION, out, progress=False)
    assert_same_bits(out, tmp_path / "memory")
    assert read_record(out)["stream_record"]["resumed_blocks"] == 2


def test_resume_redoes_a_damaged_block_and_refuses_other_options(llama4, tmp_path, monkeypatch):
    plan = shortcut_plan("wanda", 0.5, None, source="test")
    in_memory(llama4, plan, tmp_path / "memory")
    real_write = stream_writer.StreamWriter.write

    def killed_at_block_3(self, key, shard):
        if key == "model.layers.3":
            raise KeyboardInterrupt
        real_write(self, key, shard)

    monkeypatch.setattr(stream_writer.StreamWriter, "write", killed_at_block_3)
    with pytest.raises(KeyboardInterrupt):
        prune_streaming(str(llama4), plan, CALIBRATION, tmp_path / "stream", progress=False)
    monkeypatch.setattr(stream_writer.StreamWriter, "write", real_write)
    other = shortcut_plan("wanda", 0.6, None, source="test")
    with pytest.raises(UserError, match="another model, plan"):
        prune_streaming(str(llama4), other, CALIBRATION, tmp_path / "stream", progress=False)
    shard = tmp_path / ".stream.stream.partial" / "model-00003-of-00005.safetensors"  # block 1
    shard.write_bytes(shard.read_bytes()[:-8] + bytes(8))
    _, out = prune_streaming(str(llama4), plan, CALIBRATION, tmp_path / "stream", progress=False)
    assert_same_bits(out, tmp_path / "memory")
    assert read_record(out)["stream_record"]["resumed_blocks"] == 1  # block 0 kept, blocks 1-3 redone


def cli(*args):
    return CliRunner().invoke(main, ["prune", *map(str, args)])


def assert_refused(result, *words, out):
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert all(word in result.stderr for word in words), result.stderr
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def test_cli_stream_and_automatic_stream(llama4, tmp_path, monkeypatch):
    result = cli(llama4, "--stream", "--method", "wanda", "--sparsity", "0.5", *CLI_CALIBRATION,
                 "--out", tmp_path / "a", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["overall_sparsity"] == 0.5
    monkeypatch.setattr(streaming, "available_memory", lambda: 1000)
    result = cli(llama4, "--method", "magnitude", "--sparsity", "0.5", "--no-progress", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "block by block" in result.stderr and (tmp_path / "b" / "model.safetensors.index.json").is_file()


def test_bad_input_is_refused_before_anything_is_written(llama4, tiny_model_dirs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    pickle_dir = tmp_path / "pickle"
    pickle_dir.mkdir()
    torch.save(AutoModelForCausalLM.from_pretrained(llama4).state_dict(), pickle_dir / "pytorch_model.bin")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(llama4 / name, pickle_dir)
    assert_refused(cli(pickle_dir, "--stream", "--method", "magnitude", "--sparsity", "0.5", "--out", out),
                   "pickle", "save_pretrained", out=out)


def test_missing_shard_disk_and_options_refused(llama4, tiny_model_dirs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(llama4).save_pretrained(sharded, max_shard_size="20KB")
    shutil.copy(llama4 / "tokenizer.json", sharded)
    next(sharded.glob("model-0000*.safetensors")).unlink()
    magnitude = ["--method", "magnitude", "--sparsity", "0.5", "--no-progress", "--out", out]
    assert_refused(cli(sharded, "--stream", *magnitude), "missing", "shard", out=out)
    assert_refused(cli(llama4, "--stream", "--method", "magnitude", "--scope", "global", "--sparsity", "0.5",
                       "--out", out), "scope=global", out=out)
    head = shortcut_plan("magnitude", 0.5, None, source="test", targets=("lm_head",), ignore=())
    with pytest.raises(UserError, match="inside the transformer blocks"):
        prune_streaming(str(llama4), head, None, out, progress=False)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))
    assert_refused(cli(tiny_model_dirs["bart"], "--stream", *magnitude), "encoder-decoder", out=out)
    monkeypatch.setattr(stream_writer.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10, 10, 10))
    assert_refused(cli(llama4, "--stream", *magnitude), "GiB free", out=out)
