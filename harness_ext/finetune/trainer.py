"""The transformers Trainer set-up for a fine-tuning run: arguments, collator, divergence stop, metrics.

`build_trainer` returns a stock `transformers.Trainer` subclass whose only change is `training_step`: a NaN or
infinite loss raises `UserError` naming the optimizer step (before that step updates any weight). Masks are
kept by `masks.MaskCallback`; the progress bar (loss, ETA) is Trainer's own tqdm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from ..errors import UserError
from .config import FinetuneConfig
from .data import task_utils

PRECISION_FLAGS = {"fp32": {}, "bf16-amp": {"bf16": True}, "fp16-amp": {"fp16": True}}


class DivergedError(UserError):
    """The training loss became NaN or infinite; nothing from the run is saved."""


class GuardedTrainer(Trainer):
    """Trainer that stops with one line when the loss of a micro-step is not finite."""

    def training_step(self, model, inputs, num_items_in_batch=None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss)):
            raise DivergedError(f"training diverged: the loss is {float(loss)} at optimizer step "
                                f"{self.state.global_step + 1}; no checkpoint was written (lower --lr, or use "
                                "--precision fp32 / bf16-amp)")
        return loss


class LossProgress(ProgressCallback):
    """Trainer's tqdm bar (steps, ETA; on stderr) with the latest training loss in it, instead of a printed
    line per log (stdout stays free for --json)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.training_bar is not None and logs and "loss" in logs:
            self.training_bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)


def training_arguments(config: FinetuneConfig, work_dir: Path, progress: bool) -> TrainingArguments:
    """TrainingArguments for `config`; Trainer checkpoints go to `work_dir` every `save_steps` steps."""
    return TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size, gradient_accumulation_steps=config.grad_accum,
        learning_rate=config.lr, lr_scheduler_type="linear", weight_decay=0.0,
        num_train_epochs=config.epochs, max_steps=config.max_steps if config.max_steps is not None else -1,
        seed=config.seed, data_seed=config.seed, logging_steps=1, logging_strategy="steps",
        save_strategy="steps", save_steps=config.save_steps, save_total_limit=1, report_to="none",
        disable_tqdm=not progress, use_cpu=not config.device.startswith("cuda"), dataloader_num_workers=0,
        include_num_input_tokens_seen="non_padding", remove_unused_columns=False,
        **PRECISION_FLAGS[config.precision])


def collator(tokenizer, classification: bool):
    """Pads a batch dynamically; causal-LM labels are padded with -100 (no loss)."""
    if classification:
        return DataCollatorWithPadding(tokenizer)
    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)


def build_trainer(model, tokenizer, config: FinetuneConfig, train: list[dict], work_dir: Path,
                  callbacks: list[TrainerCallback], classification: bool, progress: bool = True) -> GuardedTrainer:
    trainer = GuardedTrainer(model=model, args=training_arguments(config, work_dir, progress), train_dataset=train,
                             data_collator=collator(tokenizer, classification), callbacks=callbacks,
                             compute_metrics=classification_metrics if classification else None)
    for printer in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(printer)
    if progress:
        trainer.add_callback(LossProgress())
    return trainer


def classification_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """MRPC metrics of a 2-class head: accuracy, F1 (class 1), ROC-AUC of logit(1) - logit(0)."""
    logits = np.asarray(prediction.predictions, dtype=np.float64)
    golds = np.asarray(prediction.label_ids).astype(int).tolist()
    return _pair_metrics(golds, (logits[:, 1] - logits[:, 0]).tolist())


def _pair_metrics(golds: list[int], scores: list[float]) -> dict[str, float]:
    """acc / f1 / auc / yes_rate from gold labels and yes-minus-no scores, with the MRPC task's own functions."""
    utils = task_utils("sparsebench_mrpc")
    answers = [int(score > 0) for score in scores]
    area, low, high = utils.auc_interval(list(zip(golds, scores)))
    return {"acc": float(np.mean([a == g for a, g in zip(answers, golds)])),
            "f1": utils.f1(list(zip(golds, answers))), "auc": area, "auc_low": low, "auc_high": high,
            "yes_rate": float(np.mean(answers))}


def answer_scores(model, tokenizer, examples: list[dict], batch_size: int
                  ) -> tuple[list[int], list[float], list[float]]:
    """(gold labels, logP(yes) - logP(no), -logP(gold answer) in nats) of MRPC examples encoded by
    `data.encode_continuation`, scored at the answer's first token as the `sparsebench_mrpc` task scores
    single-token answers."""
    from .data import mrpc_format

    _, delimiter, choices = mrpc_format()
    first = [tokenizer(delimiter + word, add_special_tokens=False)["input_ids"][0] for word in choices]
    pad = collator(tokenizer, classification=False)
    golds, scores, gold_nll = [], [], []
    model.eval()
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            batch = pad(examples[start:start + batch_size])
            logits = model(input_ids=batch["input_ids"].to(model.device),
                           attention_mask=batch["attention_mask"].to(model.device)).logits.float()
            answer_at = (batch["labels"] != -100).int().argmax(dim=1)
            rows = torch.arange(len(answer_at))
            log_probs = torch.log_softmax(logits[rows, answer_at - 1], dim=-1)[:, first].cpu()
            batch_golds = [first.index(int(token)) for token in batch["labels"][rows, answer_at]]
            golds += batch_golds
            scores += (log_probs[:, 1] - log_probs[:, 0]).tolist()
            gold_nll += (-log_probs[rows, batch_golds]).tolist()
    return golds, scores, gold_nll


def held_out_metrics(trainer: Trainer, model, tokenizer, held_out: list[dict], mrpc_causal: bool) -> dict[str, Any]:
    """Loss on the held-out examples (+ MRPC acc/F1/AUC for classification heads and causal MRPC).

    Causal MRPC answers are one token each, so their loss (mean NLL of the gold answer token, nats) comes from
    the same forward pass as the scores; other data get Trainer's evaluation loop."""
    if not held_out:
        return {}
    trainer.model = model
    if mrpc_causal and all(sum(label != -100 for label in example["labels"]) == 1 for example in held_out):
        golds, scores, gold_nll = answer_scores(model, tokenizer, held_out, trainer.args.eval_batch_size)
        return {"loss": float(np.mean(gold_nll)), **_pair_metrics(golds, scores)}
    metrics = {key.removeprefix("eval_"): value for key, value in trainer.evaluate(held_out).items()
               if key in ("eval_loss", "eval_acc", "eval_f1", "eval_auc", "eval_auc_low", "eval_auc_high",
                          "eval_yes_rate")}
    if mrpc_causal:
        golds, scores, _ = answer_scores(model, tokenizer, held_out, trainer.args.eval_batch_size)
        metrics.update(_pair_metrics(golds, scores))
    return metrics


__all__ = ["DivergedError", "GuardedTrainer", "build_trainer", "held_out_metrics", "training_arguments"]
