#!/usr/bin/env bash
# README command 1: set up the venv, prepare the default real model (SmolLM2-135M-Instruct), run the demo
# grid (dense, magnitude / Wanda / SparseGPT at 50 % and 2:4) and render its leaderboard and plots.
# Output: results/demo/ (leaderboard.md, per-cell JSON, PNG plots, command1_seconds.json with the wall seconds of
# each phase of this command). Re-running reuses finished cells. It ends with the summary table and the path of
# the full leaderboard (`sparse-bench leaderboard render results/demo` prints all of it).
started=$(date +%s.%N)
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO_ROOT"
OUT="${1:-results/demo}"
installed=$(date +%s.%N)
sparse-bench prepare-model
prepared=$(date +%s.%N)
status=0
sparse-bench leaderboard run leaderboards/specs/demo.yaml --out "$OUT" || status=$?
finished=$(date +%s.%N)
python - "$OUT/command1_seconds.json" "$started" "$installed" "$prepared" "$finished" <<'PY'
import json, sys
from pathlib import Path
path, started, installed, prepared, finished = sys.argv[1], *map(float, sys.argv[2:])
Path(path).write_text(json.dumps({"setup": installed - started, "prepare_model": prepared - installed,
                                  "grid_and_render": finished - prepared, "total": finished - started}, indent=2))
PY
exit "$status"
