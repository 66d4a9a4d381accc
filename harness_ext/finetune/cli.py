"""`sparse-bench finetune`: fine-tune a (pruned) model with its zeros kept and save it for lm-eval."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .config import MODES, PRECISIONS, FinetuneConfig


@click.command("finetune", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model")
@click.option("--data", default="mrpc", show_default=True,
              help="mrpc, billsum, a JSON-lines file of {\"text\", \"summary\"} records, or a hub data set "
                   "OWNER/NAME[:CONFIG] with sentence1/sentence2/label or text/summary columns (online).")
@click.option("--mode", default="full", show_default=True, help=f"{' | '.join(MODES)} (qlora: CUDA only).")
@click.option("--precision", default="fp32", show_default=True,
              help=f"{' | '.join(PRECISIONS)} (fp16-amp: CUDA only).")
@click.option("--epochs", type=float, default=1.0, show_default=True, help="Passes over the training data.")
@click.option("--max-steps", type=int, default=None, help="Optimizer steps (overrides --epochs).")
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: 2e-5 full, 3e-4 LoRA].")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Examples per micro-step.")
@click.option("--grad-accum", type=int, default=1, show_default=True, help="Micro-steps per optimizer step.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--limit", type=int, default=None, help="Train on the first N examples only.")
@click.option("--eval-limit", type=int, default=None, help="Score the first N held-out examples only.")
@click.option("--max-length", type=int, default=512, show_default=True, help="Tokens per example (cut).")
@click.option("--lora-r", type=int, default=16, show_default=True)
@click.option("--lora-alpha", type=int, default=32, show_default=True)
@click.option("--save-steps", type=int, default=200, show_default=True, help="Trainer checkpoint every N steps.")
@click.option("--save-format", type=click.Choice(["dense", "compressed"]), default="dense", show_default=True)
@click.option("--require-sparse", is_flag=True, help="Refuse a model whose prunable layers hold no zeros.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1, ...")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from its Trainer checkpoints.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Checkpoint directory to write (complete or absent).")
@click.option("--json", "as_json", is_flag=True, help="Print the finetune record as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True)
def finetune_command(model, data, mode, precision, epochs, max_steps, lr, batch_size, grad_accum, seed, limit,
                     eval_limit, max_length, lora_r, lora_alpha, save_steps, save_format, require_sparse, device,
                     resume, out_dir, as_json, progress):
    """Fine-tune MODEL (a directory, hub id or short name) with every pruned zero kept; save it to --out.

    \b
    Examples:
      sparse-bench prune smollm2-135m --method wanda --sparsity 0.5 --out out/wanda50
      sparse-bench finetune out/wanda50 --data mrpc --mode lora --max-steps 200 --out out/wanda50-ft
      lm_eval --model sparse-hf --model_args pretrained=out/wanda50-ft --tasks sparsebench_mrpc
    """
    from .run import finetune

    config = FinetuneConfig(
        data=data, mode=mode, precision=precision, epochs=epochs, max_steps=max_steps,
        lr=lr, batch_size=batch_size,
        grad_accum=grad_accum, seed=seed, limit=limit, eval_limit=eval_limit, max_length=max_length,
        lora_r=lora_r, lora_alpha=lora_alpha, save_steps=save_steps, save_format=save_format,
        require_sparse=require_sparse, device=device)
    record = finetune(model, config, out_dir, resume=resume, progress=progress)
    if as_json:
        click.echo(json.dumps({**record, "out_dir": str(out_dir)}, indent=2, default=str))
        return
    click.echo(summary(record))
    click.echo(f"saved {save_format} checkpoint to {out_dir}")


def summary(record: dict) -> str:
    """A few lines a person reads after a run."""
    zeros = record["zeros"]
    lines = [(f"{record['mode']} fine-tuning, {record['precision']}: {record['steps']} steps in "
             f"{record['train_seconds']:.1f} s ({record['tokens_per_second'] or 0:.0f} tokens/s), peak RSS "
             f"{record['peak_rss_bytes'] / 2**20:.0f} MiB; loss {record['first_loss']} -> {record['final_loss']}"),
             (f"sparsity {zeros['sparsity_before']:.4%} before, {zeros['sparsity_after']:.4%} after "
             f"({zeros['zeros_after']} of {zeros['numel']} weights are zero)")]
    for variant, metrics in record["held_out"].items():
        shown = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items() if isinstance(value, float))
        lines.append(f"held out ({variant}): {shown}")
    return "\n".join(lines)
