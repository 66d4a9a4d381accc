"""`sparse-bench prune` end to end on a tiny model: writes a loadable checkpoint and reports measured sparsity."""

from __future__ import annotations

import json

from click.testing import CliRunner
from transformers import AutoModelForCausalLM

from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.pruning.report import report_as_loaded

CALIBRATION = ["--calibration", "c4", "--nsamples", "4", "--seqlen", "32", "--no-progress"]


def test_prune_writes_a_stock_loadable_checkpoint(tiny_llama, tmp_path):
    out = tmp_path / "wanda24"
    result = CliRunner().invoke(main, ["prune", str(tiny_llama), "--method", "wanda", "--structure", "2:4",
                                       *CALIBRATION, "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["overall_sparsity"] == 0.5 and record["calibration"]["nsamples"] == 4
    assert record["plan"]["steps"][0]["structure"] == "2:4"
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert report_as_loaded(reloaded).overall_sparsity == 0.5


def test_prune_true_sequential_flag(tiny_llama, tmp_path):
    result = CliRunner().invoke(main, ["prune", str(tiny_llama), "--method", "sparsegpt", "--sparsity", "0.5",
                                       "--true-sequential", *CALIBRATION, "--out", str(tmp_path / "ts"), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["calibration"]["true_sequential"] is True and record["overall_sparsity"] == 0.5


def test_prune_text_summary_and_global_magnitude(tiny_llama, tmp_path):
    result = CliRunner().invoke(main, ["prune", str(tiny_llama), "--method", "magnitude", "--scope", "global",
                                       "--sparsity", "0.7", "--out", str(tmp_path / "mag"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "overall sparsity 0.7000" in result.stdout and "saved dense checkpoint" in result.stdout


def test_prune_user_errors_exit_2_and_write_nothing(tiny_llama, tmp_path):
    runner = CliRunner()
    cases = [
        (["--sparsity", "0.5"], "without method"),
        (["--method", "wanda", "--sparsity", "1.5"], "sparsity must be in"),
        (["--method", "wanda", "--structure", "5:4"], "impossible N:M"),
        (["--method", "wanda", "--sparsity", "0.5", "--recipe", str(tmp_path / "r.yaml")], "a recipe already defines"),
        (["--method", "wanda", "--sparsity", "0.5", "--target", "re:nothing.*"], "matches no"),
        (["--method", "wanda", "--sparsity", "0.5", "--calibration", str(tmp_path / "none.txt")], "nor a file"),
    ]
    for arguments, message in cases:
        out = tmp_path / "never"
        result = runner.invoke(main, ["prune", str(tiny_llama), *arguments, "--nsamples", "2", "--seqlen", "32",
                                      "--no-progress", "--out", str(out)])
        assert result.exit_code == 2, (arguments, result.output)
        assert message in result.stderr, (arguments, result.stderr)
        assert not out.exists()


def test_prune_with_a_recipe_file(tiny_llama, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("sparsity_stage:\n  run_type: oneshot\n  sparsity_modifiers:\n    WandaPruningModifier:\n"
                      "      sparsity: 0.5\n      mask_structure: \"2:4\"\n      targets: [\"Linear\"]\n"
                      "      ignore: [\"lm_head\"]\n")
    result = CliRunner().invoke(main, ["prune", str(tiny_llama), "--recipe", str(recipe), *CALIBRATION,
                                       "--out", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["overall_sparsity"] == 0.5
    assert record["plan"]["steps"][0]["method"] == "wanda" and record["plan"]["steps"][0]["structure"] == "2:4"
