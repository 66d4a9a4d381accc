"""`prune(model, plan, ...)`: apply a PruningPlan to a model in place and return the measured PruneReport.

Order of work: every target layer is assigned to exactly one plan step and gets its target sparsity
(explicit `layer_sparsity` first, then OWL's per-block value, then the step's sparsity). Layers whose method
needs no statistics (methods.py registry: magnitude) are pruned first (global steps with one threshold across
their layers); then, when any layer needs data, one layer-sequential pass over the calibration set collects
each block's input statistics (norms, or the Hessian where a method or update needs it) and runs each
layer's method, then its update, from the registry. OWL needs one extra dense pass before that to measure
each block's outliers. Layers that read one input and share a step run stacked as one matrix.

The model keeps its dtype and device; methods work on a float64 copy of the weight, and the result is written
back in the model's dtype. Pruned weights are exact zeros (the weight is multiplied by its mask).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import UserError
from ..memory import peak_rss_bytes
from .calibration import (
    IN_MEMORY,
    BlockStep,
    BlockWeights,
    InputStatistics,
    Stopwatch,
    default_batch_size,
    layer_sequential,
)
from .calibration_data import calibration_tokens
from .magnitude import prune_global_magnitude
from .masks import check_structure_shape, prune_count
from .method_types import HESSIAN, NONE, PruneResult, Target
from .methods import get_method, get_update, method_names, statistic_needed
from .owl import outlier_ratio, owl_sparsities
from .plan import CalibrationConfig, PruneStep, PruningPlan
from .report import LayerSparsity, PruneReport
from .targets import find_target_layers, matches_any, transformer_blocks, weight_matrix
from .true_sequential import prune_in_one_forward, shared_input_groups
from .values import BlockStructure, NMStructure
from .wanda import wanda_scores


@dataclass
class LayerJob:
    """One target layer, the step that prunes it and its target sparsity (None: set by a global threshold)."""

    name: str
    module: nn.Module
    step: PruneStep
    sparsity: float | None
    explicit: bool = False

    @property
    def statistic(self) -> str:
        """The calibration statistic the step's method and update need (methods.NONE: no data)."""
        return statistic_needed(self.step.method, self.step.update)


def _check_step(step: PruneStep) -> None:
    """Combinations the engine cannot honour, refused before any weight changes."""
    if step.structure is not None and (step.layer_sparsity or step.owl or step.scope == "global"):
        fixes = "fixes every layer's sparsity" if isinstance(step.structure, NMStructure) else "ranks tiles per layer"
        raise UserError(f"structure {step.structure} {fixes}; it cannot be combined with layer_sparsity, OWL or "
                        "scope=global")
    if step.scope == "global" and (step.layer_sparsity or step.owl):
        raise UserError("scope=global sets one threshold for all layers; drop layer_sparsity / OWL or use "
                        "scope=layer")


def _layer_target(name: str, step: PruneStep) -> tuple[float | None, bool]:
    for pattern, value in step.layer_sparsity:
        if matches_any(name, (pattern,)):
            return value, True
    if step.scope == "global":
        return None, False
    return (step.structure.sparsity if isinstance(step.structure, NMStructure) else step.sparsity), False


def plan_layers(model: nn.Module, plan: PruningPlan) -> list[LayerJob]:
    """Every target layer with its step and sparsity, in model order; UserError on any conflict."""
    if not plan.steps:
        raise UserError("the pruning plan has no steps; nothing would be pruned")
    owner: dict[str, tuple[int, nn.Module]] = {}
    for index, step in enumerate(plan.steps):
        _check_step(step)
        for name, module in find_target_layers(model, step.targets, step.ignore).items():
            if name in owner:
                raise UserError(f"layer {name} is targeted by steps {owner[name][0] + 1} and {index + 1} of the "
                                "plan; give each layer to one step (use ignore)")
            owner[name] = (index, module)
            if step.structure is not None:
                check_structure_shape(tuple(weight_matrix(module).shape), step.structure, name)
    order = {name: position for position, (name, _) in enumerate(model.named_modules())}
    jobs = []
    for name in sorted(owner, key=order.__getitem__):
        index, module = owner[name]
        sparsity, explicit = _layer_target(name, plan.steps[index])
        jobs.append(LayerJob(name, module, plan.steps[index], sparsity, explicit))
    return jobs


