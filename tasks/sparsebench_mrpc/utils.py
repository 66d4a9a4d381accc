"""GLUE-MRPC for sparse-bench: the data (hub or a local copy) and metrics that show whether a model did anything.

Data: `nyu-mll/glue` config `mrpc` from the Hugging Face hub by default; when the environment variable
SPARSE_BENCH_DATA_DIR is set, `$SPARSE_BENCH_DATA_DIR/glue_mrpc/validation.tsv` (and `train.tsv` for the
few-shot variant) in the original GLUE TSV layout instead (UTF-8 BOM, unbalanced quotes: read verbatim).

Metrics (positive class = "yes" = paraphrase; label 1):
- `acc`, `f1`: lm-eval's usual pair, F1 with scikit-learn and no bootstrap (lm-eval's own `f1` aggregation is
  bootstrapped 100,000 times for its stderr, ~84 s per run, whatever the number of pairs).
- `yes_rate`: share of pairs answered "yes" (logP(" yes") > logP(" no")).
- `majority_acc`, `majority_f1`: the baseline that always answers the most common gold label of the scored pairs.
- `auc`, `auc_low`, `auc_high`: ROC-AUC of the score logP(yes) - logP(no), threshold-free, with a 95 % interval
  (Hanley & McNeil 1982 standard error, normal approximation).
- `gold_nll`: mean negative log-likelihood of the gold answer word, in nats ("MRPC loss").
- `one_class`: 1.0 when the model gave the same answer to at least ONE_CLASS_SHARE of the pairs;
  `auc_at_chance`: 1.0 when the AUC interval contains 0.5. Either one means acc/F1 measure the model's yes/no
  bias, not paraphrase detection; a warning says so in the log (and when the AUC interval lies below 0.5).

This module imports nothing from sparse-bench except, when installed, its `UserError` (a one-line error).
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from pathlib import Path

try:
    from sparse_bench.harness_ext.errors import UserError as DataError
except ImportError:  # the task folder used on its own, outside an installed sparse-bench
    class DataError(Exception):
        """A missing or malformed data file (one-line message)."""

        def __init__(self, message: str) -> None:
            super().__init__(" ".join(str(message).split()))

logger = logging.getLogger("lm_eval.tasks.sparsebench_mrpc")  # follows lm-eval's verbosity

DATA_DIR_ENV = "SPARSE_BENCH_DATA_DIR"
LOCAL_FOLDER = "glue_mrpc"
# GLUE TSV column -> the hub dataset's column
TSV_COLUMNS = {"Quality": "label", "#1 String": "sentence1", "#2 String": "sentence2"}
ONE_CLASS_SHARE = 0.95
Z_95 = 1.959964


# ---------------------------------------------------------------- data

def load_mrpc(hub_dataset: str = "nyu-mll/glue", hub_config: str = "mrpc", require_train: bool = False,
              **_model_args):
    """The MRPC splits as a `datasets.DatasetDict` (`validation`, and `train` when present or required).

    lm-eval calls this as the task's `custom_dataset` with the run's model arguments and metadata as
    keywords; they are not needed here.
    """
    import datasets

    local_root = os.environ.get(DATA_DIR_ENV)
    if not local_root:
        return _load_from_hub(hub_dataset, hub_config)
    folder = Path(local_root) / LOCAL_FOLDER
    splits = {"validation": read_glue_tsv(folder / "validation.tsv")}
    train_file = folder / "train.tsv"
    if train_file.is_file():
        splits["train"] = read_glue_tsv(train_file)
    elif require_train:
        raise DataError(f"{train_file} is missing: the few-shot variant draws its examples from the train split; "
                        f"add the GLUE MRPC train.tsv there or unset {DATA_DIR_ENV} to read {hub_dataset}")
    return datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items()})


def _load_from_hub(hub_dataset: str, hub_config: str):
    import datasets

    try:
        return datasets.load_dataset(hub_dataset, hub_config)
    except Exception as error:  # offline, unknown name, ...: one line that says how to run offline
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DataError(f"cannot load {hub_dataset}/{hub_config} from the Hugging Face hub ({reason}); to run "
                        f"offline set {DATA_DIR_ENV} to a folder holding {LOCAL_FOLDER}/validation.tsv") from error


def read_glue_tsv(path: Path) -> list[dict]:
    """Rows {idx, sentence1, sentence2, label} of a GLUE MRPC TSV file, read verbatim (quotes are text)."""
    if not path.is_file():
        raise DataError(f"{path} is missing; put the GLUE MRPC TSV there or unset {DATA_DIR_ENV} to use the hub")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [column for column in TSV_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path} lacks column(s) {', '.join(missing)}; expected a GLUE MRPC TSV with "
                            f"columns {', '.join(TSV_COLUMNS)}")
        rows = []
        for row in reader:
            if None in row or None in row.values() or row["Quality"] not in ("0", "1"):
                raise DataError(f"{path}, line {reader.line_num}: not a GLUE MRPC row (wrong number of tab-"
                                "separated fields or a label other than 0/1); fix that line or use the GLUE file as published")
            rows.append({"idx": len(rows), "sentence1": row["#1 String"], "sentence2": row["#2 String"],
                         "label": int(row["Quality"])})
    if not rows:
        raise DataError(f"{path} has a header but no pairs; give the full GLUE MRPC TSV")
    return rows


# ---------------------------------------------------------------- per-pair results

def process_results(doc: dict, results: list) -> dict:
    """One pair's contributions to every metric; `results` is [(logP(" no"), greedy), (logP(" yes"), greedy)]."""
    loglik_no, loglik_yes = (loglik for loglik, _is_greedy in results)
    gold = int(doc["label"])
    answer = int(loglik_yes > loglik_no)  # ties -> "no", like lm-eval's argmax
    score = loglik_yes - loglik_no
    return {
        "acc": float(answer == gold),
        "f1": (gold, answer),
        "yes_rate": float(answer),
        "majority_acc": gold,
        "majority_f1": gold,
        "auc": (gold, score),
        "auc_low": (gold, score),
        "auc_high": (gold, score),
        "gold_nll": -(loglik_yes if gold else loglik_no),
        "one_class": answer,
        "auc_at_chance": (gold, score),
    }


