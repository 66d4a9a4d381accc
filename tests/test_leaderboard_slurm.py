"""Leaderboard cells on Slurm: a real one-node Slurm (started by scripts/slurm_local.sh in .ci/run) runs a
4-cell tiny grid as a job array, and a cancelled task is re-run alone; without Slurm those two tests are
skipped with the reason. The rest runs everywhere: the pruned-model cache under concurrent misses, the
one-line errors (no sbatch, unknown partition, a folder the nodes do not share), status from fake Slurm
commands, and the partial-table mark."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_leaderboard_run import quality_table, write_spec, write_tasks

from sparse_bench.harness_ext.cli import main
from sparse_bench.harness_ext.errors import UserError
from sparse_bench.leaderboards import cache as cache_module
from sparse_bench.leaderboards.cache import (
    PrunedModelCache,
    model_fingerprint,
    pruned_checkpoint,
)
from sparse_bench.leaderboards.cells import expand_cells
from sparse_bench.leaderboards.executor import check_tasks_started
from sparse_bench.leaderboards.render import render
from sparse_bench.leaderboards.slurm import (
    SlurmOptions,
    SubmittedTask,
    check_slurm,
    groups_to_submit,
    run_array_task,
    started_marker,
)
from sparse_bench.leaderboards.spec_parser import load_spec
from sparse_bench.leaderboards.status import DONE, FAILED, QUEUED, RUNNING, cell_states
from sparse_bench.leaderboards.store import RESULT_FORMAT, write_grid_file

SLURM_OPTIONS = ["--executor", "slurm", "--mem", "2", "--time", "10", "--cpus-per-task", "1"]


@pytest.fixture(scope="module")
def grid_spec(tmp_path_factory, tiny_llama) -> Path:
    """4 cells, 4 pruned-model groups: dense, magnitude, wanda and sparsegpt at 50 % (no latency: each Slurm task
    already spends most of its time starting Python)."""
    root = tmp_path_factory.mktemp("slurm_grid")
    return write_spec(root / "grid.yaml", [str(tiny_llama)], write_tasks(root / "tasks"),
                      methods=["magnitude", "wanda", "sparsegpt"], sparsities=[0.5], latency=None)


def fake_slurm(folder: Path, partitions: str = "debug", queue: str = "") -> dict[str, str]:
    """Stand-ins for sbatch, sinfo and squeue on PATH (sinfo lists `partitions`, squeue prints `queue`)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, output in (("sbatch", "Submitted batch job 77"), ("sinfo", partitions), ("squeue", queue)):
        script = folder / name
        script.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n")
        script.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


# --- everywhere ----------------------------------------------------------------------------------------------

def test_concurrent_cache_misses_prune_once(grid_spec, tiny_llama, tmp_path, monkeypatch):
    """Two tasks missing the same entry at once: one prunes and writes it, the other waits and reads it."""
    spec = load_spec(grid_spec)
    cell = next(c for c in expand_cells(spec) if c.method_label == "magnitude")
    pruned, real_prune_into = [], cache_module.prune_into

    def slow_prune_into(*args, **kwargs):
        pruned.append(threading.get_ident())
        time.sleep(1.0)  # both tasks have looked the entry up and missed before either writes it
        return real_prune_into(*args, **kwargs)

    monkeypatch.setattr(cache_module, "prune_into", slow_prune_into)
    cache, fingerprint, results = PrunedModelCache(tmp_path / "cache"), model_fingerprint(str(tiny_llama)), []
    tasks = [threading.Thread(target=lambda: results.append(
        pruned_checkpoint(cell, spec, str(tiny_llama), fingerprint, cache))) for _ in range(2)]
    for task in tasks:
        task.start()
    for task in tasks:
        task.join()
    assert len(pruned) == 1
    assert sorted(cached for _, _, cached in results) == [False, True]
    assert results[0][0] == results[1][0] and results[0][1] == results[1][1]
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == [results[0][0].name]


