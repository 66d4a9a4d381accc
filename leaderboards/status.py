"""Where each cell of an output folder stands: done, queued, running, partial, failed or not run.

Read from the folder alone plus, for cells handed to Slurm, the scheduler's queue (`squeue`):
    OUT/cells/CELL_ID.json      the result (status ok, partial (a phase failed) or failed, with the reason)
    OUT/cells/CELL_ID.running   a process is inside the cell (pid and host; left behind if it was killed)
    OUT/jobs/CELL_ID.json       the Slurm array task the cell was last submitted to (see slurm.py)

A Slurm task that left the queue without writing the cell's result failed; its reason comes from the task's
log (cancelled, out of memory, time limit) or from the markers it did or did not write into OUT.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from .slurm import QUEUED, RUNNING, queue_states, task_end_reason
from .store import job_file, read_result, running_marker

DONE, PARTIAL, FAILED, NOT_RUN, SUBMITTED = "done", "partial", "failed", "not run", "submitted"
STATES = (DONE, QUEUED, RUNNING, PARTIAL, FAILED, SUBMITTED, NOT_RUN)


@dataclass(frozen=True)
class CellState:
    """One cell's state; `job` is its Slurm job id (`ARRAY_TASK`, e.g. `123_4`) when it was submitted."""

    cell_id: str
    state: str
    reason: str | None = None
    job: str | None = None


def read_job(out_dir: Path, cell_id: str) -> dict[str, Any] | None:
    """The Slurm job record of a cell, or None."""
    try:
        return json.loads(job_file(out_dir, cell_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def cell_states(out_dir: Path, cell_ids: list[str]) -> list[CellState]:
    """The state of each of `cell_ids` in OUT, in that order. Asks `squeue` once, if a cell went to Slurm."""
    out_dir = Path(out_dir)
    jobs = {cell_id: read_job(out_dir, cell_id) for cell_id in cell_ids}
    queue = queue_states() if any(jobs.values()) else {}
    return [_state(out_dir, cell_id, jobs[cell_id], queue) for cell_id in cell_ids]


def _state(out_dir: Path, cell_id: str, job: dict[str, Any] | None, queue: dict[str, str] | None) -> CellState:
    result = read_result(out_dir, cell_id)
    job_id = job["job_id"] if job else None
    if result and result.status == "ok":
        return CellState(cell_id, DONE, None, job_id)
    if job and queue is None:
        return CellState(cell_id, SUBMITTED, "squeue is not available here: state unknown", job_id)
    if job and job_id in queue:
        return CellState(cell_id, queue[job_id], None, job_id)
    if result and not (job and result.started < job.get("submitted", "")):
        if not job and (local := _local_state(out_dir, cell_id)).state == RUNNING:
            return local  # a local run rewrites the cell's file after each phase: not finished yet
        return CellState(cell_id, PARTIAL if result.status == "partial" else FAILED, result.reason, job_id)
    if job:  # no result, or one older than the last submission: the task ended without writing one
        return CellState(cell_id, FAILED, task_end_reason(out_dir, job), job_id)
    return _local_state(out_dir, cell_id)


def _local_state(out_dir: Path, cell_id: str) -> CellState:
    """A cell no Slurm job holds: running (its marker names a live process of this host), interrupted, or not
    run."""
    try:
        marker = json.loads(running_marker(out_dir, cell_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return CellState(cell_id, NOT_RUN)
    pid = marker.get("pid")
    if marker.get("host") == socket.gethostname() and isinstance(pid, int) and psutil.pid_exists(pid):
        return CellState(cell_id, RUNNING, f"pid {marker['pid']} on {marker['host']}")
    return CellState(cell_id, FAILED, f"the run inside this cell (pid {marker.get('pid')} on {marker.get('host')}) "
                                      "stopped without a result: killed or out of memory?")


def counts(states: list[CellState]) -> dict[str, int]:
    """{state: number of cells} over STATES, zeros included."""
    return {name: sum(s.state == name for s in states) for name in STATES}


def in_flight(states: list[CellState]) -> list[CellState]:
    """Cells that a process or a Slurm job still holds (their results may still change the tables)."""
    return [s for s in states if s.state in (QUEUED, RUNNING, SUBMITTED)]


__all__ = [
    "DONE",
    "FAILED",
    "NOT_RUN",
    "PARTIAL",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUBMITTED",
    "CellState",
    "cell_states",
    "counts",
    "in_flight",
    "read_job",
]
