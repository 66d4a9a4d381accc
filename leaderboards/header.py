"""The header of a leaderboard: everything a reader needs to trust or reproduce the tables, as `label: text`."""

from __future__ import annotations

from typing import Any

from .columns import FAILED
from .grid_results import Grid
from .status import DONE, NOT_RUN, PARTIAL, QUEUED, RUNNING, SUBMITTED, counts, in_flight
from .status import FAILED as FAILED_STATE

# What the metrics our tasks and the engine report mean (others show only their direction).
METRIC_NOTES = {
    "bits_per_byte": "bits per UTF-8 byte of the reference text under teacher forcing",
    "acc": "accuracy", "f1": "F1 of the positive class",
    "rouge1": "ROUGE-1 F-measure (stemmed)", "rouge2": "ROUGE-2 F-measure (stemmed)",
    "rougeL": "ROUGE-L F-measure (stemmed)", "rougeLsum": "ROUGE-Lsum F-measure (stemmed)",
    "ppl": "token-level perplexity over a WikiText-2 test slice in windows of `seqlen` tokens (the pruning "
           "papers' protocol; lm-eval's `wikitext` task reports word-level perplexity, not comparable)",
    "bertscore_f1": "BERTScore F1 against the reference (scorer in the header)",
    "bertscore_precision": "BERTScore precision", "bertscore_recall": "BERTScore recall",
    "repeated_4gram": "share of the output's word 4-grams that repeat an earlier one (1 = a loop)",
    "distinct_1": "distinct words / words", "distinct_2": "distinct word bigrams / bigrams",
}
PRUNING_NOTE = ("and cached, then loaded in each row's dtype. `measured` = exact zeros over the pruned layers "
                "(lm_head excluded); `nonzero (M)` = non-zero parameters of the whole model")
SIZE_NOTE = ("`dense MiB` = the checkpoint stored dense at the row's dtype; `compressed MiB` = sparse-bench's "
             "compressed format (see `sparse-bench size`)")


def header(grid: Grid) -> dict[str, Any]:
    """Everything a reader needs to trust or reproduce the tables, as `label: text` pairs."""
    spec, env = grid.spec, grid.first(lambda r: r.environment) or {}
    calibration = spec["calibration"]
    tasks = ", ".join(f"`{t['name']}` (limit {t['limit'] or 'all'}, {t['num_fewshot'] or 0}-shot)"
                      for t in spec["tasks"])
    ppl = spec.get("perplexity")
    return {
        "Cells": _cell_counts(grid),
        "Models": models_note(grid),
        "Pruning": (f"calibration `{calibration['data']}`, {calibration['nsamples']} x {calibration['seqlen']} "
                    f"tokens, seed {calibration['seed']}"
                    f"{', true-sequential' if calibration.get('true_sequential') else ''}; pruned in "
                    f"{spec['prune_dtype']} on {spec['device']} {PRUNING_NOTE}"),
        "Tasks": f"lm-eval {env.get('lm_eval', '?')}, {tasks}, batch size {spec['batch_size']}, "
                 f"bootstrap_iters {spec['bootstrap_iters']} (stderr after ±), seed {spec['seed']}",
        "Perplexity": "not measured" if not ppl else (
            f"`ppl (token)` = {METRIC_NOTES['ppl']}: `{ppl['data']}`, first {ppl['max_tokens']} tokens, "
            f"windows of {ppl['seqlen']}"),
        "Agreement": agreement_note(grid),
        "Scorers": scorer_note(grid),
        "Latency": latency_note(grid),
        "Size": SIZE_NOTE,
        "Software": ", ".join(f"{k} {env[k]}" for k in ("sparse_bench", "lm_eval", "torch", "transformers")
                              if k in env),
    }


