"""`finetune(model, config, out_dir)`: load, keep masks, (LoRA), train with Trainer, merge, measure, save.

The output directory is written once, at the end, by `checkpoints.save_checkpoint` (complete or absent).
Trainer checkpoints live in a work folder beside it (`.NAME.finetune/`) until the run succeeds; `resume=True`
continues from the newest one there. A run that diverges or is killed writes no output directory.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ..checkpoints import read_record, save_checkpoint
from ..checkpoints.save import _check_replaceable
from ..errors import UserError
from ..models import find_or_prepare_model
from ..pruning.targets import find_target_layers
from .config import FinetuneConfig
from .data import load_training_data
from .lora import add_adapters, lora_deltas, merge_deltas, unload
from .masks import MaskCallback, MaskKeeper, changed_zero_positions, zero_maps
from .record import finetune_record
from .trainer import DivergedError, build_trainer, held_out_metrics


def work_dir_for(out_dir: Path) -> Path:
    """Where Trainer checkpoints of the run that writes `out_dir` are kept until it finishes."""
    return out_dir.parent / f".{out_dir.name}.finetune"


def _prepare_work_dir(out_dir: Path, resume: bool) -> Path:
    work_dir = work_dir_for(out_dir)
    saved = sorted(work_dir.glob("checkpoint-*")) if work_dir.is_dir() else []
    if resume and not saved:
        raise UserError(f"--resume: no Trainer checkpoint in {work_dir} to continue from; run without --resume")
    if not resume and saved:
        raise UserError(f"an interrupted run left Trainer checkpoints in {work_dir}; pass --resume to continue "
                        "it, or delete that folder to start over")
    work_dir.mkdir(parents=True, exist_ok=True)
    return work_dir


def is_causal_lm(config) -> bool:
    """True for decoder language models; False for encoders (which train a classification head)."""
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"{config.model_type} is an encoder-decoder model; fine-tuning supports causal LMs "
                        "and encoders only")
    architectures = getattr(config, "architectures", None) or ()
    return any(arch.endswith(("ForCausalLM", "LMHeadModel")) for arch in architectures)


def load_for_training(path: str, config: FinetuneConfig, causal: bool):
    """(model in fp32 on the device, tokenizer); an encoder gets a fresh 2-class head (and pooler)."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from ..checkpoints import load_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(path)
    if causal:
        quantization = _four_bit() if config.mode == "qlora" else None
        model = load_checkpoint(AutoModelForCausalLM, path, dtype=torch.float32, quantization_config=quantization,
                                device_map=config.device if quantization else None)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        model = _load_classifier(AutoModelForSequenceClassification, path)
    return model.to(config.device) if config.mode != "qlora" else model, tokenizer


def _four_bit():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)


HEAD_PREFIXES = ("classifier.", "score.", "pooler.", "bert.pooler.")


def _load_classifier(auto_class, path: str):
    """A 2-class sequence classifier from an encoder checkpoint; only the head may be new (refuses otherwise)."""
    record = read_record(Path(path)) if Path(path).is_dir() else None
    if record is not None and record["save_format"] != "dense":
        raise UserError(f"{path} is a compressed checkpoint; encoders are fine-tuned from dense checkpoints "
                        "(sparse-bench prune --save-format dense)")
    model, info = auto_class.from_pretrained(path, num_labels=2, dtype=torch.float32, output_loading_info=True)
    missing = [name for name in info["missing_keys"] if not name.startswith(HEAD_PREFIXES)]
    if missing or info.get("mismatched_keys"):
        raise UserError(f"refusing to fine-tune {path}: {len(missing)} encoder weight(s) would be random "
                        f"({', '.join(sorted(missing)[:4])}); give a complete encoder checkpoint")
    return model


