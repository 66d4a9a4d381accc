"""Fine-tuning with masks kept, on tiny models: zeros stay exact zeros at the same positions (full and LoRA),
non-zero weights do change, the masked merge keeps the sparsity and the unmasked one would not, the output loads,
interrupted runs resume, and bad input gets one line and writes nothing."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from sparse_bench.harness_ext.checkpoints import load_checkpoint, read_record, save_checkpoint
from sparse_bench.harness_ext.errors import UserError
from sparse_bench.harness_ext.finetune import FinetuneConfig, add_adapters, finetune, lora_deltas, merge_deltas
from sparse_bench.harness_ext.finetune import run as finetune_run
from sparse_bench.harness_ext.finetune.trainer import DivergedError
from sparse_bench.harness_ext.models import load_model
from sparse_bench.harness_ext.pruning.engine import prune
from sparse_bench.harness_ext.pruning.request import shortcut_plan
from sparse_bench.harness_ext.pruning.targets import find_target_layers

TINY_RUN = {"data": "mrpc", "max_steps": 2, "batch_size": 4, "limit": 8, "eval_limit": 4, "max_length": 128,
            "save_steps": 1000}


@pytest.fixture(scope="module")
def pruned_llama(tiny_llama, tmp_path_factory):
    """The tiny llama, magnitude-pruned to 50 % per layer, saved dense."""
    model, tokenizer = load_model(str(tiny_llama))
    report = prune(model, shortcut_plan("magnitude", 0.5), None, tokenizer, progress=False)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("pruned") / "llama50",
                           prune_record=report.to_dict())


def weights_of(path, auto_class=AutoModelForCausalLM) -> dict[str, torch.Tensor]:
    model = load_checkpoint(auto_class, path)
    return {name: module.weight.detach().clone() for name, module in find_target_layers(model).items()}


def check_zeros_kept_and_weights_trained(before: dict, after: dict) -> None:
    for name, weight in before.items():
        assert torch.equal(weight == 0, after[name] == 0), f"zero positions moved in {name}"
        assert torch.equal(after[name][weight == 0].view(torch.int32), torch.zeros_like(after[name][weight == 0]).view(torch.int32)), \
            f"a pruned weight of {name} is not +0.0"
    assert any(not torch.equal(weight, after[name]) for name, weight in before.items()), "no weight was trained"


def test_full_fine_tuning_keeps_every_zero_and_trains_the_rest(pruned_llama, tmp_path):
    record = finetune(str(pruned_llama), FinetuneConfig(mode="full", lr=1e-3, **TINY_RUN), tmp_path / "ft",
                      progress=False)
    check_zeros_kept_and_weights_trained(weights_of(pruned_llama), weights_of(tmp_path / "ft"))
    assert record["steps"] == 2 and record["mode"] == "full" and record["precision"] == "fp32"
    zeros = record["zeros"]
    assert zeros["zeros_before"] == zeros["zeros_after"] and abs(zeros["sparsity_after"] - 0.5) < 0.01
    assert all(layer["zeros_before"] == layer["zeros_after"] for layer in zeros["layers"].values())
    assert record["train_tokens"] > 0 and record["tokens_per_second"] > 0 and record["peak_rss_bytes"] > 0
    assert set(record["held_out"]["model"]) >= {"loss", "acc", "f1", "auc"}
    saved = read_record(tmp_path / "ft")
    assert saved["finetune_record"]["steps"] == 2 and saved["prune_record"] is not None
    assert not finetune_run.work_dir_for((tmp_path / "ft").resolve()).exists()


def test_without_masks_the_zeros_do_not_survive(pruned_llama, tmp_path):
    """The control: the same run with mask keeping switched off revives pruned weights."""
    finetune(str(pruned_llama), FinetuneConfig(mode="full", lr=1e-3, keep_masks=False, **TINY_RUN),
             tmp_path / "ft", progress=False)
    before, after = weights_of(pruned_llama), weights_of(tmp_path / "ft")
    assert any(not torch.equal(weight == 0, after[name] == 0) for name, weight in before.items())


def test_lora_masked_merge_keeps_exact_sparsity(pruned_llama, tmp_path):
    record = finetune(str(pruned_llama), FinetuneConfig(mode="lora", lr=1e-2, lora_r=4, **TINY_RUN),
                      tmp_path / "ft", progress=False)
    check_zeros_kept_and_weights_trained(weights_of(pruned_llama), weights_of(tmp_path / "ft"))
    assert set(record["held_out"]) == {"adapter_unmerged", "masked_merge"}
    assert record["lora"] == {"r": 4, "alpha": 32}
    assert record["zeros"]["zeros_before"] == record["zeros"]["zeros_after"]


def test_unmasked_merge_would_fill_the_zeros(pruned_llama):
    """peft's plain merge adds a dense delta; merge_deltas(masked=True) adds it only where weights are non-zero."""
    results = {}
    for masked in (False, True):
        model = load_checkpoint(AutoModelForCausalLM, pruned_llama)
        layers = find_target_layers(model)
        zero_before = {name: module.weight == 0 for name, module in layers.items()}
        torch.manual_seed(0)
        wrapped = add_adapters(model, list(layers), r=4, alpha=8, classification=False)
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:  # peft starts B at zero; a trained adapter's B is not
                torch.nn.init.normal_(parameter, std=0.1)
        deltas = lora_deltas(wrapped)
        plain = wrapped.unload()
        changed = merge_deltas(plain, deltas, masked=masked)
        assert sum(changed.values()) > 0
        results[masked] = [torch.equal(zero_before[name], module.weight == 0)
                           for name, module in find_target_layers(plain).items()]
    assert all(results[True]) and not any(results[False])