def test_groups_keep_a_pruned_model_in_one_task(grid_spec, tmp_path):
    spec = write_spec(tmp_path / "sweep.yaml", list(load_spec(grid_spec).models),
                      Path(load_spec(grid_spec).include_path), methods=["magnitude"], sparsities=[0.5],
                      dtypes=["float32", "bfloat16"])
    cells = expand_cells(load_spec(spec))
    assert len(cells) == 4 and groups_to_submit(cells, {c.cell_id for c in cells}) == [(0, 2), (1, 2)]
    bf16_magnitude = next(c for c in cells if c.dtype == "bfloat16" and not c.is_dense)
    assert groups_to_submit(cells, {bf16_magnitude.cell_id}) == [(1, 2)]
    assert groups_to_submit(cells, set()) == []


@pytest.mark.parametrize("args, message", [
    (["--executor", "slurm"], "needs Slurm's `sbatch`, which is not on PATH"),
    (["--executor", "slurm", "--partition", "gpu"], "needs Slurm's `sbatch`"),
    (["--partition", "gpu"], "--partition applies to --executor slurm only"),
    (["--executor", "slurm", "--shard", "1/2"], "--shard applies to --executor local"),
])
def test_bad_executor_options_are_one_line_errors(grid_spec, tmp_path, args, message):
    env = {"PATH": str(Path(sys.executable).parent)}  # no Slurm commands on PATH
    if "--shard" in args:
        env = fake_slurm(tmp_path / "bin")
    result = CliRunner().invoke(main, ["leaderboard", "run", str(grid_spec), "--out", str(tmp_path / "out"),
                                       *args], env=env)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def test_unknown_partition_names_the_existing_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", partitions="debug\ngpu-a100\ndebug")["PATH"])
    check_slurm(SlurmOptions(partition="gpu-a100"))
    with pytest.raises(UserError, match=r"partition 'gpu' does not exist; partitions here: debug, gpu-a100 "):
        check_slurm(SlurmOptions(partition="gpu"))


def test_folder_not_shared_with_the_nodes(grid_spec, tmp_path, monkeypatch):
    """The task side misses the submission marker; the submitting side misses the task's start marker."""
    spec, out = load_spec(grid_spec), tmp_path / "out"
    with pytest.raises(UserError, match="is not on a filesystem that node .* shares with the submitting host"):
        run_array_task(spec, out, (0, 4), tmp_path / "cache", True, "no-such-token", 1)
    cells = expand_cells(spec)
    write_grid_file(out, spec, cells)
    task = SubmittedTask("77_0", (cells[0].cell_id,), str(tmp_path / "node-local" / "77_0_0_log.err"))
    (out / "jobs").mkdir()
    (out / "jobs" / f"{cells[0].cell_id}.json").write_text(json.dumps({"job_id": task.job_id, "stderr": task.stderr}))
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", queue="")["PATH"])
    with pytest.raises(UserError, match=r"77_0 ended without writing its start marker into .*not on a filesystem "
                                        "the compute nodes share"):
        check_tasks_started(out, [task])
    state = cell_states(out, [cells[0].cell_id])[0]
    assert state.state == FAILED and "not on a filesystem the compute nodes share" in state.reason
    started_marker(out, task.job_id).parent.mkdir(parents=True, exist_ok=True)
    started_marker(out, task.job_id).write_text("{}")
    check_tasks_started(out, [task])


def grid_with_slurm_log(grid_spec, tmp_path, log_name: str, log_text: str):
    """(cells, out folder with grid.json and an empty jobs/, a Slurm task log holding `log_text`)."""
    spec, out = load_spec(grid_spec), tmp_path / "out"
    cells = expand_cells(spec)
    write_grid_file(out, spec, cells)
    log = tmp_path / log_name
    log.write_text(log_text)
    (out / "jobs").mkdir()
    return cells, out, log


