"""Leaderboard cells as a Slurm job array, through submitit: one array task per group of cells that share a
pruned model (the groups of `spec.shard_cells`), each running its group with `runner.run_grid` into OUT.

Submission (`sparse-bench leaderboard run SPEC --out OUT --executor slurm`, see `submit_grid`):
    1. `sbatch` must be on PATH and the partition must exist (`sinfo`);
    2. groups are submitted only if one of their cells is neither done nor queued or running (status.py);
    3. OUT/slurm/submission_TOKEN.json is written, then one array is submitted through submitit (its scripts,
       pickles and logs in OUT/slurm/), then OUT/jobs/CELL_ID.json records each cell's array task and log.
An array task (`run_array_task`, on a compute node) first reads the submission marker: if it is missing there,
OUT is not on a filesystem the nodes share, and the task stops. Otherwise it writes
OUT/slurm/started_JOB.json (read back by status.py on the submitting host) and runs its cells.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import os
import re
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..harness_ext.errors import UserError
from ..harness_ext.io import write_json_atomic
from .cells import Cell, pruned_model_groups, shard_cells
from .spec import GridSpec
from .store import SLURM, job_file, subfolder, utc_now

QUEUED, RUNNING = "queued", "running"
# squeue's job states (%T) while a task still holds its cells; any other state has left the queue.
QUEUE_STATES = {"PENDING": QUEUED, "REQUEUED": QUEUED, "REQUEUE_HOLD": QUEUED, "REQUEUE_FED": QUEUED,
                "RESV_DEL_HOLD": QUEUED, "CONFIGURING": RUNNING, "RUNNING": RUNNING, "COMPLETING": RUNNING,
                "SUSPENDED": RUNNING, "STAGE_OUT": RUNNING, "SIGNALING": RUNNING, "RESIZING": RUNNING,
                "STOPPED": RUNNING}
# Lines of a task's stderr log that say why Slurm ended it (cancelled, time limit, out of memory).
END_LINE = re.compile(r"(CANCELLED|DUE TO TIME LIMIT|PREEMPTION|oom[-_ ]kill|Out Of Memory|NODE FAIL)", re.IGNORECASE)
SLURMSTEPD = re.compile(r"^slurmstepd\S*: error: \**\s*|\s*\**$")  # the frame around Slurm's reason
ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*")


@dataclass(frozen=True)
class SlurmOptions:
    """Resources of each array task. `mem_gb` in GiB, `time_min` in minutes; `array_parallelism` caps the
    tasks running at once."""

    partition: str | None = None
    gpus_per_task: int = 0
    cpus_per_task: int = 1
    mem_gb: float = 8.0
    time_min: int = 60
    array_parallelism: int = 16


@dataclass(frozen=True)
class SubmittedTask:
    """One array task: its Slurm job id (`ARRAY_TASK`), its cells and its stderr log."""

    job_id: str
    cell_ids: tuple[str, ...]
    stderr: str


# --- asking Slurm --------------------------------------------------------------------------------------------

def slurm_command(args: list[str]) -> str:
    """stdout of a Slurm client command; UserError with its first error line if it fails."""
    try:
        completed = subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise UserError(f"`{' '.join(args)}` failed ({error}); is the Slurm controller reachable?") from None
    if completed.returncode != 0:
        message = (completed.stderr.strip().splitlines() or [f"exit status {completed.returncode}"])[0]
        raise UserError(f"`{' '.join(args)}` failed: {message}; check that Slurm's controller is up (`sinfo`)")
    return completed.stdout


def check_slurm(options: SlurmOptions) -> None:
    """UserError unless `sbatch` is on PATH and the partition (if one is asked for) exists."""
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm needs Slurm's `sbatch`, which is not on PATH here; run on a machine "
                        "that submits to the cluster (a login node), or use --executor local")
    if options.partition is not None:
        partitions = sorted(set(slurm_command(["sinfo", "--noheader", "--format=%R"]).split()))
        if options.partition not in partitions:
            raise UserError(f"Slurm partition {options.partition!r} does not exist; partitions here: "
                            f"{', '.join(partitions) or 'none'} (`sinfo` lists them)")


def queue_states() -> dict[str, str] | None:
    """{job id: queued|running} for this user's jobs in Slurm's queue, one entry per array task (`123_4`);
    None if `squeue` is missing or the controller does not answer."""
    if shutil.which("squeue") is None:
        return None
    try:
        output = slurm_command(["squeue", f"--user={getpass.getuser()}", "--noheader", "--array", "--format=%i|%T"])
    except UserError:
        return None
    states = {}
    for line in output.splitlines():
        job_id, _, state = line.strip().partition("|")
        if state in QUEUE_STATES:
            states[job_id] = QUEUE_STATES[state]
    return states


# --- markers in OUT ------------------------------------------------------------------------------------------

def submission_marker(out_dir: Path, token: str) -> Path:
    return subfolder(out_dir, SLURM) / f"submission_{token}.json"


def started_marker(out_dir: Path, job_id: str) -> Path:
    return subfolder(out_dir, SLURM) / f"started_{job_id}.json"


def task_end_reason(out_dir: Path, job: dict[str, Any]) -> str:
    """Why a Slurm task that left the queue wrote no result for its cell (one line): Slurm's own reason from
    the task's log (cancelled, time limit, out of memory), else the shared-filesystem diagnosis when the task
    never wrote its start marker into OUT, else the task's last Python error."""
    job_id, log = job["job_id"], job.get("stderr", "")
    ended, error = log_reasons(Path(log)) if log else (None, None)
    if ended:
        return f"Slurm task {job_id} ended without a result: {ended}"
    if not started_marker(out_dir, job_id).is_file():
        return (f"Slurm task {job_id} ended without writing its start marker into {out_dir}: the folder is not "
                "on a filesystem the compute nodes share with this host, or the task failed before starting "
                f"({error or f'its log: {log}'})")
    return f"Slurm task {job_id} ended without a result: {error or f'no reason in its log {log}'}"