def finetune(model_name: str, config: FinetuneConfig, out_dir: str | Path, resume: bool = False,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune `model_name` (directory, hub id or short name) as `config` says and save it to `out_dir`.

    Returns the `finetune` record that is also stored in the checkpoint record. Raises UserError for bad input
    (nothing written) and `DivergedError` for a NaN/Inf loss (no checkpoint written).
    """
    from transformers import AutoConfig

    config.validate(torch.cuda.is_available())
    out_dir = Path(out_dir).expanduser().resolve()
    _check_replaceable(out_dir)
    path = find_or_prepare_model(model_name)
    causal = is_causal_lm(AutoConfig.from_pretrained(path))
    if config.mode == "qlora" and not causal:
        raise UserError("--mode qlora fine-tunes causal LMs; use --mode lora or full for an encoder")
    model, tokenizer = load_for_training(path, config, causal)
    data = load_training_data(config.data, tokenizer, not causal, config.max_length, config.limit,
                              config.eval_limit)
    layers = find_target_layers(model)
    # QLoRA's packed 4-bit weights hide the zeros: they are measured on the plain weights merged into
    before = None if config.mode == "qlora" else (MaskKeeper(layers).zeros(), zero_maps(layers))
    if before is not None and not MaskKeeper(layers).masks:
        if config.require_sparse:
            raise UserError(f"--require-sparse: no pruned layer in {model_name} (no exact zeros in its "
                            f"{len(layers)} prunable layers); prune it first (sparse-bench prune)")
        if config.save_format == "compressed":
            raise UserError(f"{model_name} has no zeros to compress; use --save-format dense or prune it first")
    trained = model if config.mode == "full" else add_adapters(model, list(layers), config.lora_r,
                                                               config.lora_alpha, classification=not causal)
    keeper = MaskKeeper({name: m for name, m in layers.items() if m.weight.requires_grad} if config.keep_masks
                        else {})
    trainer = build_trainer(trained, tokenizer, config, data.train, _prepare_work_dir(out_dir, resume),
                            [MaskCallback(keeper)], classification=not causal, progress=progress)
    started = time.perf_counter()
    try:
        result = trainer.train(resume_from_checkpoint=True if resume else None)
    except DivergedError:  # a diverged run leaves nothing behind, not even its Trainer checkpoints
        shutil.rmtree(work_dir_for(out_dir), ignore_errors=True)
        raise
    seconds = time.perf_counter() - started
    model, held_out, before = _finish(trainer, trained, tokenizer, data, path, config, causal, before)
    layers = find_target_layers(model)
    changed = changed_zero_positions(before[1], layers)
    if changed and config.keep_masks:
        raise RuntimeError(f"zero positions changed in {changed[:4]} although masks were kept")
    record = finetune_record(config, data, trainer.state, result, seconds, before[0], MaskKeeper(layers).zeros(),
                             held_out, model_name)
    source = read_record(Path(path)) if Path(path).is_dir() else None
    save_checkpoint(model.cpu(), tokenizer, out_dir, prune_record=(source or {}).get("prune_record"),
                    save_format=config.save_format, finetune_record=record)
    shutil.rmtree(work_dir_for(out_dir), ignore_errors=True)
    return record


def _finish(trainer, trained, tokenizer, data, path: str, config: FinetuneConfig, causal: bool, before):
    """(plain model to save, held-out metrics by variant, zeros before); LoRA is scored unmerged and merged."""
    mrpc_causal = causal and config.data == "mrpc"
    if config.mode == "full":
        return trained, {"model": held_out_metrics(trainer, trained, tokenizer, data.held_out, mrpc_causal)}, before
    held_out = {"adapter_unmerged": held_out_metrics(trainer, trained, tokenizer, data.held_out, mrpc_causal)}
    deltas = lora_deltas(trained)
    if config.mode == "qlora":  # merge into the plain (unquantized) base weights, reloaded on the CPU
        base, _ = load_for_training(path, FinetuneConfig(mode="full", device="cpu"), causal)
        layers = find_target_layers(base)
        before = (MaskKeeper(layers).zeros(), zero_maps(layers))
    else:
        base = unload(trained)
    merge_deltas(base, deltas, masked=True)
    held_out["masked_merge"] = held_out_metrics(trainer, base.to(trainer.args.device), tokenizer, data.held_out,
                                                mrpc_causal)
    return base, held_out, before


__all__ = ["finetune", "is_causal_lm", "work_dir_for"]
