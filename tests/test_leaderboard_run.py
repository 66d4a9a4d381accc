"""The leaderboard runner end to end on a tiny llama and a tiny local lm-eval task: a 2 x 2 grid, resume,
the pruned-model cache, failed cells, and a run killed with SIGKILL mid-grid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny_tasks import TASK_NAME, write_tiny_choice_task

from sparse_bench.leaderboards.cells import expand_cells
from sparse_bench.leaderboards.measures import MEASURES
from sparse_bench.leaderboards.render import load_grid, render, task_rows
from sparse_bench.leaderboards.runner import NOT_RUN_YET, run_grid
from sparse_bench.leaderboards.spec_parser import load_spec
from sparse_bench.leaderboards.store import result_path


def read_record(path):
    """A cell's result file as written (format sparse-bench-leaderboard-cell/1)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))

SECOND_TASK = f"{TASK_NAME}_b"

QUALITY_COLUMNS = ("rank", "model", "method", "structure", "target", "measured", "nonzero (M)", "dtype", "acc",
                   "Δ acc vs dense")


def write_tasks(folder: Path) -> Path:
    """Two tiny multiple-choice tasks (two limits: two simple_evaluate calls per cell)."""
    write_tiny_choice_task(folder)
    text = (folder / f"{TASK_NAME}.yaml").read_text()
    (folder / f"{SECOND_TASK}.yaml").write_text(text.replace(f"task: {TASK_NAME}", f"task: {SECOND_TASK}"))
    return folder


def write_spec(path: Path, models: list[str], tasks_dir: Path, **changes) -> Path:
    spec = {"name": "tiny", "models": models, "methods": ["magnitude", "wanda"], "sparsities": [0.5, 0.75],
            "structures": ["unstructured"], "dtypes": ["float32"], "include_path": str(tasks_dir),
            "tasks": [{"name": TASK_NAME, "limit": 8}, {"name": SECOND_TASK, "limit": 4}],
            "calibration": {"data": "c4", "nsamples": 4, "seqlen": 32, "seed": 0},
            "perplexity": {"data": "wikitext2", "seqlen": 64, "max_tokens": 256},
            "latency": {"batch": 1, "seqlen": 16, "new_tokens": 4, "repeats": 2},
            "batch_size": 4, "bootstrap_iters": 100, "log_samples": True, **changes}
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory, tiny_llama) -> Path:
    root = tmp_path_factory.mktemp("tiny_grid")
    return write_spec(root / "grid.yaml", [str(tiny_llama)], write_tasks(root / "tasks"))


@pytest.fixture(scope="module")
def finished_grid(tiny_spec, tmp_path_factory) -> tuple[Path, Path]:
    """(out folder, cache) of one uninterrupted run of the 2 x 2 grid."""
    root = tmp_path_factory.mktemp("finished")
    summary = run_grid(load_spec(tiny_spec), root / "out", cache_root=root / "cache", progress=False)
    assert summary.failed == [] and len(summary.ok) == 5, summary
    return root / "out", root / "cache"


def quality_table(out_dir: Path) -> list[tuple]:
    return [tuple(row[c] for c in QUALITY_COLUMNS) for row in task_rows(load_grid(out_dir), TASK_NAME)[0]]


def test_two_by_two_grid_end_to_end(finished_grid, tiny_spec):
    out_dir, _ = finished_grid
    cells = expand_cells(load_spec(tiny_spec))
    records = {c.cell_id: read_record(result_path(out_dir, c.cell_id)) for c in cells}
    assert all(r["status"] == "ok" for r in records.values())
    for cell in cells:
        record = records[cell.cell_id]
        measured = record["sparsity"]["overall_sparsity"]
        assert measured == pytest.approx(cell.sparsity or 0.0, abs=0.01), cell.cell_id
        assert set(record["metrics"]) == {TASK_NAME, SECOND_TASK}
        metrics = record["metrics"][TASK_NAME]
        assert 0.0 <= metrics["acc"] <= 1.0 and "acc_stderr" in metrics
        # one lm-eval call per task (no batch padded to another task's longest request), each limited to its own
        # first documents
        assert [e["limits"] for e in record["evaluations"]] == [{TASK_NAME: 8}, {SECOND_TASK: 4}]
        second = (out_dir / "samples" / cell.cell_id / f"samples_{SECOND_TASK}.jsonl").read_text().splitlines()
        assert [json.loads(line)["doc_id"] for line in second] == list(range(4))
        assert record["perplexity"]["tokens"] == 256 and record["perplexity"]["perplexity"] > 1
        assert record["latency"]["forward_ms"] > 0 and record["latency"]["torch_threads"] >= 1
        assert record["size"]["compressed_bytes"] > 0
        assert (record["prune"] is None) == cell.is_dense
        samples = (out_dir / "samples" / cell.cell_id / f"samples_{TASK_NAME}.jsonl").read_text().splitlines()
        assert [json.loads(line)["doc_id"] for line in samples] == list(range(8))
    text, _ = render(out_dir, "md")
    assert f"## {TASK_NAME}" in text and f"## {SECOND_TASK}" in text and "5 of 5 finished" in text
    assert [row[2] for row in quality_table(out_dir)] == ["dense", "magnitude", "magnitude", "wanda", "wanda"]


