"""`sparse-bench compare-samples`: pairs by doc_id, sorts by the loss, refuses mismatched files, JSON output."""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from sparse_bench.harness_ext.cli import main


def sample(doc_id: int, output: str, rouge1: float, doc_hash: str | None = None) -> dict:
    """One line as lm-eval's --log_samples writes it for a generation task (the fields we read, and some)."""
    return {"doc_id": doc_id, "doc": {"summary": f"reference {doc_id}"}, "target": f"reference {doc_id}",
            "arguments": {"gen_args_0": {"arg_0": "prompt", "arg_1": {}}}, "resps": [[output]],
            "filtered_resps": [output], "filter": "none", "metrics": ["rouge1", "empty"],
            "doc_hash": doc_hash or f"hash{doc_id}", "rouge1": rouge1, "empty": float(not output.strip())}


def write(path, samples):
    path.write_text("".join(json.dumps(item) + "\n" for item in samples), encoding="utf-8")
    return str(path)


def test_pairs_sorted_by_largest_loss(tmp_path):
    dense = write(tmp_path / "dense.jsonl", [sample(0, "good summary", 0.5), sample(1, "fine", 0.4),
                                            sample(2, "only dense", 0.3)])
    pruned = write(tmp_path / "pruned.jsonl", [sample(1, " ", 0.0), sample(0, "\n worse summary", 0.45)])
    result = CliRunner().invoke(main, ["compare-samples", dense, pruned, "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("== doc 1  rouge1: A 0.400  B 0.000  (B - A -0.400)\nreference: reference 1\n"
                                    "A dense.jsonl: fine\nB pruned.jsonl: (empty)\n")
    assert "doc 0" not in result.output  # --limit 1
    summary = result.output.split("unweighted mean over the 2 documents both runs scored")[1]
    rouge_row = next(line.split() for line in summary.splitlines() if line.startswith("rouge1"))
    assert rouge_row == ["rouge1", "0.4500", "0.2250", "-0.2250", "2"]


def test_json_output(tmp_path):
    dense = write(tmp_path / "a.jsonl", [sample(0, "x", 0.5)])
    pruned = write(tmp_path / "b.jsonl", [sample(0, "y", 0.25)])
    result = CliRunner().invoke(main, ["compare-samples", dense, pruned, "--json"])
    data = json.loads(result.output)
    assert data["metric"] == "rouge1" and data["mean"]["b"] == {"rouge1": 0.25, "empty": 0.0}
    assert data["pairs"] == [{"doc_id": 0, "reference": "reference 0",
                              "a": {"output": "x", "metrics": {"rouge1": 0.5, "empty": 0.0}, "categories": []},
                              "b": {"output": "y", "metrics": {"rouge1": 0.25, "empty": 0.0}, "categories": []}}]
    assert data["categories"]["b"]["ok"] == 1 and data["categories"]["b"]["max_tokens"] is None  # no --tokenizer
    assert data["flips"] is None  # not scored by acc


def test_mismatched_or_missing_files_are_user_errors(tmp_path):
    dense = write(tmp_path / "a.jsonl", [sample(0, "x", 0.5)])
    other_task = write(tmp_path / "b.jsonl", [sample(0, "y", 0.25, doc_hash="elsewhere")])
    runner = CliRunner()
    cases = [([dense, other_task], "doc_id 0 is a different document"),
             ([dense, write(tmp_path / "c.jsonl", [sample(7, "y", 0.1)])], "share no doc_id"),
             ([dense, str(tmp_path / "missing.jsonl")], "missing.jsonl does not exist"),
             ([dense, dense, "--metric", "bleu"], "no per-sample metric 'bleu'")]
    (tmp_path / "bad.jsonl").write_text("{not json\n", encoding="utf-8")
    cases.append(([dense, str(tmp_path / "bad.jsonl")], "bad.jsonl, line 1: not JSON"))
    for arguments, message in cases:
        result = runner.invoke(main, ["compare-samples", *arguments])
        assert result.exit_code == 2 and message in result.output, (arguments, result.output)


def test_likelihood_samples_compare_bits_per_byte(tmp_path):
    def likelihood_sample(doc_id, loglik):
        return {"doc_id": doc_id, "target": "summary", "filtered_resps": [[loglik, False]], "filter": "none",
                "metrics": ["bits_per_byte"], "doc_hash": f"h{doc_id}", "bits_per_byte": [loglik, 10]}

    dense = write(tmp_path / "a.jsonl", [likelihood_sample(0, -10.0), likelihood_sample(1, -20.0)])
    pruned = write(tmp_path / "b.jsonl", [likelihood_sample(0, -30.0), likelihood_sample(1, -21.0)])
    result = CliRunner().invoke(main, ["compare-samples", dense, pruned, "--json"])
    pairs = json.loads(result.output)["pairs"]
    assert [pair["doc_id"] for pair in pairs] == [0, 1]  # doc 0 lost most: 20 nats over 10 bytes
    assert pairs[0]["a"]["metrics"]["bits_per_byte"] == pytest.approx(1.0 / math.log(2))
    assert pairs[0]["b"]["output"] is None
    table = CliRunner().invoke(main, ["compare-samples", dense, pruned]).output
    assert next(line.split() for line in table.splitlines() if line.startswith("bits_per_byte"))[-1] == "2"
