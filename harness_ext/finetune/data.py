"""Training and held-out data for fine-tuning, in exactly the evaluation tasks' formats.

- `mrpc`, causal LM: GLUE-MRPC train pairs as `sparsebench_mrpc` asks them (its YAML's `doc_to_text` prompt,
  then the target delimiter and the gold answer word, " no" / " yes"); the loss covers the answer tokens only,
  split from the prompt the way lm-eval's HFLM scores a continuation. Held out: the 408 validation pairs.
- `mrpc`, encoder: (sentence1, sentence2) pairs and their 0/1 label for a sequence-classification head.
- `billsum` / FILE (JSON lines with `text` and `summary`), causal LM: `sparsebench_billsum_loglik`'s prompt and
  scored summary, loss on the summary only. Offline (`SPARSE_BENCH_DATA_DIR`) the 64 shared bills are split:
  bills 17-64 train, bills 1-16 are held out (so `--limit 16` on the Billsum tasks scores only unseen bills);
  online, the hub's Billsum train split trains and its test split's first 16 bills are held out.
- a hub data set, `OWNER/NAME[:CONFIG]` (online): its `train` split trains, its `validation` split (else `test`)
  is held out; rows with `sentence1`, `sentence2`, `label` are used like MRPC pairs, rows with `text` and
  `summary` like Billsum.

The task folders' own `utils.py` (loaded by path, as lm-eval loads them) read the files, so a data quirk is
handled in one place.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from ...tasks import TASKS_DIR
from ..errors import UserError
from ..io import read_jsonl_records

BILLSUM_HELD_OUT = 16  # bills 1-16 of the shared file are the evaluation bills
BILLSUM_HUB = "FiscalNote/billsum"
DATA_DIR_ENV = "SPARSE_BENCH_DATA_DIR"
HUB_NAME = re.compile(r"[\w.-]+/[\w.-]+(:[\w.-]+)?")  # OWNER/NAME[:CONFIG]
PAIR_COLUMNS, SUMMARY_COLUMNS = ("sentence1", "sentence2", "label"), ("text", "summary")


@dataclass
class TrainingData:
    """Tokenized examples (lists of dicts with input_ids, attention_mask, labels) and where they came from."""

    train: list[dict[str, Any]]
    held_out: list[dict[str, Any]]
    description: dict[str, Any] = field(default_factory=dict)

    @property
    def train_tokens(self) -> int:
        return sum(len(example["input_ids"]) for example in self.train)


@functools.cache
def task_utils(folder: str) -> ModuleType:
    """`tasks/<folder>/utils.py` loaded by path, as lm-eval loads it."""
    spec = importlib.util.spec_from_file_location(f"sparse_bench_finetune_{folder}_utils", TASKS_DIR / folder / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _TaskYamlLoader(yaml.SafeLoader):
    """Reads a task YAML; `!function` entries stay plain strings (they are not needed here)."""


_TaskYamlLoader.add_constructor("!function", lambda loader, node: loader.construct_scalar(node))


@functools.cache
def mrpc_format() -> tuple[str, str, list[str]]:
    """(doc_to_text Jinja template, target delimiter, answer words by label) of the `sparsebench_mrpc` task."""
    task = yaml.load((TASKS_DIR / "sparsebench_mrpc" / "sparsebench_mrpc.yaml").read_text(encoding="utf-8"),
                     Loader=_TaskYamlLoader)
    return task["doc_to_text"], task.get("target_delimiter", " "), list(task["doc_to_choice"])


def mrpc_prompt_and_answer(pair: dict) -> tuple[str, str]:
    """The task's prompt for a pair and the continuation it scores for the gold label (delimiter included)."""
    import jinja2

    template, delimiter, choices = mrpc_format()
    return jinja2.Template(template).render(**pair), delimiter + choices[int(pair["label"])]


