"""`sparse-bench eval ARGS...`: lm-eval's own CLI, unchanged, with `sparse-hf` and our tasks registered.

Use it where the plain `lm_eval` command cannot see the plugin (an editable install has no start-up hook).
"""

from __future__ import annotations

import sys

import click

from ..harness_ext.errors import UserError, report_and_exit


@click.command("eval", context_settings={"ignore_unknown_options": True, "allow_extra_args": True,
                                         "help_option_names": ["--help"]})
@click.argument("lm_eval_args", nargs=-1, type=click.UNPROCESSED)
def eval_command(lm_eval_args: tuple[str, ...]) -> None:
    """Run `lm_eval LM_EVAL_ARGS...` with the sparse-hf model and the sparsebench tasks registered.

    \b
    Example:
      sparse-bench eval --model sparse-hf \\
        --model_args pretrained=smollm2-135m,method=wanda,sparsity=0.5,nsamples=64,seqlen=256 \\
        --tasks sparsebench_billsum_loglik --limit 16 --output_path out/
    `sparse-bench eval -h` shows lm-eval's own help.
    """
    from lm_eval.__main__ import cli_evaluate

    from .registration import register_with_lm_eval

    register_with_lm_eval()
    sys.argv = ["lm_eval", *lm_eval_args]
    try:
        cli_evaluate()
    except UserError as error:
        report_and_exit(error)
