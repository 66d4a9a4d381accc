#!/usr/bin/env bash
# README command 1: set up the venv, prepare the default real model (SmolLM2-135M-Instruct), run the demo
# grid (dense, magnitude / Wanda / SparseGPT at 50 % and 2:4) and render its leaderboard and plots.
# Output: results/demo/ (leaderboard.md, per-cell JSON, PNG plots). Re-running reuses finished cells.
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$REPO_ROOT"
OUT="${1:-results/demo}"
sparse-bench prepare-model
sparse-bench leaderboard run leaderboards/specs/demo.yaml --out "$OUT"
sparse-bench leaderboard render "$OUT"
