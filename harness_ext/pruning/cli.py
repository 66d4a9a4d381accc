"""`sparse-bench prune` and `sparse-bench ppl`: the engine and the perplexity protocol from the shell."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import UserError
from .options import OPTIONS, PruneOption
from .request import PruneRequest, parse_request

CLICK_TYPES = {"number": float, "integer": int, "text": str, "patterns": str}


def _emit_json(data: dict) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _click_option(row: PruneOption):
    """The `sparse-bench prune` flag of one row of the options table (options.py); absent = not given."""
    default = "" if row.default in (None, ()) else f" (default {row.default})"
    if row.kind == "flag":
        return click.option(f"{row.flag}/--no-{row.flag[2:]}", row.name, default=None, help=f"{row.help}{default}.")
    kind = click.Choice(row.choices()) if row.choices else CLICK_TYPES[row.kind]
    return click.option(row.flag, row.name, type=kind, default=None, multiple=row.kind == "patterns",
                        help=f"{row.help}{default}{' (repeatable)' if row.kind == 'patterns' else ''}.")


def request_options(command):
    """Every option of the table as a flag, in the table's order (`ria_exponent` -> `--ria-exponent`)."""
    for row in reversed(OPTIONS):
        command = _click_option(row)(command)
    return command


def request_from_flags(flags: dict) -> PruneRequest:
    """The request `prune`'s table flags describe (unset flags are not given); UserError when nothing is asked."""
    request = parse_request({name: value for name, value in flags.items() if value not in (None, ())}, source="cli")
    if request.plan is None:
        raise UserError("nothing to prune; give --method (with --sparsity or --structure) or --recipe")
    return request


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
@click.option("--dtype", default="auto", show_default=True, help="float32, float16, bfloat16 or auto.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the pruned Hugging Face checkpoint to.")
@click.option("--save-format", type=click.Choice(["dense", "compressed"]), default="dense", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the measured report as JSON.")
@click.option("--batch-size", type=int, default=None, help="Calibration samples per forward (speed/memory only).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@request_options
def prune_command(model, dtype, device, out_dir, save_format, as_json, batch_size, progress, **options):
    """Prune MODEL (a directory, hub id or short name) and save it; prints the measured sparsity.

    \b
    Examples:
      sparse-bench prune smollm2-135m --method wanda --sparsity 0.5 --nsamples 64 --seqlen 256 --out out/wanda50
      sparse-bench prune smollm2-135m --method sparsegpt --structure 2:4 --calibration notes.txt --out out/sgpt24
      sparse-bench prune smollm2-135m --method wanda --update admm --structure 2:4 --out out/wanda-admm24
      sparse-bench prune smollm2-135m --method magnitude --scope global --sparsity 0.9 --out out/mag90
      sparse-bench prune smollm2-135m --recipe recipe.yaml --out out/recipe --save-format compressed
    """
    request = request_from_flags(options)
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {batch_size}; leave it out for the default")
    from ..checkpoints import save_checkpoint
    from ..models import load_model
    from .request import prune_on_load

    loaded, tokenizer = load_model(model, dtype, device)
    report = prune_on_load(loaded, tokenizer, request, progress=progress, batch_size=batch_size)
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
