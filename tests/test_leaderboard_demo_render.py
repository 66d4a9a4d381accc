"""The demo leaderboard renders identically from the same cells.

tests/data/demo_run.tar.xz holds a real finished demo run (`sparse-bench leaderboard run demo`, SmolLM2-135M,
7 cells): its grid.json, cells/*.json, the logged samples the flips and error reports read (MRPC, Billsum
generation) and the leaderboard.md that run rendered. Rendering those cells with today's code must give that
file byte for byte (results files of format 1 keep loading; the columns keep their order and meaning).
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from sparse_bench.leaderboards.render import render
from sparse_bench.leaderboards.store import CellResult, read_result

FIXTURE = Path(__file__).parent / "data" / "demo_run.tar.xz"
PLOTS = ("sparsebench_billsum_loglik", "sparsebench_mrpc", "sparsebench_billsum", "cost", "measures")


def test_demo_leaderboard_renders_identically(tmp_path):
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    expected = (tmp_path / "leaderboard.md").read_text(encoding="utf-8")
    (tmp_path / "leaderboard.md").unlink()
    plots = {name: tmp_path / "plots" / f"{name}.png" for name in PLOTS}  # links only: the images are not compared
    text, path = render(tmp_path, "md", plots)
    assert text == expected
    assert path.read_text(encoding="utf-8") == expected


def test_cell_results_of_format_1_round_trip(tmp_path):
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(tmp_path, filter="data")
    for file in sorted((tmp_path / "cells").glob("*.json")):
        result = read_result(tmp_path, file.stem)
        assert isinstance(result, CellResult) and result.status == "ok"
        assert result.get("perplexity")["perplexity"] > 1 and result.get("latency")["forward_ms"] > 0
        again = CellResult.from_dict(result.to_dict())
        assert again == result


def test_render_and_plots_do_not_import_the_run_loop():
    """Reading results needs the store, not the runner (nor torch's model code through it)."""
    import subprocess
    import sys

    code = ("import sys; import sparse_bench.leaderboards.render, sparse_bench.leaderboards.plots; "
            "print('sparse_bench.leaderboards.runner' in sys.modules)")
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"
