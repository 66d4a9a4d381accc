"""Fuzzing the grid-spec loader through `sparse-bench leaderboard cells`: mutated shipped specs and generated
specs (every key, values of every type). Every case ends with exit status 0 or 2 (one `error:` line), never
a traceback, within the per-case deadline (tests/fuzzing.py)."""

from __future__ import annotations

from pathlib import Path

import yaml
from click.testing import CliRunner
from fuzzing import assert_clean_exit, mutated
from hypothesis import given
from hypothesis import strategies as st

from sparse_bench.harness_ext.cli import main
from sparse_bench.leaderboards.spec_parser import GRID_KEYS

SPECS = sorted((Path(__file__).parents[1] / "leaderboards" / "specs").glob("*.yaml"))
SEEDS = [path.read_bytes() for path in SPECS]
RECIPE = Path(__file__).parent / "data" / "recipes" / "llmc_wanda_2of4.yaml"

SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**4), st.floats(allow_nan=True),
                   st.sampled_from(["2:4", "4:2", "1:1", "unstructured", "float16", "fp16", "wanda", "magnitude",
                                    "global", "c4", "wikitext2", "no_such_file.txt", "cpu", "cuda:0", "all", "0/1",
                                    str(RECIPE), ""]),
                   st.text(max_size=8))
SUB_KEYS = ["name", "limit", "num_fewshot", "metrics", "method", "scope", "recipe", "data", "nsamples", "seqlen",
            "seed", "true_sequential", "max_tokens", "batch", "new_tokens", "repeats", "unknown"]
VALUE = st.recursive(SCALAR, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.sampled_from(SUB_KEYS), inner, max_size=4)),
                     max_leaves=10)
SPEC = st.fixed_dictionaries({"models": st.one_of(st.just(["tiny"]), VALUE),
                              "tasks": st.one_of(st.just(["t"]), VALUE)},
                             optional={key: VALUE for key in (*GRID_KEYS, "unknown_key") if key not in ("models", "tasks")})


def cells(tmp_path: Path, content: bytes):
    path = tmp_path / "grid.yaml"
    path.write_bytes(content)
    return CliRunner().invoke(main, ["leaderboard", "cells", str(path)])


@given(content=mutated(SEEDS))
def test_mutated_specs(tmp_path, content):
    assert_clean_exit(cells(tmp_path, content))


@given(spec=SPEC)
def test_generated_specs(tmp_path, spec):
    assert_clean_exit(cells(tmp_path, yaml.safe_dump(spec, allow_unicode=True).encode()))
