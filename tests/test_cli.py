"""Every `sparse-bench` subcommand: help with an example, and user errors as one line with exit status 2."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from sparse_bench.harness_ext.cli import SUBCOMMANDS, main


def leaf_commands():
    """(path, command) for every runnable command under the group, subgroups expanded."""
    import click

    found = []
    for name in SUBCOMMANDS:
        command = main.get_command(None, name)
        if isinstance(command, click.Group):
            found += [((name, sub), command.get_command(None, sub)) for sub in command.list_commands(None)]
        else:
            found.append(((name,), command))
    return found


def test_group_help_lists_every_subcommand_without_importing_them():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert all(name in result.output for name in SUBCOMMANDS)


@pytest.mark.parametrize("path, command", leaf_commands(), ids=lambda value: " ".join(value)
                         if isinstance(value, tuple) else "")
def test_every_subcommand_has_help_with_an_example(path, command):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output, f"`sparse-bench {' '.join(path)} --help` shows no example"


@pytest.mark.parametrize("args", [
    ["prune", "/no/such/model", "--method", "magnitude", "--sparsity", "0.5", "--out", "/tmp/x"],
    ["ppl", "/no/such/model", "--data", "/no/such/file.txt"],
    ["analyze", "/no/such/model"],
    ["size", "/no/such/dir"],
    ["recipe", "validate", "/no/such/recipe.yaml"],
    ["leaderboard", "run", "/no/such/spec.yaml", "--out", "/tmp/x"],
])
def test_user_errors_exit_2_with_one_line(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and ("error" in lines[0].lower()), result.output
    assert "Traceback" not in result.output
