"""Task metrics against hand-computed values: ROUGE, MRPC's F1 / AUC / baselines / flags, bits per byte."""

from __future__ import annotations

import math

import pytest
from lm_eval.api.metrics import bits_per_byte
from task_utils import load_task_utils

billsum = load_task_utils("sparsebench_billsum")
mrpc = load_task_utils("sparsebench_mrpc")


# ---------------------------------------------------------------- ROUGE

def test_rouge_of_known_strings():
    scores = billsum.rouge("the cat sat on the mat", "the cat lay on the mat")
    # unigrams: 5 of 6 shared (the x2, cat, on, mat); bigrams: 3 of 5 (the cat, on the, the mat); LCS: 5 tokens
    assert scores["rouge1"] == pytest.approx(5 / 6)
    assert scores["rouge2"] == pytest.approx(3 / 5)
    assert scores["rougeL"] == pytest.approx(5 / 6)
    assert scores["rougeLsum"] == pytest.approx(5 / 6)


def test_rouge_lsum_splits_sentences_at_newlines_and_stems():
    reference, prediction = "the cat sat.\nthe dog ran.", "the dog ran.\nthe cat sat."
    scores = billsum.rouge(reference, prediction)
    assert scores["rougeL"] == pytest.approx(3 / 6)  # one sentence's 3 tokens in order, over 6
    assert scores["rougeLsum"] == pytest.approx(1.0)  # each reference sentence matched in full
    assert billsum.rouge("dogs running", "dog runs")["rouge1"] == pytest.approx(1.0)  # Porter stemming is on


@pytest.fixture(scope="module")
def tiny_scorer(tiny_model_dirs) -> dict:
    """The BERTScore fields load_billsum puts in each doc, for the tiny bert encoder."""
    return {"bertscore_model": str(tiny_model_dirs["bert"]), "bertscore_layers": None}


def test_generation_results_strip_whitespace_and_score_the_lead_baseline(tiny_scorer):
    doc = {"summary": " the cat sat on the mat \n", "lead": "the cat", **tiny_scorer}
    result = billsum.process_generation(doc, ["\n\n the cat lay on the mat  "])
    assert result["rouge1"] == pytest.approx(5 / 6)
    assert result["lead_rouge1"] == pytest.approx(0.5)  # precision 1, recall 2/6
    assert result["empty"] == 0.0
    empty = billsum.process_generation(doc, [" \n\n "])
    assert empty["empty"] == 1.0 and empty["rouge1"] == 0.0 and empty["bertscore_f1"] == 0.0
    assert set(result) == {*billsum.ROUGE_TYPES, *(f"lead_{name}" for name in billsum.ROUGE_TYPES), "empty",
                           "bertscore_precision", "bertscore_recall", "bertscore_f1", "repeated_4gram",
                           "distinct_1", "distinct_2"}


def test_bertscore_on_a_tiny_encoder(tiny_scorer):
    doc = {"summary": "The bill extends the program through 2030.", **tiny_scorer}
    same = billsum.bertscore(doc, "The bill extends the program through 2030.")
    assert same == pytest.approx({"bertscore_precision": 1.0, "bertscore_recall": 1.0, "bertscore_f1": 1.0})
    other = billsum.bertscore(doc, "Weather records from the northern coast")
    assert other["bertscore_f1"] < same["bertscore_f1"] - 1e-4  # a random encoder: close, not equal
    scorer = billsum.bert_scorer(tiny_scorer["bertscore_model"], None)
    assert scorer.num_layers == 2  # the tiny encoder's last layer
    assert billsum.scorer_description("tiny", scorer).startswith("tiny (layer 2, bert-score ")


def test_bertscore_without_a_scorer_names_the_option(monkeypatch, tmp_path):
    utils = load_task_utils("sparsebench_billsum")
    real_find_spec = utils.importlib.util.find_spec
    monkeypatch.setattr(utils.importlib.util, "find_spec",
                        lambda name, *a: None if name == utils.SCORER_PACKAGE else real_find_spec(name, *a))
    monkeypatch.setenv("SPARSE_BENCH_HOME", str(tmp_path))
    with pytest.raises(utils.DataError, match="all-minilm-l6-v2 is not installed.*bertscore_model") as error:
        utils.bert_scorer("all-minilm-l6-v2", None)
    assert "\n" not in str(error.value)
    with pytest.raises(utils.DataError, match="cannot load BERTScore scorer .*no-such-scorer.*bertscore_model"):
        utils.bert_scorer(str(tmp_path / "no-such-scorer"), None)