def test_encoder_lora_trains_a_classifier_with_bf16_autocast(tiny_model_dirs, tmp_path):
    bert = tiny_model_dirs["bert"]
    model, tokenizer = load_model(str(bert))
    prune(model, shortcut_plan("magnitude", 0.5), None, tokenizer, progress=False)
    pruned = save_checkpoint(model, tokenizer, tmp_path / "bert50")
    record = finetune(str(pruned), FinetuneConfig(mode="lora", precision="bf16-amp", lr=1e-2, lora_r=4, **TINY_RUN),
                      tmp_path / "ft", progress=False)
    before = {name.removeprefix("bert."): w for name, w in weights_of(pruned, type(model)).items()}
    after = {name.removeprefix("bert."): w for name, w in weights_of(tmp_path / "ft", AutoModelForSequenceClassification).items()}
    check_zeros_kept_and_weights_trained(before, after)
    assert record["precision"] == "bf16-amp"
    assert all(set(record["held_out"][variant]) >= {"loss", "acc", "f1", "auc"}
               for variant in ("adapter_unmerged", "masked_merge"))


def test_interrupted_run_resumes_from_its_trainer_checkpoint(pruned_llama, tmp_path, monkeypatch):
    config = FinetuneConfig(mode="full", lr=1e-3, **{**TINY_RUN, "max_steps": 4, "save_steps": 2})
    out = tmp_path / "ft"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(finetune_run, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(str(pruned_llama), config, out, progress=False)
    monkeypatch.undo()
    work = finetune_run.work_dir_for(out.resolve())
    assert not out.exists() and sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-4"]
    with pytest.raises(UserError, match="--resume"):
        finetune(str(pruned_llama), config, out, progress=False)
    record = finetune(str(pruned_llama), FinetuneConfig(mode="full", lr=1e-3, **{**TINY_RUN, "max_steps": 6,
                                                                                   "save_steps": 2}),
                      out, resume=True, progress=False)
    assert record["steps"] == 6 and out.is_dir() and not work.exists()


def test_nan_loss_stops_naming_the_step_and_writes_nothing(pruned_llama, tmp_path):
    with pytest.raises(DivergedError, match=r"at optimizer step \d+; no checkpoint was written"):
        finetune(str(pruned_llama), FinetuneConfig(mode="full", lr=1e20, **{**TINY_RUN, "max_steps": 6}),
                 tmp_path / "ft", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_mrpc_training_text_is_what_the_lm_eval_task_scores(tiny_tokenizer):
    """Prompt and continuation come from lm-eval's own rendering of sparsebench_mrpc; the loss covers the
    answer tokens only."""
    from lm_eval.tasks import TaskManager

    from sparse_bench.harness_ext.finetune.data import encode_continuation, mrpc_prompt_and_answer
    from sparse_bench.tasks import TASKS_DIR

    task = TaskManager(include_path=str(TASKS_DIR), include_defaults=False).load_task_or_group(
        ["sparsebench_mrpc"])["sparsebench_mrpc"]
    task.build_all_requests(limit=4, rank=0, world_size=1)
    for instance in task.instances:
        if instance.idx != int(instance.doc["label"]):
            continue  # the request for the wrong answer word
        assert mrpc_prompt_and_answer(instance.doc) == instance.arguments
        example = encode_continuation(tiny_tokenizer, *instance.arguments, max_length=512)
        answer = [token for token, label in zip(example["input_ids"], example["labels"]) if label != -100]
        assert tiny_tokenizer.decode(answer) == instance.arguments[1]


def test_sparse_hf_reports_the_finetune_record(pruned_llama, tmp_path):
    from sparse_bench.model_wrappers.sparse_hf import SparseHFLM

    finetune(str(pruned_llama), FinetuneConfig(mode="full", lr=1e-3, **{**TINY_RUN, "max_steps": 1}),
             tmp_path / "ft", progress=False)
    info = SparseHFLM(pretrained=str(tmp_path / "ft"), batch_size=1, device="cpu").get_model_info()
    assert info["finetune"]["steps"] == 1 and abs(info["sparsity"]["overall_sparsity"] - 0.5) < 0.01
    json.dumps(info, default=str)


def test_billsum_offline_split_is_disjoint_and_stated(tiny_tokenizer, data_dir):
    from sparse_bench.harness_ext.finetune.data import load_training_data, task_utils

    data = load_training_data("billsum", tiny_tokenizer, classification=False, max_length=512)
    bills = task_utils("sparsebench_billsum").read_jsonl(data_dir / "billsum" / "test.jsonl")
    assert (len(data.train), len(data.held_out)) == (len(bills) - 16, 16) == (48, 16)
    assert data.description["held_out_rows"] == "1-16" and data.description["train_rows"] == "17-64"
    for example in data.train + data.held_out:
        scored = [label for label in example["labels"] if label != -100]
        assert 0 < len(scored) < len(example["input_ids"]) <= 512


def test_causal_mrpc_held_out_loss_from_the_scoring_pass_is_trainers_eval_loss(pruned_llama, tiny_tokenizer,
                                                                               tmp_path):
    """The held-out loss of causal MRPC is read off the scoring forward pass; it equals Trainer's own."""
    from sparse_bench.harness_ext.finetune.data import load_training_data
    from sparse_bench.harness_ext.finetune.trainer import build_trainer, held_out_metrics

    model = load_checkpoint(AutoModelForCausalLM, pruned_llama)
    data = load_training_data("mrpc", tiny_tokenizer, classification=False, max_length=128, limit=4, eval_limit=6)
    trainer = build_trainer(model, tiny_tokenizer, FinetuneConfig(**TINY_RUN), data.train, tmp_path, [],
                            classification=False, progress=False)
    metrics = held_out_metrics(trainer, model, tiny_tokenizer, data.held_out, mrpc_causal=True)
    assert metrics["loss"] == pytest.approx(trainer.evaluate(data.held_out)["eval_loss"], rel=1e-5)
    assert {"acc", "f1", "auc", "yes_rate"} <= set(metrics)