def test_agreement_with_dense_and_answer_flips(finished_grid):
    out_dir, cache = finished_grid
    text, _ = render(out_dir, "md")
    grid = load_grid(out_dir).with_comparisons()
    dense = next(r for r in grid.ok() if r.cell.is_dense)
    assert dense.get("agreement")["kl"] == pytest.approx(0.0, abs=1e-9) and dense.get("agreement")["top1_agreement"] == 1.0
    assert dense.get("agreement")["positions"] == 4 * 63 and dense.get("agreement")["reference"]["dtype"] == "float32"
    pruned = [r for r in grid.ok() if not r.cell.is_dense]
    assert all(r.get("agreement")["kl"] > 0 and 0 <= r.get("agreement")["top1_agreement"] <= 1 for r in pruned)
    assert len(list((cache / "dense-references").glob("*.safetensors"))) == 1  # built once, by the dense cell
    for result in pruned:  # accuracy moves by exactly the net flips
        flips = grid.comparisons[(result.cell_id, TASK_NAME)]["flips"]
        net = (flips["wrong_to_right"] - flips["right_to_wrong"]) / 8
        assert result.metrics[TASK_NAME]["acc"] - dense.metrics[TASK_NAME]["acc"] == pytest.approx(net)
    assert "KL vs dense" in text and "top-1 agree" in text
    assert "flips r→w / w→r" in text and "Agreement**: `KL vs dense` = KL(dense || cell)" in text


def test_rerun_skips_and_cache_avoids_pruning_again(finished_grid, tiny_spec, tmp_path):
    out_dir, cache = finished_grid
    before = {p.name: p.read_bytes() for p in (out_dir / "cells").glob("*.json")}
    summary = run_grid(load_spec(tiny_spec), out_dir, cache_root=cache, progress=False)
    assert len(summary.done) == 5 and summary.ok == [] and summary.failed == []
    assert {p.name: p.read_bytes() for p in (out_dir / "cells").glob("*.json")} == before
    # another grid over the same pruned models (other tasks, no latency) prunes nothing again
    spec = load_spec(tiny_spec)
    other = write_spec(tmp_path / "other.yaml", list(spec.models), Path(spec.include_path), methods=["wanda"],
                       sparsities=[0.75], tasks=[{"name": SECOND_TASK, "limit": 2}], latency=None,
                       perplexity=None)
    summary = run_grid(load_spec(other), tmp_path / "again", cache_root=cache, progress=False)
    assert len(summary.ok) == 2
    pruned = next(c for c in expand_cells(load_spec(other)) if not c.is_dense)
    again = read_record(result_path(tmp_path / "again", pruned.cell_id))
    assert again["prune_cached"] is True
    first = read_record(next((out_dir / "cells").glob("*wanda_0.75*.json")))
    assert again["prune"] == first["prune"] and again["sparsity"]["layers"] == first["sparsity"]["layers"]


def test_failed_cell_is_recorded_and_grid_goes_on(tiny_spec, tiny_llama, tmp_path):
    spec_path = write_spec(tmp_path / "grid.yaml", [str(tiny_llama), str(tmp_path / "no_such_model")],
                           Path(load_spec(tiny_spec).include_path), methods=["magnitude"], sparsities=[0.5],
                           tasks=[{"name": TASK_NAME, "limit": 2}], latency=None,
                           perplexity=None)
    summary = run_grid(load_spec(spec_path), tmp_path / "out", cache_root=tmp_path / "cache", progress=False)
    assert len(summary.ok) == 2 and len(summary.failed) == 2
    failed = [read_record(result_path(tmp_path / "out", cell_id)) for cell_id in summary.failed]
    assert all("no_such_model" in r["reason"] and "does not exist" in r["reason"] for r in failed)
    assert all("\n" not in r["reason"] for r in failed)
    text, _ = render(tmp_path / "out", "md")
    assert "## Failed cells" in text and "2 of 4 finished, 2 failed" in text


