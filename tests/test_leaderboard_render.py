"""Rendering a grid folder: one table per task, dense first, ranks, deltas, NaN flags, failures, formats."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.io import write_json_atomic
from sparse_bench.leaderboards.cells import expand_cells
from sparse_bench.leaderboards.plots import make_plots
from sparse_bench.leaderboards.render import load_grid, render, task_rows
from sparse_bench.leaderboards.spec_parser import parse_spec
from sparse_bench.leaderboards.store import RESULT_FORMAT, result_path, write_grid_file, write_result

SPEC = {"name": "t", "models": ["tiny"], "methods": ["magnitude", "wanda"], "sparsities": [0.5],
        "structures": ["unstructured", "2:4"], "tasks": [{"name": "loglik", "metrics": ["bits_per_byte"]},
                                                         {"name": "mc"}], "perplexity": None}
# bits per byte (lower is better) and accuracy per method label + structure
QUALITY = {("dense", "dense"): (1.0, 0.7), ("magnitude", "unstructured"): (3.0, 0.6),
           ("magnitude", "2:4"): (float("nan"), 0.5), ("wanda", "unstructured"): (1.5, 0.65)}


def fake_record(cell, bpb, acc):
    sparsity = 0.0 if cell.is_dense else 0.5
    return {"format": RESULT_FORMAT, "cell_id": cell.cell_id, "cell": cell.describe(), "status": "ok",
            "reason": None, "environment": {"lm_eval": "0.4.13", "torch": "x"}, "model_path": "/m",
            "model_fingerprint": "ab" * 32,
            "prune": None if cell.is_dense else {"prune_seconds": 2.0},
            "sparsity": {"overall_sparsity": sparsity, "nonzero_params": int(1e6 * (1 - sparsity))},
            "evaluations": [{"results": {"config": {"model_revision": "main"}}}],
            "metrics": {"loglik": {"bits_per_byte": bpb, "bits_per_byte_stderr": 0.01},
                        "mc": {"acc": acc, "acc_stderr": 0.05}},
            "higher_is_better": {"loglik": {"bits_per_byte": False}, "mc": {"acc": True}},
            "perplexity": None,
            "latency": {"forward_ms": 10.0, "generate_tokens_per_s": 50.0, "peak_memory_bytes": 2**30,
                        "device": "cpu", "device_name": "cpu", "torch_threads": 2, "cpu_count": 2,
                        "peak_memory_kind": "process peak RSS (sampled)"},
            "size": {"status": "measured", "dense_bytes": 4 * 2**20, "compressed_bytes": 2 * 2**20},
            "flags": [f"loglik/bits_per_byte is {bpb}"] if math.isnan(bpb) else []}


@pytest.fixture
def grid_dir(tmp_path):
    spec = parse_spec(SPEC, source="t.yaml")
    cells = expand_cells(spec)
    write_grid_file(tmp_path, spec, cells)
    for cell in cells:
        key = (cell.method_label, cell.structure_label)
        if key in QUALITY:
            write_json_atomic(result_path(tmp_path, cell.cell_id), fake_record(cell, *QUALITY[key]))
        elif cell.method_label == "wanda":
            write_json_atomic(result_path(tmp_path, cell.cell_id), {
                "format": RESULT_FORMAT, "cell_id": cell.cell_id, "cell": cell.describe(), "status": "failed",
                "reason": "out of memory: could not allocate"})
    return tmp_path


def test_task_table_dense_first_rank_delta_and_nan_flag(grid_dir):
    rows, primary = task_rows(load_grid(grid_dir), "loglik")
    assert primary == "bits_per_byte"
    assert [(r["method"], r["structure"]) for r in rows] == [
        ("dense", "-"), ("magnitude", "unstructured"), ("magnitude", "2:4"), ("wanda", "unstructured")]
    assert [r["rank"] for r in rows] == ["1", "3", "-", "2"]  # lower bits per byte ranks first; NaN unranked
    assert rows[1]["Δ bits_per_byte vs dense"] == "+2"
    assert rows[2]["bits_per_byte"].startswith("nan (!)")
    assert "bits_per_byte is nan" in rows[2]["flags"]
    assert rows[0]["bits_per_byte"] == "1 ± 0.01"
    assert rows[1]["measured"] == "50.00 %" and rows[1]["compressed MiB"] == "2.0"


def test_higher_is_better_ranks_descending(grid_dir):
    rows, primary = task_rows(load_grid(grid_dir), "mc")
    assert primary == "acc"
    assert [r["rank"] for r in rows] == ["1", "3", "4", "2"]


def test_markdown_has_header_tables_plots_and_failures(grid_dir):
    plots = make_plots(load_grid(grid_dir))
    assert set(plots) == {"loglik", "mc", "cost"} and all(p.stat().st_size > 1000 for p in plots.values())
    text, path = render(grid_dir, "md", plots)
    assert path.read_text() == text
    assert "lm-eval 0.4.13" in text and "2 torch threads" in text
    assert "## loglik" in text and "## mc" in text
    assert "![loglik](plots/loglik.png)" in text
    assert "## Failed cells" in text and "out of memory: could not allocate" in text
    assert "4 of 5 finished, 1 failed, 0 not run" in text
    assert "lower is better" in text
    summary = text.split("## Summary: each task's primary metric")[1].split("## loglik")[0]
    assert "loglik bits_per_byte" in summary and "mc acc" in summary and "0.65 ± 0.05" in summary


def test_csv_and_json(grid_dir):
    text, _ = render(grid_dir, "csv")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["task"] for r in rows].count("loglik") == 4 and rows[-1]["task"] == "(failed)"
    data = json.loads(render(grid_dir, "json")[0])
    assert data["tables"]["mc"]["primary_metric"] == "acc"
    assert len(data["tables"]["mc"]["rows"]) == 4 and data["failed"][0]["reason"].startswith("out of memory")


def test_missing_cells_and_bad_folder(grid_dir, tmp_path_factory):
    result_path(grid_dir, expand_cells(parse_spec(SPEC))[0].cell_id).unlink()
    text, _ = render(grid_dir, "md")
    assert "3 of 5 finished, 1 failed, 1 not run" in text
    with pytest.raises(UserError, match="no readable grid.json"):
        render(tmp_path_factory.mktemp("empty"), "md")


def test_other_spec_in_same_folder_is_refused(grid_dir):
    spec = parse_spec({**SPEC, "sparsities": [0.7]})
    with pytest.raises(UserError, match="different grid spec"):
        write_grid_file(grid_dir, spec, expand_cells(spec))
    # display-only changes are accepted and recorded
    spec = parse_spec({**SPEC, "name": "renamed", "tasks": [{"name": "loglik"}, {"name": "mc", "metrics": ["acc"]}]})
    write_grid_file(grid_dir, spec, expand_cells(spec))
    assert load_grid(grid_dir).spec["name"] == "renamed"


def test_agreement_columns_error_reports_and_measures_plot(grid_dir):
    """KL / top-1 columns and the measures plot from the cell files; an error report per pruned cell of a
    generation task, linked from its table, from the cells' logged samples."""
    grid = load_grid(grid_dir)
    for kl, result in zip((0.0, 0.5, 0.9, 0.3), grid.ok()):
        result.measures["agreement"] = {"kl": kl, "top1_agreement": 1 - kl / 2, "positions": 100, "top_k": 8,
                               "reference": {"dtype": "float32", "device": "cpu", "file": "x"}}
        result.metrics["gen"] = {"rouge1": 0.5 - kl / 4, "bertscore_f1": 0.9 - kl / 4, "repeated_4gram": kl}
        result.higher_is_better["gen"] = {"rouge1": True, "bertscore_f1": True, "repeated_4gram": False}
        write_result(grid_dir, result)
        output = "The bill funds rural water." if kl == 0 else "the bill the bill the bill the bill"
        sample = {"doc_id": 0, "doc_hash": "h0", "target": "The bill funds rural water systems.", "filter": "none",
                  "filtered_resps": [output], "metrics": ["rouge1"], "rouge1": 0.5 - kl / 4,
                  "arguments": {"gen_args_0": {"arg_0": "Summarize: rural water grants.", "arg_1": {}}}}
        folder = grid_dir / "samples" / result.cell_id
        folder.mkdir(parents=True)
        (folder / "samples_gen.jsonl").write_text(json.dumps(sample) + "\n", encoding="utf-8")
    plots = make_plots(load_grid(grid_dir))
    assert "measures" in plots and plots["measures"].stat().st_size > 1000
    text, _ = render(grid_dir, "md", plots)
    summary = text.split("## Summary: each task's primary metric")[1].split("## loglik")[0]
    assert "KL vs dense" in summary and "gen bertscore_f1" in summary and "gen repeated_4gram" in summary
    assert "**Agreement**: `KL vs dense` = KL(dense || cell)" in text and "![measures](plots/measures.png)" in text
    gen_table = text.split("## gen")[1]
    reports = sorted((grid_dir / "reports").glob("*/gen.md"))
    assert len(reports) == 3 and gen_table.count("[report](reports/") == 3
    assert "| dense " in gen_table and "errors" in gen_table.splitlines()[4]
    assert "### doc 0: rouge1 A 0.500" in reports[0].read_text(encoding="utf-8")


