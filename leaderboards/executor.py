"""Where a grid's cells run: `local` (this process, `runner.run_grid`) or `slurm` (a job array, slurm.py).

Both write the same OUT folder, so `leaderboard status`, `render` and a re-run with either executor read what
the other wrote. A Slurm re-run submits only the cells that are neither done nor still queued or running.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..harness_ext.errors import UserError
from .cells import expand_cells
from .slurm import (
    QUEUED,
    RUNNING,
    SlurmOptions,
    SubmittedTask,
    check_slurm,
    queue_states,
    started_marker,
    submit_grid,
    task_end_reason,
)
from .spec import GridSpec
from .status import FAILED, NOT_RUN, PARTIAL, CellState, cell_states, read_job
from .store import write_grid_file

EXECUTORS = ("local", "slurm")
POLL_SECONDS = 5.0


@dataclass
class SlurmRun:
    """What `run_on_slurm` did: the tasks it submitted, and (after waiting) every cell's final state."""

    submitted: list[SubmittedTask]
    states: list[CellState]


def run_on_slurm(spec: GridSpec, out_dir: Path, options: SlurmOptions, cache_root: Path | None = None,
                 retry_failed: bool = True, wait: bool = False, say: Callable[[str], None] = print) -> SlurmRun:
    """Submit the grid's unfinished cells as one Slurm job array; with `wait`, return once they left the queue.

    Raises UserError if Slurm cannot take the array (no sbatch, unknown partition, sbatch refuses) or, when
    waiting, if no task could write into OUT (OUT is not on a filesystem the compute nodes share)."""
    check_slurm(options)
    out_dir = Path(out_dir).resolve()
    cells = expand_cells(spec)
    write_grid_file(out_dir, spec, cells)
    states = cell_states(out_dir, [c.cell_id for c in cells])
    wanted = {s.cell_id for s in states if s.state == NOT_RUN or (s.state in (FAILED, PARTIAL) and retry_failed)}
    held = [s for s in states if s.state in (QUEUED, RUNNING)]
    submitted = submit_grid(spec, out_dir, cells, wanted, options, cache_root, retry_failed)
    say(f"grid {spec.name}: {len(cells)} cells, {len(wanted)} to run in {len(submitted)} Slurm array task(s)"
        + (f" (job {submitted[0].job_id.split('_')[0]})" if submitted else "")
        + (f", {len(held)} still queued or running from an earlier submission" if held else "")
        + f"; results in {out_dir}")
    if not wait or not (submitted or held):
        return SlurmRun(submitted, states)
    wait_for({task.job_id for task in submitted} | {s.job for s in held if s.job}, say)
    if submitted:
        check_tasks_started(out_dir, submitted)
    return SlurmRun(submitted, cell_states(out_dir, [c.cell_id for c in cells]))


def wait_for(job_ids: set[str], say: Callable[[str], None], poll_s: float = POLL_SECONDS) -> None:
    """Poll `squeue` until every job has left the queue, saying how many are queued/running when it changes."""
    last = None
    while True:
        queue = queue_states()
        if queue is None:
            raise UserError("squeue stopped answering while waiting for the job array; the tasks go on: see "
                            "`sparse-bench leaderboard status OUT`")
        held = [queue[j] for j in job_ids if j in queue]
        line = (f"Slurm: {held.count(QUEUED)} task(s) queued, {held.count(RUNNING)} running, "
                f"{len(job_ids) - len(held)} ended")
        if line != last:
            say(line)
            last = line
        if not held:
            return
        time.sleep(poll_s)


def check_tasks_started(out_dir: Path, tasks: list[SubmittedTask]) -> None:
    """UserError if no task of the array wrote its start marker into OUT: OUT is not shared with the nodes."""
    if any(started_marker(out_dir, task.job_id).is_file() for task in tasks):
        return
    job = read_job(out_dir, tasks[0].cell_ids[0]) or {"job_id": tasks[0].job_id, "stderr": tasks[0].stderr}
    raise UserError(task_end_reason(out_dir, job))


__all__ = ["EXECUTORS", "SlurmRun", "check_tasks_started", "run_on_slurm", "wait_for"]