def _prune_group(group: list[LayerJob], stats: InputStatistics | None, warnings: list[str]) -> None:
    """Run the step's method (and update) on layers that share one input and one step, stacked by rows.

    The method sees a float64 copy; the result (its new weight, or the old one) is written back with exact
    zeros outside the keep-mask, in the model's dtype.
    """
    step = group[0].step
    weights = [weight_matrix(job.module) for job in group]
    dense = torch.cat([weight.double() for weight in weights])
    target = Target(tuple((weight.shape[0], job.sparsity) for weight, job in zip(weights, group)), step.structure)
    result = get_method(step.method).function(dense, stats, target, step.method_options)
    if step.update is not None:
        updated = get_update(step.update).function(dense, stats, result.keep, target, step.update_options)
        result = PruneResult(updated.keep, updated.weight, result.notes + updated.notes)
    new_weight = result.weight
    warnings.extend(f"{', '.join(job.name for job in group)}: {note}" for note in result.notes)
    rows = [weight.shape[0] for weight in weights]
    parts = new_weight.split(rows) if new_weight is not None else [None] * len(weights)
    for weight, keep, part in zip(weights, result.keep.split(rows), parts):
        if part is not None:
            weight.copy_(part)
        weight.masked_fill_(~keep, 0)


def _prune_without_data(jobs: list[LayerJob], warnings: list[str]) -> None:
    """Layers whose method needs no calibration statistics (magnitude); global steps with one threshold."""
    global_steps: dict[int, list[LayerJob]] = {}
    for job in jobs:
        if job.statistic != NONE:
            continue
        if job.step.scope == "global":
            global_steps.setdefault(id(job.step), []).append(job)
        else:
            _prune_group([job], None, warnings)
    for group in global_steps.values():
        prune_global_magnitude([weight_matrix(job.module) for job in group], group[0].step.sparsity)


def _block_jobs(jobs: list[LayerJob], block: str) -> list[LayerJob]:
    return [job for job in jobs if job.name.startswith(block + ".")]


def _owl_pass(model: nn.Module, jobs: list[LayerJob], tokens: torch.Tensor, batch_size: int,
              stopwatch: Stopwatch, progress: bool, weights: BlockWeights) -> None:
    """Set each OWL layer's sparsity from its block's outlier ratio, measured on the dense model."""
    owl_jobs = [job for job in jobs if job.step.owl is not None]
    ratios: dict[int, list[tuple[str, float]]] = {}
    for block in layer_sequential(model, tokens, batch_size, stopwatch, progress, "OWL outliers",
                                  weights.statistics_only()):
        in_block = _block_jobs(owl_jobs, block.name)
        if not in_block:
            continue
        stats = block.collect({job.name: job.module for job in in_block}, with_hessian=False)
        for step_id in dict.fromkeys(id(job.step) for job in in_block):
            members = [job for job in in_block if id(job.step) == step_id]
            scores = [wanda_scores(weight_matrix(job.module), stats[job.name].column_norms()) for job in members]
            ratios.setdefault(step_id, []).append((block.name, outlier_ratio(scores, members[0].step.owl.m)))
    for step_id, block_ratios in ratios.items():
        step = next(job.step for job in owl_jobs if id(job.step) == step_id)
        per_block = dict(zip((name for name, _ in block_ratios),
                             owl_sparsities([ratio for _, ratio in block_ratios], step.sparsity, step.owl)))
        for job in owl_jobs:
            if id(job.step) == step_id and not job.explicit:
                job.sparsity = next(value for block, value in per_block.items() if job.name.startswith(block + "."))


def _prune_block(jobs: list[LayerJob], stats: dict[str, InputStatistics], warnings: list[str]) -> None:
    """Prune a block's layers, those sharing one input and one step together.

    Each input's statistics leave `stats` once the last group reading them is pruned, so a block's
    Hessians are not all alive while its largest one is solved (SmolLM2: 8 of 24 MiB freed before down_proj).
    """
    groups: dict[tuple[int, int], list[LayerJob]] = {}
    for job in jobs:
        groups.setdefault((id(stats[job.name]), id(job.step)), []).append(job)
    readers = Counter(input_id for input_id, _ in groups)
    for (input_id, _), group in groups.items():
        _prune_group(group, stats[group[0].name], warnings)
        readers[input_id] -= 1
        if not readers[input_id]:
            for name in [name for name, value in stats.items() if id(value) == input_id]:
                del stats[name]