def test_partial_cell_renders_what_exists_and_marks_failed_phases(grid_dir):
    """A cell whose evaluate and latency phases failed: its size and perplexity still show, the failed
    phases are marked in place and listed with their reasons; older records (no `phases`) render as before."""
    grid = load_grid(grid_dir)
    wanda = next(c for c in expand_cells(parse_spec(SPEC)) if (c.method_label, c.structure_label) == ("wanda", "2:4"))
    record = {key: value for key, value in fake_record(wanda, 1.2, 0.6).items()
              if key not in ("metrics", "higher_is_better", "evaluations", "latency")}
    record.update(status="partial", reason="evaluate: boom; latency: out of memory", perplexity={"perplexity": 41.5},
                  phases={"prune": {"status": "ok"}, "load": {"status": "ok"},
                          "evaluate": {"status": "failed", "reason": "RuntimeError: boom"},
                          "perplexity": {"status": "ok"}, "size": {"status": "ok"},
                          "latency": {"status": "failed", "reason": "out of memory: CUDA"}})
    write_json_atomic(result_path(grid_dir, wanda.cell_id), record)
    text, _ = render(grid_dir, "md")
    assert "4 of 5 finished, 1 with a failed phase (shown, marked `failed (!)`), 0 failed, 0 not run" in text
    summary = text.split("## Summary")[1].split("## loglik")[0]
    row = next(line for line in summary.splitlines() if "2:4" in line and "wanda" in line)
    assert row.count("failed (!)") == 3 and "41.5" in row and "2.0" in row  # 2 tasks + ms/forward; ppl, size
    failures = text.split("## Failed cells and phases")[1]
    assert "| evaluate |" in failures and "RuntimeError: boom" in failures and "out of memory: CUDA" in failures
    assert len(task_rows(load_grid(grid_dir), "mc")[0]) == len(task_rows(grid, "mc")[0])  # no metrics: no row
    assert make_plots(load_grid(grid_dir))  # the plots skip what the cell lacks
