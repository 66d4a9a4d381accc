"""Error categories, answer flips and the markdown report of `sparse-bench compare-samples`, on constructed
samples (one per category) and constructed pairs of samples files."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.error_categories import CATEGORIES, categorize, categorize_sample, entities
from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.flips import count_flips, flips_between_files

SOURCE = ("Summarize the following bill:\n\nSECTION 1. SHORT TITLE. This Act may be cited as the Rural Water "
          "Access Act of 2019. SEC. 2. GRANTS. The Secretary of Agriculture shall award grants of up to $500,000 "
          "to rural communities for drinking water systems.\n\nSummary:")
REFERENCE = "Rural Water Access Act of 2019 This bill directs the Department of Agriculture to award grants."
GOOD = "The bill directs the Secretary of Agriculture to award grants for rural drinking water systems."


def words_as_tokens(text: str) -> int:
    return len(text.split())


CASES = {  # category -> an output that triggers it (and, with GOOD, no other category)
    "empty": "  \n ",
    "max_tokens": GOOD + " It also",
    "copied_from_source": "This Act may be cited as the Rural Water Access Act of 2019.",
    "numbers_or_names_changed": "The bill directs the Secretary of Defense to award grants of $900,000.",
    "off_topic": "Quantum chromodynamics describes gluons binding quarks inside protons and neutrons.",
}


@pytest.mark.parametrize("category", [*CASES, "repetition_loop"])
def test_each_category_is_triggered_by_its_own_sample(category):
    output = CASES.get(category, GOOD)
    repeated = 0.8 if category == "repetition_loop" else 0.0
    found = categorize(output, REFERENCE, SOURCE, max_gen_toks=18, repeated_4gram=repeated,
                       count_tokens=words_as_tokens)
    assert [name for name in CATEGORIES if found[name]] == [category]


def test_a_good_output_is_in_no_category_and_missing_inputs_are_not_checked():
    assert not any(categorize(GOOD, REFERENCE, SOURCE, 18, 0.0, words_as_tokens).values())
    unchecked = categorize(GOOD, REFERENCE, None)
    assert unchecked["max_tokens"] is None and unchecked["repetition_loop"] is None
    assert unchecked["copied_from_source"] is None and unchecked["off_topic"] is False


def test_entities_skip_sentence_starts_and_keep_numbers():
    assert entities("The bill. Congress shall pay $1,500.50 to Ohio in 2020.") == {"Ohio", "1,500.50", "2020"}


def sample(doc_id: int, output: str | None = None, acc: float | None = None, rouge1: float = 0.0,
           repeated: float = 0.0, max_gen_toks: int = 18) -> dict:
    """One line as lm-eval's --log_samples writes it: a generation sample, or an acc-scored one."""
    if acc is not None:
        return {"doc_id": doc_id, "doc_hash": f"h{doc_id}", "target": "1", "filter": "none",
                "filtered_resps": [[-1.0, False], [-2.0, False]], "metrics": ["acc"], "acc": acc}
    return {"doc_id": doc_id, "doc_hash": f"h{doc_id}", "target": REFERENCE, "filter": "none",
            "arguments": {"gen_args_0": {"arg_0": SOURCE, "arg_1": {"max_gen_toks": max_gen_toks, "until": []}}},
            "filtered_resps": [output], "metrics": ["rouge1", "repeated_4gram"], "rouge1": rouge1,
            "repeated_4gram": repeated}


def write(path, samples) -> str:
    path.write_text("".join(json.dumps(item) + "\n" for item in samples), encoding="utf-8")
    return str(path)


def test_sample_form_reads_prompt_limit_and_logged_repetition():
    found = categorize_sample(sample(0, "the bill the bill the bill the bill", repeated=0.6), words_as_tokens)
    assert found["repetition_loop"] is True and found["max_tokens"] is False


def test_flips_counted_separately_on_a_constructed_pair(tmp_path):
    dense_acc, pruned_acc = [1, 1, 1, 0, 0, 1], [1, 0, 0, 1, 0, 1]  # 2 right->wrong, 1 wrong->right
    dense = write(tmp_path / "samples_sparsebench_mrpc.jsonl", [sample(i, acc=a) for i, a in enumerate(dense_acc)])
    (tmp_path / "pruned").mkdir()
    pruned = write(tmp_path / "pruned" / "samples_sparsebench_mrpc_2026-12-03T08-00-00.123.jsonl",
                   [sample(i, acc=a) for i, a in enumerate(pruned_acc)])
    flips = flips_between_files(dense, pruned)
    assert (flips["right_to_wrong"], flips["wrong_to_right"], flips["both_right"], flips["both_wrong"]) == (2, 1, 2, 1)
    assert flips["flip_rate"] == pytest.approx(0.5) and flips["documents"] == 6
    result = CliRunner().invoke(main, ["compare-samples", dense, pruned])
    assert "2 right -> wrong, 1 wrong -> right (flip rate 0.500)" in result.output, result.output
    with pytest.raises(UserError, match="no 0/1 per-sample 'acc'"):
        count_flips({0: {"doc_id": 0, "acc": 0.5}}, {0: {"doc_id": 0, "acc": 1.0}})


def test_report_counts_categories_and_shows_the_largest_regressions(tmp_path, tiny_model_dirs):
    dense = write(tmp_path / "dense.jsonl", [sample(i, GOOD, rouge1=0.5, max_gen_toks=1000)
                                             for i in range(len(CASES) + 1)])
    outputs = [*CASES.values(), "the the bill " * 4]
    pruned = write(tmp_path / "pruned.jsonl", [sample(i, text, rouge1=0.4 - 0.05 * i, max_gen_toks=1000,
                                                      repeated=0.7 if i == len(CASES) else 0.0)
                                               for i, text in enumerate(outputs)])
    report = tmp_path / "report.md"
    result = CliRunner().invoke(main, ["compare-samples", dense, pruned, "--report", str(report), "--limit", "2",
                                       "--tokenizer", str(tiny_model_dirs["llama"]), "--json"])
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)["categories"]
    assert counts["a"]["ok"] == len(outputs) and counts["b"]["ok"] == 1  # the cut-off output, with room left
    assert all(counts["b"][name] >= 1 for name in CATEGORIES if name != "max_tokens")
    assert counts["b"]["max_tokens"] == 0  # checked with the tokenizer: 1,000 tokens were allowed
    text = report.read_text(encoding="utf-8")
    assert "## Error categories" in text and "| empty | 0 / 6 | 1 / 6 |" in text
    assert text.count("### doc ") == 2 and "### doc 5: rouge1 A 0.500, B 0.150 (-0.350)" in text
    assert "categories: `repetition_loop`" in text and "| reference | A | B |" in text


def test_files_of_different_tasks_or_documents_are_one_line_errors(tmp_path):
    mrpc = write(tmp_path / "samples_sparsebench_mrpc.jsonl", [sample(0, acc=1.0)])
    billsum = write(tmp_path / "samples_sparsebench_billsum.jsonl", [sample(0, GOOD)])
    other_docs = write(tmp_path / "samples_sparsebench_billsum_2026-12-01T10-00-00.5.jsonl",
                       [{**sample(0, GOOD), "doc_hash": "another"}])
    for files, message in [((mrpc, billsum), "holds task sparsebench_mrpc and"),
                           ((billsum, other_docs), "doc_id 0 is a different document")]:
        result = CliRunner().invoke(main, ["compare-samples", *files])
        assert result.exit_code == 2 and message in result.output and result.output.count("\n") == 1, result.output
