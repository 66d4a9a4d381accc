"""Grid specs: validation with one-line errors naming the field, cell expansion, shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sparse_bench.harness_ext.errors import UserError
from sparse_bench.leaderboards.cells import expand_cells, parse_shard, shard_cells
from sparse_bench.leaderboards.cli import SPECS_DIR
from sparse_bench.leaderboards.spec_parser import load_spec, parse_spec

BASE = {"models": ["some/model"], "methods": ["magnitude", "wanda"], "sparsities": [0.5, 0.9],
        "structures": ["unstructured", "2:4"], "dtypes": ["float32", "float16"],
        "tasks": [{"name": "sparsebench_mrpc", "limit": 8}]}


def spec_with(**changes):
    return parse_spec({**BASE, **changes}, source="grid.yaml")


@pytest.mark.parametrize("changes, field", [
    ({"models": []}, "grid.yaml: models:"),
    ({"methods": ["prune-it"]}, "grid.yaml: methods[0].method:"),
    ({"methods": [{"method": "wanda", "scope": "global"}]}, "grid.yaml: methods[0]:"),
    ({"methods": [{"recipe": "missing.yaml"}]}, "grid.yaml: methods[0].recipe:"),
    ({"methods": [{"method": "wanda", "sparsity": 0.5}]}, "grid.yaml: methods[0].sparsity: unknown key"),
    ({"sparsities": [50]}, "grid.yaml: sparsities[0]:"),
    ({"sparsities": []}, "grid.yaml: sparsities:"),
    ({"structures": [124]}, "grid.yaml: structures[0]: got the number 124"),
    ({"structures": True}, "grid.yaml: structures: must be a non-empty list, got True"),  # found by fuzzing
    ({"dtypes": "float16"}, "grid.yaml: dtypes: must be a non-empty list"),
    ({"structures": ["4:2"]}, "grid.yaml: structures[0]:"),
    ({"dtypes": ["fp16"]}, "grid.yaml: dtypes[0]:"),
    ({"tasks": [{"limit": 8}]}, "grid.yaml: tasks[0].name: is required"),
    ({"tasks": [{"name": "x", "limit": "all"}]}, "grid.yaml: tasks[0].limit:"),
    ({"tasks": [{"name": "x", "num_fewshot": -1}]}, "grid.yaml: tasks[0].num_fewshot:"),
    ({"calibration": {"nsamples": 0}}, "grid.yaml: calibration.nsamples:"),
    ({"calibration": {"data": "no_such_file.jsonl"}}, "grid.yaml: calibration.data:"),
    ({"calibration": {"true_sequential": "yes"}}, "grid.yaml: calibration.true_sequential: must be true or false"),
    ({"latency": {"batch": 0}}, "grid.yaml: latency.batch:"),
    ({"include_path": "no/such/folder"}, "grid.yaml: include_path:"),
    ({"sparsity": [0.5]}, "grid.yaml: sparsity: unknown key"),
    ({"metadata": ["max_bill_tokens", 640]}, "grid.yaml: metadata: must be a mapping of settings"),
    ({"metadata": {"max_bill_tokens": [640]}}, "grid.yaml: metadata: 'max_bill_tokens': [640] is not a setting"),
    ({"tasks": [{"name": "x", "gen_kwargs": "max_gen_toks=64"}]}, "grid.yaml: tasks[0].gen_kwargs: must be a mapping"),
    ({"finetune": {"mode": "full", "save_steps": 5}}, "grid.yaml: finetune.save_steps: unknown key"),
])
def test_malformed_spec_names_the_field_in_one_line(changes, field):
    with pytest.raises(UserError) as error:
        spec_with(**changes)
    message = str(error.value)
    assert message.startswith(field), message
    assert "\n" not in message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("models: [a\ntasks: x\n")
    with pytest.raises(UserError, match=r"bad.yaml:2: while parsing a flow sequence expected ',' or ']'"):
        load_spec(path)


def test_cells_dense_first_nm_ignores_sparsities():
    cells = expand_cells(spec_with())
    # per dtype: dense + 2 methods x (2 sparsities + one 2:4) = 7; two dtypes
    assert len(cells) == 14
    assert [c.method_label for c in cells[:7]] == ["dense", "magnitude", "magnitude", "magnitude",
                                                  "wanda", "wanda", "wanda"]
    nm = [c for c in cells if c.structure_label == "2:4"]
    assert len(nm) == 4 and all(c.sparsity == 0.5 for c in nm)
    assert len({c.cell_id for c in cells}) == len(cells)
    assert all(c.plan() is None for c in cells if c.is_dense)
    plan = next(c for c in cells if c.structure_label == "2:4").plan()
    assert str(plan.steps[0].structure) == "2:4"


def test_dense_is_a_cell_even_without_methods():
    cells = expand_cells(parse_spec({"models": ["m"], "tasks": ["t"]}))
    assert [c.method_label for c in cells] == ["dense"]


@pytest.mark.parametrize("count", [1, 2, 3, 5, 20])
def test_shards_cover_every_cell_exactly_once(count):
    cells = expand_cells(spec_with())
    shards = [shard_cells(cells, index, count) for index in range(count)]
    ids = [c.cell_id for shard in shards for c in shard]
    assert sorted(ids) == sorted(c.cell_id for c in cells)
    # the same split whatever order it is computed in, and a pruned model's dtypes stay together
    assert shards == [shard_cells(cells, index, count) for index in reversed(range(count))][::-1]
    for shard in shards:
        keys = {(c.model, c.method, c.sparsity, c.nm) for c in shard}
        others = [c for other in shards if other is not shard for c in other]
        assert not any((c.model, c.method, c.sparsity, c.nm) in keys for c in others)


@pytest.mark.parametrize("text", ["1/1", "2/1", "a/b", "-1/3", "3"])
def test_bad_shard_is_a_user_error(text):
    with pytest.raises(UserError, match="--shard must be i/N"):
        parse_shard(text)


@pytest.mark.parametrize("name", ["demo", "mrpc_global_magnitude", "billsum_methods", "dtype_sweep"])
def test_shipped_specs_are_valid(name):
    spec = load_spec(SPECS_DIR / f"{name}.yaml")
    assert expand_cells(spec)[0].is_dense


def test_demo_spec_is_the_issue_grid():
    cells = expand_cells(load_spec(SPECS_DIR / "demo.yaml"))
    assert {(c.method_label, c.structure_label) for c in cells} == {
        ("dense", "dense"), *((m, s) for m in ("magnitude", "wanda", "sparsegpt") for s in ("unstructured", "2:4"))}


def test_cli_malformed_spec_exit_2_one_line(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({**BASE, "dtypes": ["fp8"]}))
    result = subprocess.run([sys.executable, "-m", "sparse_bench.harness_ext.cli", "leaderboard", "cells",
                             str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {path}: dtypes[0]: must be one of float32, float16, "
                                                  "bfloat16, got 'fp8'; fix that key in the grid spec "
                                                      "(docs/leaderboard.md lists the keys and their values)"]
    assert "Traceback" not in result.stderr


def test_cli_lists_shard_cells(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(BASE))
    result = subprocess.run([sys.executable, "-m", "sparse_bench.harness_ext.cli", "leaderboard", "cells",
                             str(path), "--shard", "1/2"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    cells = shard_cells(expand_cells(load_spec(Path(path))), 1, 2)
    assert [line.split("\t")[0] for line in result.stdout.splitlines()] == [c.cell_id for c in cells]


def test_metadata_and_gen_kwargs_reach_the_spec_and_grid_json():
    spec = spec_with(metadata={"max_bill_tokens": 640},
                     tasks=[{"name": "sparsebench_billsum", "limit": 1, "gen_kwargs": {"max_gen_toks": 64}}])
    assert spec.metadata == {"max_bill_tokens": 640}
    assert spec.tasks[0].gen_kwargs == {"max_gen_toks": 64}
    recorded = json.loads(json.dumps(spec.to_dict()))
    assert recorded["metadata"] == {"max_bill_tokens": 640}
    assert recorded["tasks"][0]["gen_kwargs"] == {"max_gen_toks": 64}


def test_finetune_block_is_the_run_config_with_grid_defaults():
    spec = spec_with(finetune={"data": "mrpc", "max_steps": 5}, device="cpu")
    assert (spec.finetune.mode, spec.finetune.lr, spec.finetune.max_steps) == ("lora", 3e-4, 5)
    assert spec_with(finetune={"mode": "full"}).finetune.lr == 2e-5
    recorded = json.loads(json.dumps(spec.to_dict()))["finetune"]
    assert parse_spec({**BASE, "finetune": recorded}, source="grid.json").finetune == spec.finetune


def test_nested_options_spelling_is_deprecated_but_means_the_same(caplog):
    direct = spec_with(methods=[{"method": "ria", "ria_exponent": 0.25}])
    with caplog.at_level("WARNING"):
        nested = spec_with(methods=[{"method": "ria", "options": {"ria_exponent": 0.25}}])
    assert nested.methods == direct.methods
    assert "methods[0].options: is deprecated" in caplog.text
    with pytest.raises(UserError, match="'ria_exponent' is given twice"):
        spec_with(methods=[{"method": "ria", "ria_exponent": 0.5, "options": {"ria_exponent": 0.25}}])
    with pytest.raises(UserError, match="'speed' is not a method option"):
        spec_with(methods=[{"method": "ria", "options": {"speed": 2}}])
