"""Sparse checkpoints: save pruned models dense or compressed, load them back exactly, measure honest sizes.

- `save_checkpoint(model, tokenizer, out_dir, prune_record=None, save_format="dense") -> Path`
- `load_checkpoint(auto_class, path, **from_pretrained_kwargs) -> model` (refuses random / missing weights)
- `checkpoint_sizes(path_or_model) -> dict` (dense bytes per dtype, compressed bytes, the bound, ratios)

See docs/checkpoints.md for the on-disk format and the size formulas.
"""

from .load import load_checkpoint
from .record import RECORD_NAME, read_record
from .save import save_checkpoint
from .sizes import checkpoint_sizes

__all__ = ["save_checkpoint", "load_checkpoint", "checkpoint_sizes", "read_record", "RECORD_NAME"]
