"""`sparse-bench prune` and `sparse-bench ppl`: the engine and the perplexity protocol from the shell."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UserError
from .methods import method_names, option_fields, update_names
from .plan import DEFAULT_IGNORE, SCOPES, CalibrationConfig, OwlConfig, plan_from_arguments

DEFAULTS = CalibrationConfig()
CLICK_TYPES = {"int": int, "float": float, "bool": click.BOOL}


def _emit_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def method_option_flags(command):
    """One flag per option of the registry's methods and updates (`ria_exponent` -> `--ria-exponent`)."""
    for name, (field, owners) in reversed(list(option_fields().items())):
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        command = click.option(f"--{name.replace('_', '-')}", name, type=CLICK_TYPES.get(kind, str), default=None,
                               help=f"{owners} option (default {field.default}).")(command)
    return command


def _build_plan(method, sparsity, structure, scope, recipe, update, targets, ignore, owl, owl_m, owl_lambda,
                method_options):
    options = {"targets": tuple(targets), "ignore": tuple(ignore) or DEFAULT_IGNORE}
    if owl:
        options["owl"] = OwlConfig(m=owl_m, lmbda=owl_lambda)
    given = {name: value for name, value in method_options.items() if value is not None}
    plan = plan_from_arguments(method, sparsity, structure, scope=scope, recipe=recipe, source="cli", update=update,
                               options=given, **({} if recipe else options))
    if plan is None:
        raise UserError("nothing to prune; give --method (with --sparsity or --structure) or --recipe")
    return plan


def _summary(report) -> str:
    record = report.to_dict()
    lines = [f"pruned {len(record['layers'])} layers: overall sparsity {record['overall_sparsity']:.4f} "
             f"({record['zeros']:,} of {record['numel']:,} weights are zero); model non-zero parameters "
             f"{record['nonzero_params']:,} of {record['total_params']:,}",
             f"prune time {record['prune_seconds']:.1f} s (calibration forwards {record['calibration_seconds']:.1f} s),"
             f" peak RSS {record['peak_rss_bytes'] / 2**20:.0f} MiB"]
    lines += [f"warning: {warning}" for warning in record["warnings"]]
    return "\n".join(lines)


@click.command("prune", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.option("--method", type=click.Choice(method_names()), help="Pruning method (or give --recipe).")
@click.option("--update", type=click.Choice(update_names()),
              help="Weight update run on the method's mask (e.g. admm).")
@click.option("--sparsity", type=float, help="Fraction of weights to zero per layer, in [0, 1).")
@click.option("--structure", default=None, help="unstructured (default), N:M such as 2:4, or block:RxC such as block:1x4.")
@click.option("--scope", type=click.Choice(SCOPES), default="layer", show_default=True,
              help="global: one magnitude threshold across all target layers.")
@click.option("--recipe", type=click.Path(dir_okay=False, path_type=Path),
              help="SparseML / llm-compressor recipe file instead of --method.")
@click.option("--target", "targets", multiple=True, help="Layer name or re:REGEX to prune (repeatable).")
@click.option("--ignore", "ignore", multiple=True, help="Layer name or re:REGEX to keep (default lm_head).")
@click.option("--calibration", default=DEFAULTS.data, show_default=True, help="c4, wikitext2 or a .txt/.jsonl FILE.")
@click.option("--nsamples", type=int, default=DEFAULTS.nsamples, show_default=True)
@click.option("--seqlen", type=int, default=DEFAULTS.seqlen, show_default=True,
              help="Calibration tokens per sample (capped at the model's context).")
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True)
@click.option("--batch-size", type=int, default=None, help="Calibration samples per forward (speed/memory only).")
@click.option("--true-sequential", is_flag=True,
              help="One forward per block; each layer pruned from the pruned layers' outputs (faster, more memory).")
