"""Task data: the hub/local switch, the MRPC TSV quirks, one-line errors, Billsum cut to the model's context."""

from __future__ import annotations

import shutil

import datasets
import pytest
from task_utils import load_task_utils

billsum = load_task_utils("sparsebench_billsum")
mrpc = load_task_utils("sparsebench_mrpc")


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- MRPC

def test_mrpc_tsv_is_read_verbatim(data_dir):
    rows = mrpc.read_glue_tsv(data_dir / "glue_mrpc" / "validation.tsv")
    assert len(rows) == 408 and sum(row["label"] for row in rows) == 279
    assert rows[0]["sentence1"].startswith("He said the foodservice pie business")  # no BOM, header consumed
    assert rows[0]["sentence2"].startswith('"The foodservice pie business')  # the unbalanced quote is text
    assert [row["idx"] for row in rows[:3]] == [0, 1, 2]


def test_mrpc_local_split_and_missing_train(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_BENCH_DATA_DIR", str(data_dir))
    splits = mrpc.load_mrpc(pretrained="ignored", sparsity=0.5)  # model args arrive as keywords
    assert splits["validation"].num_rows == 408
    if (data_dir / "glue_mrpc" / "train.tsv").is_file():  # the shared data has carried the train split since 2026-12
        assert splits["train"].num_rows == 3668
    # a data folder with the validation split only: the split is optional unless required
    (tmp_path / "glue_mrpc").mkdir()
    shutil.copy(data_dir / "glue_mrpc" / "validation.tsv", tmp_path / "glue_mrpc" / "validation.tsv")
    monkeypatch.setenv("SPARSE_BENCH_DATA_DIR", str(tmp_path))
    assert list(mrpc.load_mrpc()) == ["validation"]
    with pytest.raises(mrpc.DataError) as error:
        mrpc.load_mrpc(require_train=True)
    assert str(tmp_path / "glue_mrpc" / "train.tsv") in one_line(error)
    shutil.copy(data_dir / "glue_mrpc" / "validation.tsv", tmp_path / "glue_mrpc" / "train.tsv")
    assert sorted(mrpc.load_mrpc(require_train=True)) == ["train", "validation"]


@pytest.mark.parametrize("content, expected", [
    (None, "is missing"),
    ("Quality\t#1 String\n1\ta\n", "lacks column(s) #2 String"),
    ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tonly four fields\n", "line 2"),
    ("Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n", "no pairs"),
])
def test_mrpc_bad_files_give_one_line_naming_the_path(tmp_path, content, expected):
    path = tmp_path / "validation.tsv"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(mrpc.DataError) as error:
        mrpc.read_glue_tsv(path)
    assert str(path) in one_line(error) and expected in str(error.value)


def test_hub_by_default_and_local_when_the_variable_is_set(monkeypatch, data_dir, tiny_llama):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        rows = [{"sentence1": "a", "sentence2": "b", "label": 1, "idx": 0, "text": "SECTION 1. A bill.",
                 "summary": "A bill.", "title": "t"}]
        return datasets.Dataset.from_list(rows) if "split" in kwargs else datasets.DatasetDict(
            {"validation": datasets.Dataset.from_list(rows)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.delenv("SPARSE_BENCH_DATA_DIR")
    assert mrpc.load_mrpc()["validation"].num_rows == 1
    assert billsum.load_billsum(pretrained=str(tiny_llama))["test"].num_rows == 1
    assert calls == [(("nyu-mll/glue", "mrpc"), {}), (("FiscalNote/billsum",), {"split": "test"})]
    monkeypatch.setenv("SPARSE_BENCH_DATA_DIR", str(data_dir))
    assert mrpc.load_mrpc()["validation"].num_rows == 408 and len(calls) == 2


def test_unreachable_hub_says_how_to_run_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub (LocalEntryNotFoundError)\nmore detail")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.delenv("SPARSE_BENCH_DATA_DIR")
    with pytest.raises(mrpc.DataError) as error:
        mrpc.load_mrpc()
    assert "SPARSE_BENCH_DATA_DIR" in one_line(error) and "Couldn't reach" in str(error.value)


# ---------------------------------------------------------------- Billsum

@pytest.mark.parametrize("lines, expected", [
    (None, "is missing"),
    (['{"text": "x", "summary": "y"}', "{not json"], "line 2: not JSON"),
    (['{"text": "x"}'], "line 1: no summary string"),
    ([""], "no records"),
])
def test_billsum_bad_files_give_one_line_naming_the_path(tmp_path, lines, expected):
    path = tmp_path / "test.jsonl"
    if lines is not None:
        path.write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(billsum.DataError) as error:
        billsum.read_jsonl(path)
    assert str(path) in one_line(error) and expected in str(error.value)


def test_first_tokens_cuts_at_a_token_boundary(tiny_tokenizer):
    text = "The Secretary of the Treasury shall submit a report to Congress. " * 40
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    prefix, cut = billsum.first_tokens(text, tiny_tokenizer, 50)
    assert cut and text.startswith(prefix)
    assert tiny_tokenizer(prefix, add_special_tokens=False)["input_ids"] == ids[:50]
    assert billsum.first_tokens("Short bill.", tiny_tokenizer, 50) == ("Short bill.", False)


def test_bills_fit_a_512_token_context(data_dir, monkeypatch, tiny_tokenizer, tiny_llama):
    monkeypatch.setenv("SPARSE_BENCH_DATA_DIR", str(data_dir))
    docs = billsum.load_billsum(pretrained=str(tiny_llama), dtype="float32")["test"]  # context: config
    assert docs.num_rows == 64 and all(docs["bill_cut"])
    bill_room, summary_room = billsum.token_budget(tiny_tokenizer, 512, billsum.DEFAULT_MAX_BILL_TOKENS)
    assert summary_room == 256 and 150 < bill_room < 512 - 256 - billsum.RESERVE_TOKENS

    def length(text):
        return len(tiny_tokenizer(text)["input_ids"])

    for doc in docs:
        prompt = billsum.doc_to_text(doc)
        assert prompt.startswith("Summarize the following bill:\n\n") and prompt.endswith("\n\nSummary:")
        assert doc["text"].strip().startswith(doc["bill"]) and doc["text"].strip().startswith(doc["lead"])
        assert length(prompt) + 128 <= 512  # generation fits
        assert length(prompt + billsum.doc_to_scored_summary(doc)) <= 512  # the likelihood request fits
        bill_ids = tiny_tokenizer(doc["text"].strip(), add_special_tokens=False)["input_ids"]
        assert tiny_tokenizer.decode(bill_ids[:billsum.LEAD_TOKENS]).strip() == doc["lead"]
        assert doc["summary"].strip().startswith(doc["summary_scored"])
    assert any(docs["summary_cut"]) and not all(docs["summary_cut"])


def test_max_bill_tokens_from_metadata_and_a_tokenizer_object(data_dir, monkeypatch, tiny_tokenizer):
    monkeypatch.setenv("SPARSE_BENCH_DATA_DIR", str(data_dir))
    docs = billsum.load_billsum(tokenizer=tiny_tokenizer, max_length=4096, max_bill_tokens=64)["test"]
    lengths = [len(tiny_tokenizer(bill, add_special_tokens=False)["input_ids"]) for bill in docs["bill"]]
    assert max(lengths) <= 65 and min(lengths) >= 48  # 64 tokens, minus the trailing blanks of some
    summary_lengths = [len(tiny_tokenizer(text.strip(), add_special_tokens=False)["input_ids"])
                       for text in docs["summary"]]
    assert docs["summary_cut"] == [n > billsum.MAX_SUMMARY_TOKENS for n in summary_lengths]  # room 1,024 of 4,096


def test_billsum_without_a_usable_tokenizer_is_a_one_line_error(data_dir, monkeypatch, tmp_path, tiny_llama):
    monkeypatch.setenv("SPARSE_BENCH_DATA_DIR", str(data_dir))
    with pytest.raises(billsum.DataError) as error:
        billsum.load_billsum()
    assert "tokenizer" in one_line(error)
    with pytest.raises(billsum.DataError) as error:
        billsum.load_billsum(pretrained=str(tmp_path / "no-such-model"))
    assert "no-such-model" in one_line(error) and "tokenizer=" in str(error.value)
    with pytest.raises(billsum.DataError) as error:
        billsum.load_billsum(pretrained=str(tiny_llama), max_length=160)
    assert "160-token context" in one_line(error)


def test_a_model_object_names_its_tokenizer_and_context(tiny_llama):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    tokenizer, context = billsum.model_tokenizer_and_context({"pretrained": model})
    assert context == 512 and tokenizer("a bill")["input_ids"]
