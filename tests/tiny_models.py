"""Tiny random Hugging Face models with a real (trained) BPE tokenizer, built offline in seconds.

`build_tiny_model(kind, out_dir)` writes a normal checkpoint directory (config, safetensors, tokenizer) that
`from_pretrained`, `lm_eval --model hf` and `--model sparse-hf` load. Kinds: llama, gpt2, opt (decoders),
bert, roberta, deberta-v2 (encoders, masked-LM head), bart, t5, m2m100 (encoder-decoders). Widths are multiples
of 8 so 2:4 and 4:8 apply.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSeq2SeqLM,
    BartConfig,
    BertConfig,
    DebertaV2Config,
    GPT2Config,
    LlamaConfig,
    M2M100Config,
    OPTConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    T5Config,
)

VOCAB_SIZE = 512
HIDDEN = 64
LAYERS = 2
HEADS = 4
FFN = 128
CONTEXT = 512
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<mask>"]


def data_dir() -> Path:
    """The shared real data (SPARSE_BENCH_DATA_DIR, else ../shared/data beside the repository)."""
    return Path(os.environ.get("SPARSE_BENCH_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data")


def build_tokenizer(max_chars: int = 400_000) -> PreTrainedTokenizerFast:
    """A byte-level BPE with VOCAB_SIZE entries trained on the start of WikiText-2 test."""
    text = (data_dir() / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")[:max_chars]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(text.splitlines(), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=CONTEXT)


def _config(kind: str, tokenizer: PreTrainedTokenizerFast):
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    vocab = len(tokenizer)
    if kind == "llama":
        return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                           num_attention_heads=HEADS, num_key_value_heads=HEADS // 2,
                           max_position_embeddings=CONTEXT, tie_word_embeddings=True, **ids)
    if kind == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=FFN,
                          n_positions=CONTEXT, **ids)
    if kind == "opt":
        return OPTConfig(vocab_size=vocab, hidden_size=HIDDEN, ffn_dim=FFN, num_hidden_layers=LAYERS,
                         num_attention_heads=HEADS, max_position_embeddings=CONTEXT, word_embed_proj_dim=HIDDEN,
                         **ids)
    if kind == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                          num_attention_heads=HEADS, max_position_embeddings=CONTEXT,
                          pad_token_id=tokenizer.pad_token_id)
    if kind == "roberta":  # positions start after the padding index: CONTEXT usable tokens
        return RobertaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                             num_attention_heads=HEADS, max_position_embeddings=CONTEXT + tokenizer.pad_token_id + 1,
                             type_vocab_size=1, **ids)
    if kind == "deberta-v2":
        return DebertaV2Config(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=FFN,
                               num_hidden_layers=LAYERS, num_attention_heads=HEADS, max_position_embeddings=CONTEXT,
                               relative_attention=True, position_buckets=32, pos_att_type=["p2c", "c2p"],
                               position_biased_input=False, type_vocab_size=0, pad_token_id=tokenizer.pad_token_id)
    if kind == "bart":
        return BartConfig(vocab_size=vocab, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
                          encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                          decoder_ffn_dim=FFN, max_position_embeddings=CONTEXT,
                          decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None, **ids)
    if kind == "m2m100":
        return M2M100Config(vocab_size=vocab, d_model=HIDDEN, encoder_layers=LAYERS, decoder_layers=LAYERS,
                            encoder_attention_heads=HEADS, decoder_attention_heads=HEADS, encoder_ffn_dim=FFN,
                            decoder_ffn_dim=FFN, max_position_embeddings=CONTEXT,
                            decoder_start_token_id=tokenizer.eos_token_id, **ids)
    if kind == "t5":
        return T5Config(vocab_size=vocab, d_model=HIDDEN, d_kv=HIDDEN // HEADS, d_ff=FFN, num_layers=LAYERS,
                        num_decoder_layers=LAYERS, num_heads=HEADS, relative_attention_num_buckets=8,
                        decoder_start_token_id=tokenizer.pad_token_id, pad_token_id=tokenizer.pad_token_id,
                        eos_token_id=tokenizer.eos_token_id)
    raise ValueError(f"unknown tiny model kind {kind!r}")


AUTO_CLASSES = {"llama": AutoModelForCausalLM, "gpt2": AutoModelForCausalLM, "opt": AutoModelForCausalLM,
                "bert": AutoModelForMaskedLM, "roberta": AutoModelForMaskedLM, "deberta-v2": AutoModelForMaskedLM,
                "bart": AutoModelForSeq2SeqLM, "t5": AutoModelForSeq2SeqLM, "m2m100": AutoModelForSeq2SeqLM}
KINDS = tuple(AUTO_CLASSES)


def build_tiny_model(kind: str, out_dir: Path, tokenizer: PreTrainedTokenizerFast | None = None,
                     seed: int = 0) -> Path:
    """Write a tiny random `kind` model + tokenizer to `out_dir` (fp32 safetensors); returns `out_dir`."""
    tokenizer = tokenizer or build_tokenizer()
    torch.manual_seed(seed)
    model = AUTO_CLASSES[kind].from_config(_config(kind, tokenizer))
    with torch.no_grad():  # spread weight scales so magnitude-based methods see structure, not noise
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.05)
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":  # python tests/tiny_models.py OUT_DIR [KIND ...]: e.g. the family seed study's models
    import sys

    if len(sys.argv) < 2 or any(kind not in KINDS for kind in sys.argv[2:]):
        sys.exit(f"usage: python tests/tiny_models.py OUT_DIR [KIND ...] (kinds: {', '.join(KINDS)}; default: all)")
    shared = build_tokenizer()
    for kind in sys.argv[2:] or KINDS:
        print(build_tiny_model(kind, Path(sys.argv[1]) / kind, shared))