def _prune_in_one_forward(block: BlockStep, in_block: list[LayerJob], with_hessian: bool,
                          relative_groups: list[tuple[str, ...]], warnings: list[str]) -> None:
    """True-sequential: prune the block's layers inside its one forward (see true_sequential.py)."""
    by_name = {job.name: job for job in in_block}
    groups = [names for group in relative_groups
              if (names := tuple(f"{block.name}.{name}" for name in group if f"{block.name}.{name}" in by_name))]
    pruning_seconds = Stopwatch()

    def prune_group(names: list[str], stats: InputStatistics) -> None:
        started = time.perf_counter()
        _prune_block([by_name[name] for name in names], dict.fromkeys(names, stats), warnings)
        pruning_seconds.add_since(started)

    started = time.perf_counter()
    prune_in_one_forward(block, {job.name: job.module for job in in_block}, groups, with_hessian, prune_group)
    block.stopwatch.add_since(started)
    block.stopwatch.seconds -= pruning_seconds.seconds


def _calibrated_pass(model: nn.Module, jobs: list[LayerJob], tokens: torch.Tensor, batch_size: int,
                     stopwatch: Stopwatch, progress: bool, warnings: list[str], true_sequential: bool,
                     weights: BlockWeights) -> None:
    data_jobs = [job for job in jobs if job.statistic != NONE]
    relative_groups: dict[str, list[tuple[str, ...]]] = {}  # per block stack (encoder and decoder differ)
    for block in layer_sequential(model, tokens, batch_size, stopwatch, progress, "pruning", weights):
        if weights.streamed:  # the block's layers that need no data, now that it is loaded
            _prune_without_data(_block_jobs(jobs, block.name), warnings)
        in_block = _block_jobs(data_jobs, block.name)
        if not in_block:
            continue
        with_hessian = any(job.statistic == HESSIAN for job in in_block)
        layers = {job.name: job.module for job in in_block}
        if true_sequential:
            if block.stack not in relative_groups:
                relative_groups[block.stack] = shared_input_groups(block, layers)
            _prune_in_one_forward(block, in_block, with_hessian, relative_groups[block.stack], warnings)
            continue
        stats = block.collect(layers, with_hessian, keep_outputs=False)
        _prune_block(in_block, stats, warnings)
        del stats  # the Hessians (SmolLM2: 24 MiB a block) are not kept while the next block collects its own
        block.mark_modified()


def _streamed_without_data(model: nn.Module, jobs: list[LayerJob], weights: BlockWeights, warnings: list[str],
                           progress: bool) -> None:
    """A plan that needs no data, streamed: each block loaded, pruned and finished in turn."""
    for name, block in tqdm(transformer_blocks(model), desc="pruning", unit="block", disable=not progress):
        if not weights.finished(name):
            weights.load(name, block)
            _prune_without_data(_block_jobs(jobs, name), warnings)
            weights.finish(name, block)


def _minimum_zeros(job: LayerJob) -> int:
    """Zeros the method guarantees in this layer (more appear where weights already were zero)."""
    rows, columns = weight_matrix(job.module).shape
    structure = job.step.structure
    if isinstance(structure, NMStructure):
        return rows * columns // structure.m * (structure.m - structure.n)
    if isinstance(structure, BlockStructure):
        tile_rows, tile_columns = rows // structure.rows, columns // structure.columns
        if get_method(job.step.method).comparison == "row":
            return tile_rows * prune_count(tile_columns, job.sparsity) * structure.size
        return prune_count(tile_rows * tile_columns, job.sparsity) * structure.size
    if get_method(job.step.method).comparison == "row":
        return rows * prune_count(columns, job.sparsity)
    return prune_count(rows * columns, job.sparsity)


def _check_result(jobs: list[LayerJob], measured: dict[str, LayerSparsity]) -> None:
    """Fail loudly if any layer (or global group) holds fewer zeros than its method guarantees."""
    global_groups: dict[int, list[LayerJob]] = {}
    for job in jobs:
        if job.sparsity is None:
            global_groups.setdefault(id(job.step), []).append(job)
        elif measured[job.name].zeros < _minimum_zeros(job):
            raise RuntimeError(f"{job.name}: {measured[job.name].zeros} zeros after {job.step.method}, "
                               f"expected at least {_minimum_zeros(job)}")
    for group in global_groups.values():
        zeros = sum(measured[job.name].zeros for job in group)
        expected = prune_count(sum(measured[job.name].numel for job in group), group[0].step.sparsity)
        if zeros < expected:
            raise RuntimeError(f"global magnitude left {zeros} zeros, expected at least {expected}")