def test_repetition_share_and_distinct_n():
    assert billsum.repetition("a b c d e f") == {"repeated_4gram": 0.0, "distinct_1": 1.0, "distinct_2": 1.0}
    loop = billsum.repetition("the bill the bill the bill the bill")  # 5 4-grams, 2 distinct
    assert loop["repeated_4gram"] == pytest.approx(3 / 5)
    assert loop["distinct_1"] == pytest.approx(2 / 8) and loop["distinct_2"] == pytest.approx(2 / 7)
    assert billsum.repetition("The BILL the bill")["distinct_1"] == pytest.approx(2 / 4)  # lowercased
    assert billsum.repetition("") == {"repeated_4gram": 0.0, "distinct_1": 0.0, "distinct_2": 0.0}


def test_missing_rouge_package_is_a_loud_error(monkeypatch):
    utils = load_task_utils("sparsebench_billsum")
    monkeypatch.setitem(__import__("sys").modules, "rouge_score.rouge_scorer", None)
    with pytest.raises(utils.DataError, match="pip install rouge-score"):
        utils.process_generation({"summary": "a", "lead": "a", "bertscore_model": "unused"}, ["a"])


def test_bits_per_byte_counts_the_bytes_of_the_scored_continuation():
    doc = {"summary_scored": "é ab"}
    assert billsum.doc_to_scored_summary(doc) == " é ab"
    item = billsum.process_likelihood(doc, [(-10.0, False)])["bits_per_byte"]
    assert item == (-10.0, 6)  # " é ab": 1 + 2 + 1 + 2 bytes
    assert bits_per_byte([item, (-2.0, 2)]) == pytest.approx(12 / 8 / math.log(2))


# ---------------------------------------------------------------- MRPC

def test_pair_results_follow_the_yes_no_log_likelihoods():
    result = mrpc.process_results({"label": 1}, [(-2.0, False), (-1.0, False)])
    assert result["acc"] == 1.0 and result["yes_rate"] == 1.0 and result["one_class"] == 1
    assert result["gold_nll"] == pytest.approx(1.0)
    assert result["auc"] == (1, pytest.approx(1.0)) and result["f1"] == (1, 1)
    tie = mrpc.process_results({"label": 1}, [(-1.0, False), (-1.0, False)])
    assert tie["yes_rate"] == 0.0 and tie["acc"] == 0.0 and tie["gold_nll"] == pytest.approx(1.0)


def test_f1_of_the_yes_class():
    golds, answers = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]  # TP 2, FP 1, FN 1
    assert mrpc.f1(list(zip(golds, answers))) == pytest.approx(2 / 3)
    assert mrpc.f1([(1, 0), (0, 0)]) == 0.0  # never "yes": F1 0, not an error


def test_majority_baseline():
    assert mrpc.majority_acc([1, 1, 0]) == pytest.approx(2 / 3)
    assert mrpc.majority_f1([1, 1, 0]) == pytest.approx(0.8)  # always yes: P 2/3, R 1
    assert mrpc.majority_acc([0, 0, 1]) == pytest.approx(2 / 3)
    assert mrpc.majority_f1([0, 0, 1]) == 0.0  # always no


def test_auc_and_its_hanley_mcneil_interval():
    items = [(1, 0.9), (1, 0.4), (0, 0.5), (0, 0.1)]  # 3 of 4 positive-negative pairs ordered right
    area, low, high = mrpc.auc_interval(items)
    assert area == pytest.approx(0.75)
    q1, q2 = 0.75 / 1.25, 2 * 0.75 ** 2 / 1.75
    se = math.sqrt((0.75 * 0.25 + (q1 - 0.5625) + (q2 - 0.5625)) / 4)
    assert low == pytest.approx(0.75 - 1.959964 * se) and high == 1.0  # clipped to [0, 1]
    assert (mrpc.auc(items), mrpc.auc_low(items), mrpc.auc_high(items)) == (area, low, high)
    assert all(math.isnan(value) for value in mrpc.auc_interval([(1, 0.2), (1, 0.3)]))


def test_one_class_flag(caplog):
    assert mrpc.one_class([1] * 19 + [0]) == 1.0  # 95 % "yes"
    assert "'yes' to 95.0% of 20 pairs" in caplog.text
    assert mrpc.one_class([0] * 20) == 1.0
    assert mrpc.one_class([1] * 18 + [0] * 2) == 0.0


def test_auc_at_chance_flag(caplog):
    separated = [(1, 1.0 + i) for i in range(50)] + [(0, -1.0 - i) for i in range(50)]
    assert mrpc.auc_at_chance(separated) == 0.0 and not caplog.text
    inverted = [(1 - gold, score) for gold, score in separated]
    assert mrpc.auc_at_chance(inverted) == 0.0 and "ROC-AUC 0.000 [0.000, 0.000] on 100 pairs is below chance" \
        in caplog.text
    assert mrpc.auc_at_chance([(1, 0.9), (1, 0.4), (0, 0.5), (0, 0.1)]) == 1.0  # [0.21, 1] holds 0.5
    assert mrpc.auc_at_chance([(1, 0.2), (1, 0.3)]) == 1.0  # undefined AUC: no evidence either
