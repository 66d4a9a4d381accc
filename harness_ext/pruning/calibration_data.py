"""Calibration text -> a (nsamples, seqlen) token tensor, drawn reproducibly with a seed.

Sources (`CalibrationConfig.data`):
- `c4`: documents of the C4 English train split. A local copy is used when `$SPARSE_BENCH_DATA_DIR/c4/*.jsonl`
  exists, else the hub's `allenai/c4` shard `en/c4-train.00000-of-01024.json.gz` (the Wanda/SparseGPT one).
- `wikitext2`: WikiText-2 raw train split: `$SPARSE_BENCH_DATA_DIR/wikitext2/wiki.train.raw`, else the hub's
  `Salesforce/wikitext` (`wikitext-2-raw-v1`). A local folder with only `wiki.test.raw` is used with a warning
  (calibrating on the evaluation text).
- a path: `.jsonl` (one JSON object per line with a `text` field: documents) or any other file read as
  plain UTF-8 text (one stream).

Sampling follows the reference code: for documents, draw a random document longer than `seqlen` tokens and
a random window in it; for a stream, draw random windows of the whole tokenized text. Python's
`random.Random(seed)` drives both, so the same seed gives the same tokens.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import torch

from ..errors import UserError
from ..io import read_jsonl_records
from .plan import CalibrationConfig

NAMED_SOURCES = ("c4", "wikitext2")
C4_HUB_FILE = "en/c4-train.00000-of-01024.json.gz"
DRAWS_PER_SAMPLE = 50  # random documents tried per sample before falling back to one stream


def data_dir() -> Path | None:
    value = os.environ.get("SPARSE_BENCH_DATA_DIR")
    return Path(value) if value else None


def _read_jsonl(path: Path) -> list[str]:
    texts = []
    for number, record in read_jsonl_records(path):
        if not isinstance(record.get("text"), str):
            raise UserError(f"{path}, line {number}: each line needs a string field 'text'; "
                            "write one {\"text\": \"...\"} object a line")
        texts.append(record["text"])
    if not texts:
        raise UserError(f"{path} has no documents; give a file with text in it")
    return texts


def _hub_texts(*args, **kwargs) -> list[str]:
    try:
        import datasets
        return list(datasets.load_dataset(*args, **kwargs)["text"])
    except Exception as error:  # offline, missing dataset, network: one actionable line
        raise UserError(f"cannot load calibration data {args[0]!r} from the Hugging Face hub "
                        f"({type(error).__name__}); set SPARSE_BENCH_DATA_DIR to a local copy or pass a "
                        "text file with --calibration FILE") from None


def load_calibration_texts(source: str) -> tuple[list[str], bool, list[str]]:
    """(texts, is_documents, warnings) for a named source or a path; see the module docstring."""
    local, warnings = data_dir(), []
    if source == "c4":
        files = sorted((local / "c4").glob("*.jsonl")) if local else []
        if files:
            return [text for path in files for text in _read_jsonl(path)], True, warnings
        return _hub_texts("allenai/c4", data_files={"train": C4_HUB_FILE}, split="train"), True, warnings
    if source == "wikitext2":
        folder = local / "wikitext2" if local else None
        if folder and (folder / "wiki.train.raw").is_file():
            return [(folder / "wiki.train.raw").read_text(encoding="utf-8")], False, warnings
        if folder and (folder / "wiki.test.raw").is_file():
            warnings.append(f"calibrating on {folder / 'wiki.test.raw'} (no wiki.train.raw there): "
                            "WikiText-2 test perplexity is then not held out")
            return [(folder / "wiki.test.raw").read_text(encoding="utf-8")], False, warnings
        rows = _hub_texts("Salesforce/wikitext", "wikitext-2-raw-v1", split="train")
        return ["\n\n".join(rows)], False, warnings
    path = Path(source).expanduser()
    if not path.is_file():
        raise UserError(f"calibration data {source!r} is neither {' nor '.join(NAMED_SOURCES)} nor a file; name one of those or an existing .txt / .jsonl file")
    if path.suffix == ".jsonl":
        return _read_jsonl(path), True, warnings
    try:
        return [path.read_text(encoding="utf-8")], False, warnings
    except UnicodeDecodeError:
        raise UserError(f"calibration file {path} is not UTF-8 text; pass .txt or .jsonl with 'text'") from None


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def _sample_documents(texts: list[str], tokenizer, nsamples: int, seqlen: int,
                      rng: random.Random) -> list[list[int]] | None:
    """Reference sampling: a random document longer than seqlen, a random window; None if too few exist."""
    cache: dict[int, list[int]] = {}
    samples = []
    for _ in range(nsamples):
        for _ in range(DRAWS_PER_SAMPLE):
            index = rng.randint(0, len(texts) - 1)
            ids = cache.setdefault(index, _encode(tokenizer, texts[index]))
            if len(ids) > seqlen:
                break
        else:
            return None
        start = rng.randint(0, len(ids) - seqlen - 1)
        samples.append(ids[start:start + seqlen])
    return samples


def _sample_stream(ids: list[int], nsamples: int, seqlen: int, rng: random.Random, source: str) -> list[list[int]]:
    if len(ids) <= seqlen:
        raise UserError(f"calibration text {source!r} has {len(ids)} tokens, fewer than seqlen={seqlen} + 1; "
                        "give more text or a smaller --seqlen")
    starts = [rng.randint(0, len(ids) - seqlen - 1) for _ in range(nsamples)]
    return [ids[start:start + seqlen] for start in starts]


def calibration_tokens(config: CalibrationConfig, tokenizer,
                       context: int | None = None) -> tuple[torch.Tensor, dict, list[str]]:
    """(tokens (nsamples, seqlen) int64, description, warnings) for `config`.

    `seqlen` is capped at the model's `context` (its maximum positions) with a warning; it is never raised
    to the context, so the calibration batch stays the size asked for.
    """
    texts, is_documents, warnings = load_calibration_texts(config.data)
    seqlen = config.seqlen
    if context is not None and seqlen > context:
        warnings.append(f"calibration seqlen {seqlen} capped at the model's context of {context} tokens")
        seqlen = context
    rng = random.Random(config.seed)
    samples = _sample_documents(texts, tokenizer, config.nsamples, seqlen, rng) if is_documents else None
    if samples is None:
        if is_documents:
            warnings.append(f"too few documents in {config.data!r} are longer than {seqlen} tokens; sampled "
                            "windows of all documents joined with blank lines instead")
            rng = random.Random(config.seed)
        samples = _sample_stream(_encode(tokenizer, "\n\n".join(texts)), config.nsamples, seqlen, rng,
                                 config.data)
    description = {**config.describe(), "seqlen": seqlen}
    return torch.tensor(samples, dtype=torch.int64), description, warnings


__all__ = ["NAMED_SOURCES", "data_dir", "load_calibration_texts", "calibration_tokens"]
