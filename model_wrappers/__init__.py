"""lm-eval integration: the `sparse-hf` model (an HFLM subclass) and its registration with lm-eval.

Kept import-light: the start-up hook imports this package in every Python process of the environment.
"""
