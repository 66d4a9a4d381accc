"""The sparse-bench engine: everything that does not need lm-eval.

Pruning (`pruning`), recipe files (`recipes`), checkpoints (`checkpoints`), weight analysis (`analysis`),
model loading (`models`) and the `sparse-bench` command line (`cli`). Importing this package is cheap: the
heavy libraries (torch, transformers) are imported by the submodules that need them.
"""

__version__ = "0.1.0"
