"""Token-level perplexity protocol and the `sparse-bench ppl` command on a tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer

from sparse_bench.harness_ext import perplexity
from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.perplexity import token_perplexity


@pytest.fixture(scope="module")
def llama(tiny_model_dirs):
    return (AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]),
            AutoTokenizer.from_pretrained(tiny_model_dirs["llama"]))


@pytest.fixture(scope="module")
def wiki_text(data_dir):
    return (data_dir / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")[:20_000]


def test_matches_per_window_loss_of_transformers(llama, wiki_text):
    model, tokenizer = llama
    result = token_perplexity(model, tokenizer, wiki_text, seqlen=64, max_tokens=640)
    assert (result["windows"], result["tokens"], result["predicted_tokens"]) == (10, 640, 630)
    ids = torch.tensor(tokenizer(wiki_text, add_special_tokens=False)["input_ids"][:640]).reshape(10, 64)
    with torch.no_grad():
        losses = [float(model(input_ids=window[None], labels=window[None]).loss) for window in ids]
    assert result["perplexity"] == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    assert "non-overlapping windows" in result["protocol"] and result["seqlen"] == 64


def test_batching_does_not_change_the_number(llama, wiki_text, monkeypatch):
    model, tokenizer = llama
    batched = token_perplexity(model, tokenizer, wiki_text, seqlen=64, max_tokens=1000)
    monkeypatch.setattr(perplexity, "LOGITS_BUDGET", 64 * 512 * 3)  # three windows per forward
    single = token_perplexity(model, tokenizer, wiki_text, seqlen=64, max_tokens=1000)
    assert single["windows"] == batched["windows"] == 15
    assert single["perplexity"] == pytest.approx(batched["perplexity"], rel=1e-5)


@pytest.mark.parametrize("seqlen, max_tokens, message", [(1, None, "seqlen must be"),
                                                         (64, 10, "smaller than one window"),
                                                         (100_000, None, "fewer than one window")])
def test_bad_arguments(llama, wiki_text, seqlen, max_tokens, message):
    with pytest.raises(UserError, match=message):
        token_perplexity(*llama, wiki_text, seqlen=seqlen, max_tokens=max_tokens)


def test_ppl_command_json_and_errors(tiny_llama, tmp_path, wiki_text):
    text_file = tmp_path / "wiki.txt"
    text_file.write_text(wiki_text, encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(main, ["ppl", str(tiny_llama), "--data", str(text_file), "--seqlen", "64",
                                  "--max-tokens", "640", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["windows"] == 10 and record["perplexity"] > 1
    capped = runner.invoke(main, ["ppl", str(tiny_llama), "--data", str(text_file), "--seqlen", "100000"])
    assert capped.exit_code == 0, capped.output
    assert "capped at the model's context of 512" in capped.stdout and "token-level perplexity" in capped.stdout
    missing = runner.invoke(main, ["ppl", str(tiny_llama), "--data", str(tmp_path / "nope.txt")])
    assert missing.exit_code == 2 and "not found" in missing.stderr
