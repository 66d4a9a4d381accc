"""The wheel ships every module and task file of the source tree under the one `sparse_bench` namespace."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"harness_ext": "sparse_bench/harness_ext", "model_wrappers": "sparse_bench/model_wrappers",
           "tasks": "sparse_bench/tasks", "leaderboards": "sparse_bench/leaderboards"}
SHIPPED_SUFFIXES = {".py", ".yaml", ".yml", ".jinja", ".md"}


def _source_files() -> set[str]:
    tracked = subprocess.run(["git", "ls-files", *FOLDERS], cwd=REPO, capture_output=True, text=True, check=True)
    files = set()
    for line in tracked.stdout.splitlines():
        path = Path(line)
        if path.suffix in SHIPPED_SUFFIXES and "__pycache__" not in path.parts:
            files.add(str(Path(FOLDERS[path.parts[0]], *path.parts[1:])))
    return files


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(out), str(REPO)], check=True, capture_output=True, text=True)
    (path,) = out.glob("sparse_bench-*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


@pytest.fixture(scope="module")
def wheel_names(wheel) -> set[str]:
    return set(wheel.namelist())


def test_wheel_ships_every_source_file(wheel_names):
    missing = sorted(_source_files() - wheel_names)
    assert not missing, f"in the source tree but not in the wheel: {missing}"


def test_wheel_has_no_generic_top_level_package(wheel_names):
    top_level = {name.split("/")[0] for name in wheel_names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"sparse_bench", "sparse_bench_lm_eval_hook.pth"}


def test_wheel_declares_console_script_and_lm_eval_entry_point(wheel):
    (name,) = [name for name in wheel.namelist() if name.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(name).decode()
    assert "sparse-bench = sparse_bench.harness_ext.cli:main" in text
    models = text.split("[lm_eval.models]\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert sorted(models) == ["sparse-encoder = sparse_bench.model_wrappers.sparse_encoder:SparseEncoderLM",
                              "sparse-hf = sparse_bench.model_wrappers.sparse_hf:SparseHFLM"]


def test_start_up_hook_is_one_import_line(wheel):
    lines = wheel.read("sparse_bench_lm_eval_hook.pth").decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("import sparse_bench.model_wrappers.lm_eval_hook")


def test_installed_entry_points_resolve():
    from importlib.metadata import entry_points

    (model,) = [ep for ep in entry_points(group="lm_eval.models") if ep.name == "sparse-hf"]
    assert model.value == "sparse_bench.model_wrappers.sparse_hf:SparseHFLM"
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "sparse-bench"]
    assert script.load().name == "main"
