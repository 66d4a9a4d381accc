"""What a parameter is, from its name alone: transformer block, encoder/decoder side, module type.

Names are the dotted `state_dict` keys of Hugging Face models, so the same rules serve an in-memory model
and a checkpoint read tensor by tensor. Covered and tested: Llama (and Mistral/Qwen-style decoders), GPT-2,
OPT, BERT/RoBERTa, BART; the rules also fit T5, GPT-NeoX, Falcon and GPT-J names.

Module types (canonical, so models compare with each other; `ParamKind.leaf` keeps the native name):
  attn.q / attn.k / attn.v / attn.o / attn.qkv (fused, GPT-2 c_attn) / attn.other
  cross_attn.* (the same, for encoder-decoder cross-attention)
  mlp.up (up_proj, fc1, c_fc, BERT intermediate) / mlp.gate / mlp.gate_up (fused) / mlp.down (down_proj,
  fc2, GPT-2 mlp.c_proj, BERT output) / mlp.router (MoE) / mlp.other
  embed.tokens / embed.positions / embed.token_type / embed.other, lm_head, head (classifier, pooler,
  BERT's cls transform), norm (norm weights), bias (every bias, whatever its module), other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BLOCK_PATTERN = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
SIDE_PATTERN = re.compile(r"(?:^|\.)(encoder|decoder)(?:\.|$)")
NORM_PATTERN = re.compile(r"norm|^ln(?:_|\d|$)", re.IGNORECASE)

ATTENTION_MODULES = {"attn", "self_attn", "attention", "self_attention", "selfattention", "attn_layer"}
CROSS_ATTENTION_MODULES = {"encoder_attn", "encdecattention", "crossattention", "cross_attn", "cross_attention"}
MLP_MODULES = {"mlp", "feed_forward", "ffn", "intermediate", "densereludense", "densegatedactdense",
               "block_sparse_moe", "experts"}

ATTENTION_LEAVES = {
    "q_proj": "q", "query": "q", "q": "q", "q_lin": "q", "wq": "q",
    "k_proj": "k", "key": "k", "k": "k", "k_lin": "k", "wk": "k",
    "v_proj": "v", "value": "v", "v": "v", "v_lin": "v", "wv": "v",
    "o_proj": "o", "out_proj": "o", "o": "o", "out_lin": "o", "wo": "o", "c_proj": "o", "dense": "o",
    "c_attn": "qkv", "query_key_value": "qkv", "qkv_proj": "qkv", "wqkv": "qkv", "qkv": "qkv",
}
MLP_LEAVES = {
    "up_proj": "up", "fc1": "up", "c_fc": "up", "fc_in": "up", "wi": "up", "wi_1": "up", "w3": "up",
    "dense_h_to_4h": "up",
    "gate_proj": "gate", "wi_0": "gate", "w1": "gate",
    "gate_up_proj": "gate_up",
    "down_proj": "down", "fc2": "down", "fc_out": "down", "wo": "down", "w2": "down", "c_proj": "down",
    "dense_4h_to_h": "down",
    "gate": "router", "router": "router",
}
TOKEN_EMBEDDINGS = {"embed_tokens", "wte", "word_embeddings", "shared", "embed_in", "tok_embeddings"}
POSITION_EMBEDDINGS = {"wpe", "embed_positions", "position_embeddings"}
LM_HEADS = {"lm_head", "embed_out"}
HEAD_MODULES = {"cls", "classifier", "score", "pooler", "qa_outputs"}

BLOCK_LINEAR_PREFIXES = ("attn.", "cross_attn.", "mlp.")  # the projections inside blocks that pruning targets


@dataclass(frozen=True)
class ParamKind:
    """Where a parameter sits: `block` index (None outside blocks), `side` ('encoder'/'decoder'/None as
    named), canonical `module_type`, and `leaf`, the native module name (e.g. 'fc1', 'c_attn')."""

    block: int | None
    side: str | None
    module_type: str
    leaf: str


def classify(name: str) -> ParamKind:
    """Classify one dotted parameter name, e.g. 'model.layers.3.self_attn.q_proj.weight' -> block 3, attn.q."""
    parts = name.split(".")
    modules, parameter = parts[:-1], parts[-1]
    leaf = modules[-1] if modules else parameter
    block_match = BLOCK_PATTERN.search(name)
    side_match = SIDE_PATTERN.search(".".join(modules[:-1]))  # a module *inside* encoder/decoder, not
    # a leaf called decoder (BERT's cls.predictions.decoder is the output projection)
    return ParamKind(block=int(block_match.group(1)) if block_match else None,
                     side=side_match.group(1) if side_match else None,
                     module_type=_module_type(modules, parameter, leaf), leaf=leaf)


def is_block_linear(module_type: str) -> bool:
    """True for the attention and MLP projections inside blocks: what pruning methods target."""
    return module_type.startswith(BLOCK_LINEAR_PREFIXES)


def _module_type(modules: list[str], parameter: str, leaf: str) -> str:
    if "bias" in parameter:
        return "bias"
    if NORM_PATTERN.search(leaf):
        return "norm"
    if modules[:3] == ["cls", "predictions", "decoder"]:  # BERT's output projection
        return "lm_head"
    if modules and modules[0] in LM_HEADS:  # RoBERTa's lm_head holds dense + layer_norm + decoder
        return "lm_head" if len(modules) == 1 or leaf == "decoder" else "head"
    embedding = _embedding_type(leaf)
    if embedding:
        return embedding
    lowered = [module.lower() for module in modules]
    if any(module in CROSS_ATTENTION_MODULES for module in lowered):
        return "cross_attn." + ATTENTION_LEAVES.get(leaf.lower(), "other")
    if any(module in ATTENTION_MODULES for module in lowered):
        return "attn." + ATTENTION_LEAVES.get(leaf.lower(), "other")
    if lowered and lowered[0] in HEAD_MODULES:
        return "head"
    if leaf.lower() in MLP_LEAVES:
        return "mlp." + MLP_LEAVES[leaf.lower()]
    if leaf == "dense" and len(modules) >= 2 and modules[-2] in ("intermediate", "output"):
        return "mlp.up" if modules[-2] == "intermediate" else "mlp.down"  # BERT-style feed-forward
    if any(module in MLP_MODULES for module in lowered):
        return "mlp.other"
    return "other"


def _embedding_type(leaf: str) -> str | None:
    if leaf in TOKEN_EMBEDDINGS:
        return "embed.tokens"
    if leaf in POSITION_EMBEDDINGS:
        return "embed.positions"
    if leaf == "token_type_embeddings":
        return "embed.token_type"
    if "embed" in leaf.lower():
        return "embed.other"
    return None
