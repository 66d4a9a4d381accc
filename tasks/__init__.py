"""lm-eval task folders shipped by sparse-bench (YAML + a small utils.py each, found by path).

`TASKS_DIR` is the folder to hand lm-eval as an include path; the installed plugin adds it for you.
"""

from pathlib import Path

TASKS_DIR = Path(__file__).resolve().parent
