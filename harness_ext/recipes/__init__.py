"""SparseML (v1 `!Modifier` and stage format) and llm-compressor recipe files -> the engine's PruningPlan.

`load_recipe(path, recipe_args=None) -> PruningPlan`; `read_recipe` also returns the format and the line of
each step for model-dependent checks (`check.py`); `sparse-bench recipe validate|explain|new` is `cli.py`.
"""

from .loader import LoadedRecipe, load_recipe, read_recipe

__all__ = ["load_recipe", "read_recipe", "LoadedRecipe"]