def models_note(grid: Grid) -> str:
    """Each model with its path, weights sha256 and revision (and family, where recorded)."""
    models = []
    for model in grid.spec["models"]:
        ok = [r for r in grid.ok() if r.cell.model == model]
        evaluations = next((r.evaluations for r in ok if r.evaluations), [{"results": {}}])
        revision = evaluations[0]["results"].get("config", {}).get("model_revision") or "-"
        family = next((r.model_family for r in ok if r.model_family), None)
        models.append(f"`{model}` ({ok[0].model_path if ok else 'not run'}; "
                      + (f"{family}; " if family else "")
                      + f"weights sha256 {(ok[0].model_fingerprint if ok else '-')[:16]}; revision {revision})")
    return "; ".join(models)


def latency_note(grid: Grid) -> str:
    lat = grid.spec.get("latency")
    if not lat:
        return "not measured"
    latency = grid.first(lambda r: r.get("latency")) or {}
    return (f"{latency.get('device_name', '?')} (`{latency.get('device', '?')}`, {latency.get('torch_threads', '?')}"
            f" torch threads, {latency.get('cpu_count', '?')} logical CPUs): `ms/forward` = median of "
            f"{lat['repeats']} forwards of {lat['batch']} x {lat['seqlen']} tokens; `tokens/s` = greedy "
            f"generation of {lat['new_tokens']} tokens at batch 1; `peak MiB` = "
            f"{latency.get('peak_memory_kind', '?')} during those; `prune s` = pruning wall time")


def agreement_note(grid: Grid) -> str:
    agreement = grid.first(lambda r: r.get("agreement"))
    if not agreement:
        return "not measured"
    reference = agreement["reference"]
    return (f"`KL vs dense` = KL(dense || cell) of next-token distributions in nats per token and `top-1 agree` = "
            f"share of positions where the cell's most likely token is the dense model's, on the perplexity "
            f"windows ({agreement['positions']} positions), against the dense model in {reference['dtype']} on "
            f"`{reference['device']}`; the KL uses the dense top {agreement['top_k']} tokens plus the rest mass (a "
            "lower bound on the full KL, docs/measures.md)")


def scorer_note(grid: Grid) -> str:
    """Which BERTScore scorer the generation tasks used (from lm-eval's task config), or '-'."""
    def scorers(result: Any) -> str:
        found = {f"`{task}`: {config['metadata']['bertscore_model']}"
                 for evaluation in result.evaluations
                 for task, config in evaluation["results"].get("configs", {}).items()
                 if (config.get("metadata") or {}).get("bertscore_model")}
        return "; ".join(sorted(found))
    return grid.first(scorers) or "-"


def _cell_counts(grid: Grid) -> str:
    states = counts(grid.states)
    held = sum(states[name] for name in (QUEUED, RUNNING, SUBMITTED))
    partial = (f", {states[PARTIAL]} with a failed phase (shown, marked `{FAILED}`)" if states[PARTIAL] else "")
    return (f"{states[DONE]} of {len(grid.cells)} finished{partial}, {states[FAILED_STATE]} failed, "
            f"{states[NOT_RUN]} not run" + (f", {held} still queued or running" if held else ""))


def incomplete_note(grid: Grid) -> str | None:
    """A warning line if some cells are still queued or running (the tables will change), else None."""
    held = in_flight(grid.states)
    if not held:
        return None
    jobs = sorted({s.job.split("_")[0] for s in held if s.job})
    return (f"INCOMPLETE: {len(held)} of {len(grid.cells)} cells are still queued or running"
            + (f" (Slurm job {', '.join(jobs)})" if jobs else "") + "; these tables will change. Render again "
            f"when `sparse-bench leaderboard status {grid.folder}` shows them done.")


def metric_legend(grid: Grid, task: str, metrics: list[str]) -> str:
    better = grid.first(lambda r: r.higher_is_better[task]) or {}
    parts = []
    for metric in metrics:
        direction = {True: "higher is better", False: "lower is better"}.get(better.get(metric), "")
        note = METRIC_NOTES.get(metric.split(",")[0], "")
        parts.append(f"`{metric}`: " + ", ".join(p for p in (note, direction) if p))
    return "; ".join(parts)


__all__ = ["METRIC_NOTES", "header", "incomplete_note", "metric_legend"]