def _tied_weight_warnings(model: nn.Module, jobs: list[LayerJob]) -> list[str]:
    """Targets whose weight is shared with a module that is not a target (lm_head tied to the embedding)."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor):
            owners.setdefault(id(weight), []).append(name)
    targets = {job.name for job in jobs}
    return [f"{job.name} shares its weight with {', '.join(others)}, which is pruned with it"
            for job in jobs if (others := [n for n in owners[id(job.module.weight)] if n not in targets])]


def model_context(model: nn.Module) -> int | None:
    """The model's maximum sequence length from its config (None when it does not say).

    RoBERTa-style position embeddings start after their padding index, which costs padding_idx + 1 rows.
    """
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            positions = next((module for name, module in model.named_modules()
                              if name.endswith("embeddings.position_embeddings")), None)
            padding = getattr(positions, "padding_idx", None)
            return value - (padding + 1) if padding is not None else value
    return None


def prune(model: nn.Module, plan: PruningPlan, calibration: CalibrationConfig | None = None, tokenizer=None,
          progress: bool = True, *, batch_size: int | None = None, weights: BlockWeights = IN_MEMORY) -> PruneReport:
    """Prune `model` in place as `plan` says and return what was measured afterwards.

    Methods that need statistics (methods.py), updates and OWL need `calibration` and `tokenizer`. `batch_size` is
    the number of calibration samples per forward (default: about 2048 tokens); it changes speed and
    memory, not the masks. `weights` streams the blocks of a model larger than memory (streaming.py): every
    block is then pruned when it is loaded, by the same loop and methods.
    """
    started = time.perf_counter()
    jobs = plan_layers(model, plan)
    needs_data = sorted({job.step.method + (f"+{job.step.update}" if job.step.update else "")
                         for job in jobs if job.statistic != NONE}
                        | ({"owl"} if any(job.step.owl for job in jobs) else set()))
    if needs_data and (calibration is None or tokenizer is None):
        no_data = "|".join(name for name in method_names() if get_method(name).statistic == NONE)
        raise UserError(f"{' and '.join(needs_data)} need calibration data and a tokenizer; pass a "
                        f"CalibrationConfig (e.g. c4, 128 x 2048 tokens) or use method={no_data}")
    warnings = _tied_weight_warnings(model, jobs) + [note for step in plan.steps for note in step.notes()]
    stopwatch = Stopwatch()
    calibration_record = None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if needs_data:
                load_started = time.perf_counter()
                tokens, calibration_record, data_warnings = calibration_tokens(calibration, tokenizer,
                                                                                model_context(model))
                stopwatch.add_since(load_started)
                warnings.extend(data_warnings)
                batch = batch_size or default_batch_size(tokens.shape[1])
            del tokenizer  # not needed any more: freed here when the caller kept no reference (prune_streaming)
            if any(job.step.owl for job in jobs):  # OWL needs data, so the tokens exist
                _owl_pass(model, jobs, tokens, batch, stopwatch, progress, weights)
            if not weights.streamed:
                _prune_without_data(jobs, warnings)
            if any(job.statistic != NONE for job in jobs):
                _calibrated_pass(model, jobs, tokens, batch, stopwatch, progress, warnings,
                                 calibration.true_sequential, weights)
            elif weights.streamed:
                _streamed_without_data(model, jobs, weights, warnings, progress)
    finally:
        model.train(was_training)
    measured, nonzero, total = weights.measure(model, {job.name: job.module for job in jobs},
                                               {job.name: job.sparsity for job in jobs})
    _check_result(jobs, measured)
    return PruneReport(layers=measured, nonzero_params=nonzero, total_params=total, plan=plan.describe(),
                       calibration=calibration_record, prune_seconds=time.perf_counter() - started,
                       calibration_seconds=stopwatch.seconds, peak_rss_bytes=peak_rss_bytes(),
                       warnings=warnings)


__all__ = ["LayerJob", "plan_layers", "model_context", "prune"]
