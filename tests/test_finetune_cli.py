"""`sparse-bench finetune` on the command line: a run prints its summary; every bad input gets one line
`error: ...`, exit status 2, and writes nothing; CUDA-only options are refused without a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.errors import UserError

FAST = ["--max-steps", "1", "--batch-size", "2", "--limit", "4", "--eval-limit", "4", "--max-length", "96",
        "--no-progress"]


def run(*args):
    return CliRunner().invoke(main, ["finetune", *map(str, args)])


def error_line(result) -> str:
    """The one `error: ...` line a refused run ends with (transformers' loading bars may come before it)."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    last = result.stderr.rstrip("\n").rsplit("\n", 1)[-1].split("\r")[-1]
    assert last.startswith("error: ") and result.stderr.count("error: ") == 1
    return last


def test_cli_run_prints_summary_and_json(tiny_llama, tmp_path):
    result = run(tiny_llama, *FAST, "--mode", "lora", "--lora-r", "2", "--out", tmp_path / "ft", "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["mode"] == "lora" and record["steps"] == 1 and record["data"]["name"] == "mrpc"
    assert (tmp_path / "ft" / "config.json").is_file()


@pytest.mark.parametrize("arguments, message", [
    (["--mode", "adapter"], "unknown fine-tuning mode 'adapter'"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--max-steps", "0"], "--max-steps must be > 0"),
    (["--epochs", "0"], "--epochs must be > 0"),
    (["--data", "nowhere.jsonl"], "neither mrpc, billsum, an existing JSON-lines file nor a hub data set"),
    (["--data", "google-research-datasets/paws:labeled_final"],  # conftest.py sets HF_DATASETS_OFFLINE
     "google-research-datasets/paws:labeled_final: cannot load it from the Hugging Face hub (Couldn't reach"),
    (["--require-sparse"], "--require-sparse: no pruned layer"),
    (["--save-format", "compressed"], "has no zeros to compress"),
])
def test_bad_input_is_one_line_and_writes_nothing(tiny_llama, tmp_path, arguments, message):
    assert message in error_line(run(tiny_llama, *FAST, *arguments, "--out", tmp_path / "ft"))
    assert list(tmp_path.iterdir()) == []


def test_data_file_without_fields_is_refused(tiny_llama, tmp_path):
    data = tmp_path / "notes.jsonl"
    data.write_text('{"text": "a bill", "abstract": "no summary field"}\n', encoding="utf-8")
    assert "line 1: no summary string" in error_line(run(tiny_llama, *FAST, "--data", data, "--out", tmp_path / "ft"))
    assert not (tmp_path / "ft").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("arguments, what", [(["--mode", "qlora"], "qlora needs a CUDA GPU"),
                                             (["--precision", "fp16-amp"], "fp16-amp needs a CUDA GPU")])
def test_cuda_only_options_refused_on_cpu(tiny_llama, tmp_path, arguments, what):
    assert what in error_line(run(tiny_llama, *FAST, *arguments, "--out", tmp_path / "ft"))
    assert list(tmp_path.iterdir()) == []


PAIRS = [{"sentence1": f"The cat sat on mat {i}.", "sentence2": f"A cat was on mat {i}.", "label": i % 2, "id": i}
         for i in range(8)]


def fake_hub(monkeypatch, splits: dict[str, list[dict]]) -> list[tuple]:
    """datasets.load_dataset answering with `splits` (a mocked hub); returns the calls it got."""
    import datasets

    calls = []

    def load_dataset(name, config=None, **options):
        calls.append((name, config))
        return datasets.DatasetDict({split: datasets.Dataset.from_list(rows) for split, rows in splits.items()})
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_hub_sentence_pairs_train_like_mrpc(tiny_llama, tmp_path, monkeypatch):
    calls = fake_hub(monkeypatch, {"train": PAIRS, "validation": PAIRS[:4], "test": [{**PAIRS[0], "label": -1}]})
    result = run(tiny_llama, *FAST, "--data", "google-research-datasets/paws:labeled_final", "--out",
                 tmp_path / "ft", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)["data"]
    assert calls == [("google-research-datasets/paws", "labeled_final")]
    assert data["source"] == "google-research-datasets/paws (hub), config labeled_final"
    assert (data["held_out_split"], data["train_examples"], data["held_out_examples"]) == ("validation", 4, 4)
    assert data["format"].startswith("sparsebench_mrpc prompt")


def test_hub_summaries_hold_out_the_test_split(tiny_tokenizer, monkeypatch):
    from sparse_bench.harness_ext.finetune.data import load_training_data

    bills = [{"text": f"Section {i}. The Secretary shall report.", "summary": f"Requires report {i}.",
              "title": "A bill"} for i in range(5)]
    fake_hub(monkeypatch, {"train": bills[:3], "test": bills[3:]})
    data = load_training_data("FiscalNote/billsum", tiny_tokenizer, classification=False, max_length=256)
    assert (len(data.train), len(data.held_out), data.description["held_out_split"]) == (3, 2, "test")
    assert all(0 < sum(label != -100 for label in example["labels"]) < len(example["input_ids"])
               for example in data.train)
    with pytest.raises(UserError, match="trains a classification head on sentence pairs"):
        load_training_data("FiscalNote/billsum", tiny_tokenizer, classification=True, max_length=256)


def test_hub_data_set_without_usable_columns_is_refused(tiny_llama, tmp_path, monkeypatch):
    fake_hub(monkeypatch, {"train": [{"question": "why?", "answer": "because"}]})
    message = error_line(run(tiny_llama, *FAST, "--data", "someone/qa", "--out", tmp_path / "ft"))
    assert "train split has columns answer, question; fine-tuning needs sentence1, sentence2, label" in message
    assert list(tmp_path.iterdir()) == []