def test_status_and_partial_render_from_the_queue(grid_spec, tmp_path, monkeypatch):
    """Cells held by queued/running Slurm tasks show as such, a task that left the queue with Slurm's reason
    in its log as failed with that reason, and the rendered table says it is partial."""
    cells, out, log = grid_with_slurm_log(grid_spec, tmp_path, "77_2_0_log.err", "submitit INFO - Starting\n"
                                          "slurmstepd-node7: error: *** JOB 80 ON node7 DUE TO TIME LIMIT ***\n")
    for index, cell in enumerate(cells[:3]):
        (out / "jobs" / f"{cell.cell_id}.json").write_text(json.dumps({"job_id": f"77_{index}", "stderr": str(log)}))
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", queue="77_0|PENDING\n77_1|RUNNING")["PATH"])
    states = cell_states(out, [c.cell_id for c in cells])
    assert [s.state for s in states] == [QUEUED, RUNNING, FAILED, "not run"]
    assert states[2].reason == "Slurm task 77_2 ended without a result: JOB 80 ON node7 DUE TO TIME LIMIT"
    text, _ = render(out, "md")
    assert "INCOMPLETE: 2 of 4 cells are still queued or running (Slurm job 77)" in text
    assert "0 of 4 finished, 1 failed, 1 not run, 2 still queued or running" in text
    assert "DUE TO TIME LIMIT" in text.split("## Failed cells")[1]
    result = CliRunner().invoke(main, ["leaderboard", "status", str(out)])
    assert result.exit_code == 0 and "1 queued, 1 running, 1 failed, 1 not run" in result.output


def test_local_status_from_the_running_markers(grid_spec, tmp_path):
    spec, out = load_spec(grid_spec), tmp_path / "out"
    cells = expand_cells(spec)
    write_grid_file(out, spec, cells)
    (out / "cells").mkdir(exist_ok=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for cell, pid in zip(cells[:2], (os.getpid(), dead.pid)):
        (out / "cells" / f"{cell.cell_id}.running").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    alive, killed, never = cell_states(out, [c.cell_id for c in cells[:3]])
    assert (alive.state, killed.state, never.state) == (RUNNING, FAILED, "not run")
    assert "stopped without a result" in killed.reason


def test_failed_result_older_than_the_resubmission_is_not_its_reason(grid_spec, tmp_path, monkeypatch):
    cells, out, log = grid_with_slurm_log(grid_spec, tmp_path, "90_0_0_log.err",
                                          "slurmstepd-vm: error: *** JOB 91 ON vm CANCELLED AT 2026-12-03T09:00:00 ***\n")
    (out / "cells").mkdir(exist_ok=True)
    for cell, started in zip(cells[:2], ("2026-12-03T08:00:00+00:00", "2026-12-03T09:30:00+00:00")):
        (out / "jobs" / f"{cell.cell_id}.json").write_text(json.dumps(
            {"job_id": "90_0", "stderr": str(log), "submitted": "2026-12-03T09:00:00+00:00"}))
        (out / "cells" / f"{cell.cell_id}.json").write_text(json.dumps(
            {"format": RESULT_FORMAT, "status": "failed", "reason": "out of memory", "started": started}))
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin")["PATH"])
    stale, fresh = cell_states(out, [c.cell_id for c in cells[:2]])
    assert stale.reason == "Slurm task 90_0 ended without a result: JOB 91 ON vm CANCELLED AT 2026-12-03T09:00:00"
    assert fresh.reason == "out of memory"


# --- a real Slurm ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    """Skip (with the reason) unless a Slurm controller answers and a node takes jobs."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        pytest.skip("no Slurm here (sbatch/sinfo not on PATH); .ci/run starts one with scripts/slurm_local.sh")
    probe = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=60,
                           check=False)
    states = probe.stdout.split()
    if probe.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mixed", "allocated") for s in states):
        pytest.skip(f"Slurm does not take jobs here (sinfo: {(probe.stderr or probe.stdout).strip() or 'no nodes'})")


