"""The `sparse-bench` command line: one click group, subcommands loaded lazily from the modules that own them.

Every subcommand turns a `UserError` into one line on stderr and exit status 2 (no traceback). Subcommands
are imported only when run, so `sparse-bench --help` does not import torch.
"""

from __future__ import annotations

import importlib
import sys

import click

from . import __version__
from .errors import UserError, report_and_exit

# name -> ("module:attribute", one-line help shown by `sparse-bench --help`)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "eval": ("sparse_bench.model_wrappers.cli:eval_command",
             "Run lm-eval's own CLI with the sparse-hf model registered."),
    "prepare-model": ("sparse_bench.harness_ext.models:prepare_model_command",
                      "Turn the bundled SmolLM2-135M-Instruct GGUF into a safetensors checkpoint."),
    "prune": ("sparse_bench.harness_ext.pruning.cli:prune_command",
              "Prune a model and save it as a Hugging Face directory."),
    "ppl": ("sparse_bench.harness_ext.pruning.cli:ppl_command",
            "Token-level perplexity on a raw text file (the pruning papers' protocol)."),
    "recipe": ("sparse_bench.harness_ext.recipes.cli:recipe_group",
               "Validate, explain and write SparseML / llm-compressor pruning recipes."),
    "analyze": ("sparse_bench.harness_ext.analysis.cli:analyze_command",
                "How many weights are near zero: overall, per layer, per module type, with plots."),
    "size": ("sparse_bench.harness_ext.checkpoints.cli:size_command",
             "Dense, compressed and lower-bound bytes of a checkpoint."),
    "compare-samples": ("sparse_bench.harness_ext.compare_samples:compare_samples_command",
                        "Put two runs' per-sample outputs side by side with their ROUGE."),
    "finetune": ("sparse_bench.harness_ext.finetune.cli:finetune_command",
                 "Fine-tune a pruned model (full, LoRA, QLoRA; fp32 or AMP) with every zero kept."),
    "latency": ("sparse_bench.harness_ext.runtime.cli:latency_command",
                "Prefill and decode speed with dense kernels and with sparse kernels where they win."),
    "leaderboard": ("sparse_bench.leaderboards.cli:leaderboard_group",
                    "Run a model x method x sparsity x dtype grid and render leaderboards."),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in SUBCOMMANDS:
            return None
        module_name, attribute = SUBCOMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, SUBCOMMANDS[name][1]) for name in self.list_commands(ctx)])

    def invoke(self, ctx: click.Context):
        """Run the subcommand; user errors and bad usage become one line and exit status 2."""
        try:
            return super().invoke(ctx)
        except UserError as error:
            report_and_exit(error)
        except click.UsageError as error:
            command = error.ctx.command_path if error.ctx else ctx.command_path
            report_and_exit(UserError(f"{error.format_message().rstrip('.')}; see '{command} --help'"))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sparse-bench")
def main() -> None:
    """Prune language models and measure what they keep: quality (lm-eval), sparsity, size and speed.

    \b
    Example:
      sparse-bench prepare-model
      sparse-bench eval --model sparse-hf \\
        --model_args pretrained=smollm2-135m,method=magnitude,sparsity=0.5 --tasks sparsebench_mrpc --limit 8
    """


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
