"""`sparse-bench analyze`: outputs, plots, before/after comparison and exit codes."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from tiny_models import AUTO_CLASSES

from sparse_bench.harness_ext.analysis import analyze
from sparse_bench.harness_ext.analysis.plots import band_fractions, linear_histogram, write_plots
from sparse_bench.harness_ext.analysis.report import comparison_markdown, markdown_summary
from sparse_bench.harness_ext.analysis.stats import histogram_counts
from sparse_bench.harness_ext.cli import main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TOP_LEVEL_KEYS = {"schema_version", "model", "architecture_kind", "thresholds", "dtypes", "overall",
                  "block_linear", "outside_blocks", "per_module_type", "per_layer", "per_tensor", "tied",
                  "tied_detection", "skipped", "missing", "histogram", "seconds"}


def run(*args):
    return CliRunner().invoke(main, ["analyze", *map(str, args)])


@pytest.fixture(scope="module")
def pruned_llama(tiny_model_dirs, tmp_path_factory):
    """The tiny llama with half of every block projection zeroed (smallest |w| per row), saved."""
    model = AUTO_CLASSES["llama"].from_pretrained(tiny_model_dirs["llama"])
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("proj.weight"):
                threshold = parameter.abs().median(dim=1, keepdim=True).values
                parameter.mul_(parameter.abs() > threshold)
    out = tmp_path_factory.mktemp("pruned_llama")
    model.save_pretrained(out)
    return out


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5000, path


def test_json_output_has_stable_keys(tiny_model_dirs):
    result = run(tiny_model_dirs["opt"], "--json", "--thresholds", "0.1,0.001")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == TOP_LEVEL_KEYS
    assert data["thresholds"] == [0.001, 0.1]
    assert set(data["overall"]["below"]) == {"0.001", "0.1"}
    assert set(data["overall"]) >= {"numel", "nonzero", "zeros", "zero_fraction", "below", "mean_abs", "max_abs",
                                    "histogram"}


def test_markdown_summary_and_files(tiny_model_dirs, tmp_path):
    out = tmp_path / "analysis"
    result = run(tiny_model_dirs["bart"], "--out", out)
    assert result.exit_code == 0, result.output
    assert "## Per layer (transformer block)" in result.stdout and "| encoder.0" in result.stdout
    assert "`lm_head.weight` is `model.shared.weight`" in result.stdout
    assert json.loads((out / "analysis.json").read_text()) ["architecture_kind"] == "encoder-decoder"
    assert (out / "summary.md").read_text().startswith("# Weight magnitudes")
    for name in ("histogram_linear", "histogram_log", "layer_bands", "module_type_bands"):
        assert_png(out / f"{name}.png")
    assert not list(out.glob(".*.tmp"))


def test_compare_before_after(tiny_model_dirs, pruned_llama, tmp_path):
    dense_json = tmp_path / "dense.json"
    dense = run(tiny_model_dirs["llama"], "--json")
    dense_json.write_text(dense.stdout)
    out = tmp_path / "compare"
    result = run(pruned_llama, "--compare", dense_json, "--out", out)
    assert result.exit_code == 0, result.output
    table = (out / "comparison.md").read_text()
    linear_row = next(line for line in table.splitlines() if line.startswith("| linear layers in blocks"))
    assert "| 0.00 %" in linear_row and "| 50.00 %" in linear_row and "+50.00 pt" in linear_row
    for name in ("compare_histogram_linear", "compare_histogram_log", "compare_layers"):
        assert_png(out / f"{name}.png")
    assert json.loads((out / "reference.json").read_text())["overall"] == json.loads(dense.stdout)["overall"]


def test_compare_against_a_model_in_json_output(tiny_model_dirs, pruned_llama):
    result = run(pruned_llama, "--compare", tiny_model_dirs["llama"], "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["block_linear"]["zero_fraction"] == 0.5
    assert data["reference"]["block_linear"]["zero_fraction"] == 0.0


@pytest.mark.parametrize("args, message", [
    (["/no/such/model"], "does not exist"),
    (["no-such-model-anywhere"], "neither a local path nor a hub model"),
    (["{llama}", "--thresholds", "0.1,abc"], "not numbers"),
    (["{llama}", "--thresholds", "-1"], "positive"),
    (["{llama}", "--compare", "{missing_json}"], "cannot read analysis"),
])
def test_user_errors_exit_2_with_one_line(tiny_model_dirs, tmp_path, args, message):
    args = [arg.format(llama=tiny_model_dirs["llama"], missing_json=tmp_path / "x.json") for arg in args]
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_help_shows_an_example():
    result = CliRunner().invoke(main, ["analyze", "--help"])
    assert result.exit_code == 0 and "sparse-bench analyze smollm2-135m" in result.output


def test_python_plot_api_overlays_two_analyses(tiny_model_dirs, pruned_llama, tmp_path):
    before, after = analyze(tiny_model_dirs["llama"]), analyze(pruned_llama)
    written = write_plots(after, tmp_path, reference=before, labels=("dense", "pruned"))
    assert {path.name for path in written} >= {"compare_histogram_linear.png", "compare_histogram_log.png",
                                               "compare_layers.png", "layer_bands.png"}
    for path in written:
        assert_png(path)
    assert "| linear layers in blocks" in comparison_markdown(before, after, ("dense", "pruned"))
    assert "## Per module type" in markdown_summary(after)


def test_bands_and_linear_rebinning_conserve_counts(pruned_llama):
    result = analyze(pruned_llama)
    for row in result["per_layer"]:
        bands = band_fractions(row, result["thresholds"])
        assert abs(sum(bands) - 1.0) < 1e-12 and bands[0] == row["zero_fraction"]
    overall = result["overall"]
    log_counts = histogram_counts(overall["histogram"])
    assert log_counts.sum() + overall["histogram"]["underflow"] + overall["histogram"]["overflow"] == (
        overall["numel"] - overall["zeros"] - overall["nonfinite"])
    edges, counts = linear_histogram(log_counts, overall["histogram"]["underflow"], overall["zeros"],
                                     upper=overall["max_abs"] * 1.01)
    assert abs(counts.sum() - (overall["numel"] - overall["histogram"]["overflow"])) < 1e-6 * overall["numel"]
    assert counts[0] >= overall["zeros"] and edges[0] == 0.0
