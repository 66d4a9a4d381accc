"""Build glue: everything declarative lives in setup.cfg.

The one thing setup.cfg cannot say: ship `sparse_bench_lm_eval_hook.pth` at the wheel root, so that after
`pip install .` the stock `lm_eval` command (0.4.13 has no plugin discovery) sees `--model sparse-hf`.
Editable installs do not run build_py on the package tree, so they do not get the hook; README says to use
`sparse-bench eval ...` there.
"""
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HOOK_FILE = "sparse_bench_lm_eval_hook.pth"


class BuildPyWithStartupHook(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):  # editable installs map the source tree; no wheel root
            return
        shutil.copyfile(Path(__file__).parent / "model_wrappers" / HOOK_FILE, Path(self.build_lib) / HOOK_FILE)


setup(cmdclass={"build_py": BuildPyWithStartupHook})