# ---------------------------------------------------------------- aggregations (lists of per-pair values)

def f1(items: list[tuple[int, int]]) -> float:
    """F1 of the "yes" class over (gold, answer) pairs."""
    from sklearn.metrics import f1_score

    golds, answers = zip(*items)
    return float(f1_score(golds, answers, pos_label=1, zero_division=0.0))


def _majority(golds: list[int]) -> int:
    counts = Counter(golds)
    return 1 if counts[1] >= counts[0] else 0


def majority_acc(golds: list[int]) -> float:
    """Accuracy of always answering the most common gold label."""
    return sum(gold == _majority(golds) for gold in golds) / len(golds)


def majority_f1(golds: list[int]) -> float:
    """F1 ("yes" class) of always answering the most common gold label."""
    return f1([(gold, _majority(golds)) for gold in golds])


def auc_interval(items: list[tuple[int, float]]) -> tuple[float, float, float]:
    """(AUC, low, high): ROC-AUC of the scores with a 95 % Hanley-McNeil interval; NaNs if one class only."""
    from sklearn.metrics import roc_auc_score

    golds, scores = zip(*items)
    n_pos, n_neg = sum(golds), len(golds) - sum(golds)
    if n_pos == 0 or n_neg == 0:
        return math.nan, math.nan, math.nan
    area = float(roc_auc_score(golds, scores))
    q1, q2 = area / (2 - area), 2 * area ** 2 / (1 + area)
    variance = (area * (1 - area) + (n_pos - 1) * (q1 - area ** 2) + (n_neg - 1) * (q2 - area ** 2)) / (n_pos * n_neg)
    half_width = Z_95 * math.sqrt(max(variance, 0.0))
    return area, max(area - half_width, 0.0), min(area + half_width, 1.0)


def auc(items: list[tuple[int, float]]) -> float:
    return auc_interval(items)[0]


def auc_low(items: list[tuple[int, float]]) -> float:
    return auc_interval(items)[1]


def auc_high(items: list[tuple[int, float]]) -> float:
    return auc_interval(items)[2]


def one_class(answers: list[int]) -> float:
    """1.0 (and a warning) when at least ONE_CLASS_SHARE of the answers are the same word."""
    yes_share = sum(answers) / len(answers)
    share, word = (yes_share, "yes") if yes_share >= 0.5 else (1 - yes_share, "no")
    if share < ONE_CLASS_SHARE:
        return 0.0
    logger.warning("MRPC: the model answered %r to %.1f%% of %d pairs; acc/F1 measure its yes/no bias, not "
                   "paraphrase detection (compare majority_acc/majority_f1, read auc)", word, 100 * share,
                   len(answers))
    return 1.0


def auc_at_chance(items: list[tuple[int, float]]) -> float:
    """1.0 (and a warning) when the 95 % AUC interval contains 0.5 (or is undefined); a warning, too, when the
    whole interval lies below 0.5 (the yes/no preference runs against the labels)."""
    area, low, high = auc_interval(items)
    if not math.isnan(area) and high < 0.5:
        logger.warning("MRPC: ROC-AUC %.3f [%.3f, %.3f] on %d pairs is below chance: the model prefers 'yes' more "
                       "for the pairs that are not paraphrases", area, low, high, len(items))
    if not math.isnan(area) and not low <= 0.5 <= high:
        return 0.0
    logger.warning("MRPC: ROC-AUC %.3f [%.3f, %.3f] on %d pairs is not distinguishable from chance; the "
                   "yes/no scores carry no measurable paraphrase signal", area, low, high, len(items))
    return 1.0