def test_killed_run_resumes_to_the_same_table(finished_grid, tiny_spec, tmp_path):
    """SIGKILL while a cell is in flight: no corrupt file, finished cells kept, the killed cell's finished phases
    kept (its file is rewritten after every phase), same table after resuming."""
    out_dir, cache = tmp_path / "out", tmp_path / "cache"
    command = [sys.executable, "-m", "sparse_bench.harness_ext.cli", "leaderboard", "run", str(tiny_spec),
               "--out", str(out_dir), "--cache", str(cache), "--no-render"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300

    def in_second_cell_or_later() -> bool:
        statuses = [json.loads(p.read_bytes())["status"] for p in (out_dir / "cells").glob("*.json")]
        return 2 <= statuses.count("ok") < len(statuses)

    while not in_second_cell_or_later():
        assert process.poll() is None, "the grid ended before it could be killed inside a cell"
        assert time.monotonic() < deadline, "no cell finished in time"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    files = {p.name: p.read_bytes() for p in (out_dir / "cells").glob("*.json")}
    before = {name: json.loads(content) for name, content in files.items()}  # complete files only
    done = sorted(name for name, record in before.items() if record["status"] == "ok")
    stopped = {name: record for name, record in before.items() if record["status"] != "ok"}
    assert 2 <= len(done) < 5 and stopped
    assert all(NOT_RUN_YET in record["reason"] for record in stopped.values())
    summary = run_grid(load_spec(tiny_spec), out_dir, cache_root=cache, progress=False, retry_failed=False)
    assert sorted(f"{cell_id}.json" for cell_id in summary.done) == done  # a stopped cell runs even so
    assert len(summary.ok) == 5 - len(done) and summary.failed == summary.partial == []
    assert all((out_dir / "cells" / name).read_bytes() == files[name] for name in done)
    for name, record in stopped.items():
        after = json.loads((out_dir / "cells" / name).read_bytes())
        for phase, state in record["phases"].items():
            if phase in MEASURES and state["status"] == "ok":
                assert after["phases"][phase] == state, (name, phase)  # kept, not run again
    assert quality_table(out_dir) == quality_table(finished_grid[0])


def test_failed_perplexity_keeps_evaluation_and_a_rerun_fills_only_that_column(tiny_spec, tiny_llama, tmp_path,
                                                                               monkeypatch):
    """`leaderboard run` offline (empty Hugging Face cache) without SPARSE_BENCH_DATA_DIR: every cell keeps its
    lm-eval results and marks perplexity failed with its reason; a later run with the data runs only the
    perplexity phase of each cell."""
    spec_path = write_spec(tmp_path / "grid.yaml", [str(tiny_llama)], Path(load_spec(tiny_spec).include_path),
                           methods=["magnitude"], sparsities=[0.5], tasks=[{"name": TASK_NAME, "limit": 4}],
                           latency=None, log_samples=False)
    out, cache = tmp_path / "out", tmp_path / "cache"
    offline = {key: value for key, value in os.environ.items() if key != "SPARSE_BENCH_DATA_DIR"}
    offline.update(HF_HOME=str(tmp_path / "empty_hf_home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = [sys.executable, "-m", "sparse_bench.harness_ext.cli", "leaderboard", "run", str(spec_path),
               "--out", str(out), "--cache", str(cache), "--no-render"]
    result = subprocess.run(command, capture_output=True, text=True, env=offline, timeout=600, check=False)
    assert result.returncode == 1, result.stderr[-3000:]  # a phase failed
    assert "2 kept their results but a phase failed, 0 failed" in result.stdout
    first = {p.name: json.loads(p.read_text()) for p in (out / "cells").glob("*.json")}
    for record in first.values():
        assert record["status"] == "partial" and 0 <= record["metrics"][TASK_NAME]["acc"] <= 1
        assert record["phases"]["perplexity"]["status"] == "failed" and "perplexity" not in record
        assert "cannot load WikiText-2" in record["phases"]["perplexity"]["reason"]
        assert record["reason"].startswith("perplexity: cannot load WikiText-2")
        assert all(record["phases"][p]["status"] == "ok" for p in ("prune", "load", "evaluate", "latency", "size"))
    text, _ = render(out, "md")
    assert "2 with a failed phase" in text and "failed (!)" in text and "| perplexity |" in text
    assert [row["acc"] != "-" for row in task_rows(load_grid(out), TASK_NAME)[0]] == [True, True]

    timed_phases = []
    monkeypatch.setattr("sparse_bench.leaderboards.runner.run_phase", _recording(timed_phases))
    summary = run_grid(load_spec(spec_path), out, cache_root=cache, progress=False)
    assert len(summary.ok) == 2 and summary.partial == []
    assert timed_phases == ["prune", "load", "perplexity"] * 2  # the pruned model comes from the cache
    for name, record in ((p.name, json.loads(p.read_text())) for p in (out / "cells").glob("*.json")):
        assert record["status"] == "ok" and record["perplexity"]["perplexity"] > 1
        for key in ("evaluations", "metrics", "size", "sparsity"):
            assert record[key] == first[name][key], key
    text, _ = render(out, "md")
    assert "2 of 2 finished" in text and "failed (!)" not in text


def _recording(names: list[str]):
    """runner.run_phase that also notes the name of each phase it runs."""
    from sparse_bench.leaderboards import runner

    original = runner.run_phase

    def run_phase(record, name, work):
        names.append(name)
        return original(record, name, work)

    return run_phase


def test_document_indices_follow_lm_evals_limit():
    from sparse_bench.leaderboards.evaluation import document_indices

    assert document_indices(None, 10) is None
    assert document_indices(3, 10) == [0, 1, 2]
    assert document_indices(50, 10) == list(range(10))  # more than there are: all of them
    assert document_indices(0.25, 10) == [0, 1, 2]  # a fraction rounds up, as lm-eval's limit does