def sparse_bench(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sparse_bench.harness_ext.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def local_table(grid_spec, tmp_path_factory) -> list[tuple]:
    """The quality table of an uninterrupted local run (1 torch thread, as each Slurm task runs)."""
    root = tmp_path_factory.mktemp("local")
    result = sparse_bench("leaderboard", "run", grid_spec, "--out", root / "out", "--cache", root / "cache",
                          "--threads", "1", "--no-render")
    assert result.returncode == 0, result.stderr[-3000:]
    return quality_table(root / "out")


@pytest.fixture(scope="module")
def slurm_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("slurm_cache")


def job_of(out: Path, cell_id: str) -> str:
    return json.loads((out / "jobs" / f"{cell_id}.json").read_text())["job_id"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_slurm_array_grid_equals_the_local_run(slurm_cluster, grid_spec, local_table, slurm_cache, tmp_path):
    out = tmp_path / "out"
    result = sparse_bench("leaderboard", "run", grid_spec, "--out", out, "--cache", slurm_cache, *SLURM_OPTIONS,
                          "--wait", "--no-render")
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "4 to run in 4 Slurm array task(s)" in result.stdout and "4 done" in result.stdout
    cell_ids = [c.cell_id for c in expand_cells(load_spec(grid_spec))]
    assert [s.state for s in cell_states(out, cell_ids)] == [DONE] * 4
    jobs = [job_of(out, cell_id) for cell_id in cell_ids]
    assert len(set(jobs)) == 4 and len({job.split("_")[0] for job in jobs}) == 1  # one array, one task per cell
    assert quality_table(out) == local_table


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cancelled_task_rerun_finishes_only_that_cell(slurm_cluster, grid_spec, local_table, slurm_cache,
                                                      tmp_path):
    out = tmp_path / "out"
    cell_ids = [c.cell_id for c in expand_cells(load_spec(grid_spec))]
    submitted = sparse_bench("leaderboard", "run", grid_spec, "--out", out, "--cache", slurm_cache,
                             *SLURM_OPTIONS)
    assert submitted.returncode == 0 and "status" in submitted.stdout, submitted.stderr[-3000:]
    victim = wait_until(lambda: next((s for s in cell_states(out, cell_ids) if s.state == RUNNING), None), 300)
    subprocess.run(["scancel", victim.job], check=True, timeout=60)
    wait_until(lambda: all(s.state in (DONE, FAILED) for s in cell_states(out, cell_ids)), 400)
    states = {s.cell_id: s for s in cell_states(out, cell_ids)}
    assert [cell_id for cell_id, s in states.items() if s.state == FAILED] == [victim.cell_id]
    assert "CANCELLED" in states[victim.cell_id].reason
    status = CliRunner().invoke(main, ["leaderboard", "status", str(out)])
    assert "3 done, 1 failed" in status.output and victim.job in status.output
    others = {cell_id: (out / "cells" / f"{cell_id}.json").read_bytes() for cell_id in cell_ids
              if cell_id != victim.cell_id}
    jobs_before = {cell_id: job_of(out, cell_id) for cell_id in cell_ids}
    rerun = sparse_bench("leaderboard", "run", grid_spec, "--out", out, "--cache", slurm_cache, *SLURM_OPTIONS,
                         "--wait", "--no-render")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    assert "1 to run in 1 Slurm array task(s)" in rerun.stdout
    assert all((out / "cells" / f"{cell_id}.json").read_bytes() == data for cell_id, data in others.items())
    assert {c: job_of(out, c) for c in others} == {c: jobs_before[c] for c in others}
    assert job_of(out, victim.cell_id) != jobs_before[victim.cell_id]
    assert quality_table(out) == local_table


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--partition", "no-such-partition"], "Slurm partition 'no-such-partition' does not exist; partitions here:"),
    (["--mem", "100000000"], "sbatch refused the job array: sbatch: error: Memory specification"),
])
def test_real_slurm_refusals_are_one_line_errors(slurm_cluster, grid_spec, tmp_path, args, message):
    result = CliRunner().invoke(main, ["leaderboard", "run", str(grid_spec), "--out", str(tmp_path / "out"),
                                       "--executor", "slurm", *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert not (tmp_path / "out" / "jobs").exists()
    assert not list((tmp_path / "out").glob("slurm/submission_*.json"))


def wait_until(condition, timeout_s: float):
    """Poll `condition` every 0.5 s until it returns something true; returns it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"condition not met within {timeout_s} s")