def encode_continuation(tokenizer, context: str, continuation: str, max_length: int) -> dict[str, list[int]]:
    """Token ids of context + continuation with labels only on the continuation (-100 elsewhere).

    Split as lm-eval's HFLM splits it: trailing spaces of the context move to the continuation, the whole
    string is encoded once and the context's own token count marks where the continuation starts. Examples
    longer than `max_length` lose tokens from the front of the context.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    start = len(tokenizer(context, add_special_tokens=False)["input_ids"])
    if start >= len(whole):
        raise UserError(f"the answer {continuation!r} adds no token after its prompt; check the tokenizer")
    labels = [-100] * start + whole[start:]
    cut = max(0, len(whole) - max_length)
    if cut >= start:
        raise UserError(f"an answer of {len(whole) - start} tokens does not fit --max-length {max_length}; raise it")
    return {"input_ids": whole[cut:], "attention_mask": [1] * (len(whole) - cut), "labels": labels[cut:]}


def _mrpc_rows() -> tuple[list[dict], list[dict], str]:
    utils = task_utils("sparsebench_mrpc")
    dataset = utils.load_mrpc(require_train=True)
    if "train" not in dataset:
        raise UserError("the MRPC train split is missing; fine-tuning needs it (glue_mrpc/train.tsv)")
    source = os.environ.get(DATA_DIR_ENV) or "nyu-mll/glue (hub)"
    return list(dataset["train"]), list(dataset["validation"]), f"GLUE-MRPC from {source}"


def _mrpc_causal_encoder(tokenizer, max_length: int):
    return lambda pair: encode_continuation(tokenizer, *mrpc_prompt_and_answer(pair), max_length)


def _mrpc_classification_encoder(tokenizer, max_length: int):
    def encode(pair: dict) -> dict:
        ids = tokenizer(pair["sentence1"], pair["sentence2"], truncation=True, max_length=max_length)
        return {**ids, "labels": int(pair["label"])}
    return encode


def _summaries(spec: str) -> tuple[list[dict], list[dict], dict]:
    """(train rows, held-out rows, description) for `billsum` or a JSON-lines FILE of text/summary records."""
    utils = task_utils("sparsebench_billsum")
    if spec != "billsum":
        rows = [_summary_record(record, spec, number) for number, record in read_jsonl_records(Path(spec))]
        if not rows:
            raise UserError(f"{spec} holds no records; write one {{\"text\": ..., \"summary\": ...}} object a line")
        return rows, [], {"source": spec, "held_out": "none (the file is all training data)"}
    local = os.environ.get(DATA_DIR_ENV)
    if local:
        rows = utils.read_jsonl(Path(local) / utils.LOCAL_FILE)
        if len(rows) <= BILLSUM_HELD_OUT:
            raise UserError(f"{Path(local) / utils.LOCAL_FILE} has {len(rows)} bills; the offline split needs more "
                            f"than {BILLSUM_HELD_OUT} (the first {BILLSUM_HELD_OUT} are held out)")
        return rows[BILLSUM_HELD_OUT:], rows[:BILLSUM_HELD_OUT], {
            "source": str(Path(local) / utils.LOCAL_FILE),
            "train_rows": f"{BILLSUM_HELD_OUT + 1}-{len(rows)}", "held_out_rows": f"1-{BILLSUM_HELD_OUT}",
            "note": f"evaluate with --limit {BILLSUM_HELD_OUT} on the sparsebench_billsum tasks to score unseen bills"}
    return utils._read_rows(BILLSUM_HUB, "train"), utils._read_rows(BILLSUM_HUB, "test")[:BILLSUM_HELD_OUT], {
        "source": f"{BILLSUM_HUB} (hub)", "train_rows": "train split", "held_out_rows": f"test 1-{BILLSUM_HELD_OUT}"}


def _summary_record(record: dict, path: str, number: int) -> dict:
    missing = [column for column in ("text", "summary") if not isinstance(record.get(column), str)]
    if missing:
        raise UserError(f"{path}, line {number}: no {' or '.join(missing)} string; each line needs "
                        "{\"text\": ..., \"summary\": ...}")
    return record


def _summary_encoder(tokenizer, max_length: int):
    utils = task_utils("sparsebench_billsum")
    bill_room, summary_room = utils.token_budget(tokenizer, max_length, utils.DEFAULT_MAX_BILL_TOKENS)

    def encode(row: dict) -> dict:
        doc = utils.cut_to_budget(row, tokenizer, bill_room, summary_room)
        return encode_continuation(tokenizer, utils.doc_to_text(doc), utils.doc_to_scored_summary(doc), max_length)
    return encode


def is_hub_name(spec: str) -> bool:
    """True for `OWNER/NAME[:CONFIG]` that is not a local path nor a JSON-lines file name."""
    return bool(HUB_NAME.fullmatch(spec)) and not spec.endswith((".json", ".jsonl")) and not Path(spec).exists()


def _hub_rows(spec: str) -> tuple[list[dict], list[dict], dict, str]:
    """(train rows, held-out rows, description, "pairs" | "summaries") of the hub data set `OWNER/NAME[:CONFIG]`."""
    import datasets

    name, _, config = spec.partition(":")
    try:
        splits = datasets.load_dataset(name, config or None)
    except Exception as error:  # offline, unknown name, gated, ...: one line that says what to do
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"--data {spec}: cannot load it from the Hugging Face hub ({reason}); offline, use mrpc or "
                        f"billsum with {DATA_DIR_ENV} set, or a local JSON-lines file of text/summary records") from error
    if "train" not in splits:
        raise UserError(f"--data {spec} has no train split (it has {', '.join(splits)}); give a data set with one")
    columns = set(splits["train"].column_names)
    kind = next((kind for kind, needed in (("pairs", PAIR_COLUMNS), ("summaries", SUMMARY_COLUMNS))
                 if columns >= set(needed)), None)
    if kind is None:
        raise UserError(f"--data {spec}: its train split has columns {', '.join(sorted(columns))}; fine-tuning "
                        f"needs {', '.join(PAIR_COLUMNS)} (sentence pairs) or {', '.join(SUMMARY_COLUMNS)}")
    held_split = next((split for split in ("validation", "test") if split in splits), None)
    held_out = list(splits[held_split]) if held_split else []
    if kind == "pairs" and any(int(row["label"]) not in (0, 1) for row in held_out):
        held_out = []  # unlabelled test splits (label -1) cannot be scored
    return list(splits["train"]), held_out, {"source": f"{name} (hub)" + (f", config {config}" if config else ""),
                                             "train_split": "train", "held_out_split": held_split if held_out
                                             else "none"}, kind


def _rows(spec: str) -> tuple[list[dict], list[dict], dict, str]:
    """(train rows, held-out rows, description, "pairs" | "summaries") for a --data value."""
    if spec == "mrpc":
        train, held_out, source = _mrpc_rows()
        return train, held_out, {"source": source, "train_split": "train", "held_out_split": "validation"}, "pairs"
    if spec == "billsum" or Path(spec).is_file():
        return (*_summaries(spec), "summaries")
    if is_hub_name(spec):
        return _hub_rows(spec)
    raise UserError(f"--data {spec!r} is neither mrpc, billsum, an existing JSON-lines file nor a hub data set "
                    "name (OWNER/NAME[:CONFIG]); give one of those (a file holds one {\"text\": ..., "
                    "\"summary\": ...} record a line)")


def load_training_data(spec: str, tokenizer, classification: bool, max_length: int,
                       limit: int | None = None, eval_limit: int | None = None) -> TrainingData:
    """Tokenized training and held-out examples for `spec` (`mrpc`, `billsum`, a JSON-lines FILE or a hub data set
    `OWNER/NAME[:CONFIG]`).

    `classification`: the model is an encoder with a sequence-classification head (sentence-pair data only).
    `limit` / `eval_limit` keep the first N examples of each part.
    """
    train, held_out, description, kind = _rows(spec)
    if classification and kind != "pairs":
        raise UserError(f"an encoder model trains a classification head on sentence pairs (mrpc, or a hub data set "
                        f"with {', '.join(PAIR_COLUMNS)}); got --data {spec}: use one of those or a causal LM")
    if kind == "pairs":
        description["format"] = ("sentence pair -> 2-class sequence classification" if classification else
                                 "sparsebench_mrpc prompt + ' no'/' yes'; loss on the answer only")
        encoder = (_mrpc_classification_encoder if classification else _mrpc_causal_encoder)(tokenizer, max_length)
    else:
        description["format"] = "sparsebench_billsum_loglik prompt + summary; loss on the summary only"
        encoder = _summary_encoder(tokenizer, max_length)
    train, held_out = [encoder(row) for row in train[:limit]], [encoder(row) for row in held_out[:eval_limit]]
    description.update({"name": spec, "train_examples": len(train), "held_out_examples": len(held_out)})
    return TrainingData(train=train, held_out=held_out, description=description)


__all__ = ["TrainingData", "encode_continuation", "is_hub_name", "load_training_data", "mrpc_prompt_and_answer", "task_utils"]