def log_reasons(log: Path) -> tuple[str | None, str | None]:
    """(the last line of a task's stderr log saying why Slurm ended it, its last Python error line)."""
    try:
        lines = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError:
        return None, None
    ended = [line for line in lines if line.startswith("slurmstepd") and END_LINE.search(line)]
    errors = [line for line in lines if ERROR_LINE.match(line)]
    return (SLURMSTEPD.sub("", ended[-1]) if ended else None), (errors[-1] if errors else None)


# --- submitting ----------------------------------------------------------------------------------------------

def groups_to_submit(cells: list[Cell], wanted: set[str]) -> list[tuple[int, int]]:
    """Shards (i, N) of the pruned-model groups, N = the number of groups, holding a cell in `wanted`."""
    groups = pruned_model_groups(cells)
    return [(i, len(groups)) for i, group in enumerate(groups) if any(c.cell_id in wanted for c in group)]


def submit_grid(spec: GridSpec, out_dir: Path, cells: list[Cell], wanted: set[str], options: SlurmOptions,
                cache_root: Path | None, retry_failed: bool) -> list[SubmittedTask]:
    """Submit one array task per group of `cells` holding a cell id in `wanted`; record each cell's job."""
    import submitit

    shards = groups_to_submit(cells, wanted)
    if not shards:
        return []
    out_dir = Path(out_dir).resolve()
    token = uuid.uuid4().hex
    write_json_atomic(submission_marker(out_dir, token), {"host": socket.gethostname(), "submitted": utc_now()})
    executor = submitit.AutoExecutor(folder=subfolder(out_dir, SLURM), cluster="slurm")
    executor.update_parameters(
        name=f"sparse-bench-{spec.name}", timeout_min=options.time_min, mem_gb=options.mem_gb,
        cpus_per_task=options.cpus_per_task, slurm_partition=options.partition,
        slurm_array_parallelism=options.array_parallelism,
        **({"slurm_gpus_per_task": options.gpus_per_task} if options.gpus_per_task else {}))
    count = len(shards)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):  # submitit also prints sbatch's stderr: keep one line
            jobs = executor.map_array(run_array_task, [spec] * count, [out_dir] * count, shards,
                                      [cache_root] * count, [retry_failed] * count, [token] * count,
                                      [options.cpus_per_task] * count)
    except submitit.core.utils.FailedJobError as error:
        submission_marker(out_dir, token).unlink(missing_ok=True)
        first = (str(error).strip().splitlines() or ["no message"])[0]
        raise UserError(f"sbatch refused the job array: {first}; fix the Slurm options (--partition, --mem, "
                        "--time, --gpus-per-task) to what the cluster allows") from None
    submitted = []
    for job, shard in zip(jobs, shards):
        task = SubmittedTask(job.job_id, tuple(c.cell_id for c in shard_cells(cells, *shard)), str(job.paths.stderr))
        for cell_id in task.cell_ids:
            write_json_atomic(job_file(out_dir, cell_id), {
                "executor": "slurm", "job_id": task.job_id, "shard": list(shard), "stderr": task.stderr,
                "stdout": str(job.paths.stdout), "submitted": utc_now(), "token": token})
        submitted.append(task)
    return submitted


def run_array_task(spec: GridSpec, out_dir: Path, shard: tuple[int, int], cache_root: Path | None,
                   retry_failed: bool, token: str, threads: int) -> dict[str, list[str]]:
    """What one array task runs on its node: the shared-filesystem check, then its cells (`run_grid`)."""
    import torch

    from .runner import run_grid

    host = socket.gethostname()
    if not submission_marker(out_dir, token).is_file():
        raise UserError(f"{out_dir} is not on a filesystem that node {host} shares with the submitting host (the "
                        "marker written at submission is missing here); give --out a folder on a shared filesystem")
    job_id = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "?"))
    if "SLURM_ARRAY_TASK_ID" in os.environ:
        job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    write_json_atomic(started_marker(out_dir, job_id), {"host": host, "pid": os.getpid(), "started": utc_now()})
    torch.set_num_threads(threads)
    summary = run_grid(spec, out_dir, shard, cache_root, retry_failed, progress=False)
    return {"ok": summary.ok, "partial": summary.partial, "failed": summary.failed, "done": summary.done}


__all__ = [
    "QUEUED",
    "RUNNING",
    "SlurmOptions",
    "SubmittedTask",
    "check_slurm",
    "groups_to_submit",
    "log_reasons",
    "queue_states",
    "run_array_task",
    "submit_grid",
    "task_end_reason",
]