@click.option("--owl", is_flag=True, help="OWL outlier-weighted per-block sparsity.")
@click.option("--owl-m", type=float, default=OwlConfig.m, show_default=True, help="OWL outlier threshold M.")
@click.option("--owl-lambda", type=float, default=OwlConfig.lmbda, show_default=True, help="OWL spread lambda.")
@click.option("--dtype", default="auto", show_default=True, help="float32, float16, bfloat16 or auto.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the pruned Hugging Face checkpoint to.")
@click.option("--save-format", type=click.Choice(["dense", "compressed"]), default="dense", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the measured report as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@method_option_flags
def prune_command(model, method, update, sparsity, structure, scope, recipe, targets, ignore, calibration, nsamples,
                  seqlen, seed, batch_size, true_sequential, owl, owl_m, owl_lambda, dtype, device, out_dir,
                  save_format, as_json, progress, **method_options):
    """Prune MODEL (a directory, hub id or short name) and save it; prints the measured sparsity.

    \b
    Examples:
      sparse-bench prune smollm2-135m --method wanda --sparsity 0.5 --nsamples 64 --seqlen 256 --out out/wanda50
      sparse-bench prune smollm2-135m --method sparsegpt --structure 2:4 --calibration notes.txt --out out/sgpt24
      sparse-bench prune smollm2-135m --method wanda --update admm --structure 2:4 --out out/wanda-admm24
      sparse-bench prune smollm2-135m --method magnitude --scope global --sparsity 0.9 --out out/mag90
      sparse-bench prune smollm2-135m --recipe recipe.yaml --out out/recipe --save-format compressed
    """
    plan = _build_plan(method, sparsity, structure, scope, recipe, update, targets, ignore, owl, owl_m, owl_lambda,
                       method_options)
    calibration_config = CalibrationConfig(data=calibration, nsamples=nsamples, seqlen=seqlen, seed=seed,
                                           true_sequential=true_sequential)
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}; leave it out for the default")
    from ..checkpoints import save_checkpoint
    from ..models import load_model
    from .engine import prune

    loaded, tokenizer = load_model(model, dtype, device)
    report = prune(loaded, plan, calibration_config, tokenizer, progress=progress, batch_size=batch_size)
    saved = save_checkpoint(loaded, tokenizer, out_dir, prune_record=report.to_dict(), save_format=save_format)
    if as_json:
        _emit_json({**report.to_dict(), "out_dir": str(saved)})
    else:
        click.echo(_summary(report))
        click.echo(f"saved {save_format} checkpoint to {saved}")


@click.command("ppl", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.option("--data", "data_file", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Raw UTF-8 text file, e.g. WikiText-2's wiki.test.raw.")
@click.option("--seqlen", type=int, default=2048, show_default=True,
              help="Window length in tokens (capped at the model's context).")
@click.option("--max-tokens", type=int, default=None, help="Score only the first T tokens of the file.")
@click.option("--dtype", default="auto", show_default=True, help="float32, float16, bfloat16 or auto.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object (key `perplexity`).")
def ppl_command(model, data_file, seqlen, max_tokens, dtype, device, as_json):
    """Token-level perplexity of MODEL on a raw text file, the protocol of the Wanda/SparseGPT papers.

    The file is tokenized as one stream and cut into non-overlapping windows of --seqlen tokens; this is
    not lm-eval's word-level `wikitext` perplexity. An encoder-only model with a masked-LM head gets its
    pseudo-perplexity instead (each token masked in turn; JSON key `pseudo_perplexity`).

    \b
    Example:
      sparse-bench ppl out/wanda50 --data wiki.test.raw --seqlen 256 --max-tokens 65536 --json
    """
    from ..models import load_model, model_family
    from ..perplexity import read_text, token_perplexity
    from ..pseudo_likelihood import pseudo_perplexity, special_token_count
    from .engine import model_context

    text = read_text(data_file)
    loaded, tokenizer = load_model(model, dtype, device)
    encoder = model_family(loaded.config) == "encoder-only"
    context = model_context(loaded)
    context = context - special_token_count(tokenizer) if encoder and context is not None else context
    notes = []
    if context is not None and seqlen > context:
        notes.append(f"seqlen {seqlen} capped at the model's context of {context} tokens")
        seqlen = context
    measure = pseudo_perplexity if encoder else token_perplexity
    result = {"model": model, "data": str(data_file), **measure(loaded, tokenizer, text, seqlen, max_tokens),
              "dtype": str(next(loaded.parameters()).dtype).removeprefix("torch."), "notes": notes}
    if as_json:
        _emit_json(result)
        return
    for note in notes:
        click.echo(f"note: {note}")
    if encoder:
        click.echo(f"masked-LM pseudo-perplexity {result['pseudo_perplexity']:.3f} on {result['tokens']:,} tokens "
                   f"of {data_file} ({result['windows']} windows of {seqlen}; not comparable with causal perplexity)")
        return
    click.echo(f"token-level perplexity {result['perplexity']:.3f} on {result['tokens']:,} tokens of {data_file} "
               f"({result['windows']} windows of {seqlen}; not lm-eval's word perplexity)")


__all__ = ["prune_command", "ppl_command"]
