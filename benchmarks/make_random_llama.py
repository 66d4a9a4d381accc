"""Write a random-weight Llama-shaped checkpoint (default: Llama-3.2-3B's shape, fp16, ~6.4 GB) one block at a time.

For `bench_stream.py`: a model larger than this machine's budget for one process, made locally (nothing comes
from the hub). Shapes follow Llama-3.2-3B (hidden 3072, 28 layers, MLP 8192, 24 heads, 8 key/value heads,
vocabulary 128,256, tied embeddings); weights are N(0, 0.02), norms 1. The generator itself holds one block at
a time: each block is its own safetensors shard, then the index, config and the tokenizer of a given model
(the vocabulary is only used to tokenize calibration text, so any tokenizer with fewer ids works).

    python benchmarks/make_random_llama.py /work/bench_data/llama-3b-random --tokenizer-from smollm2-135m
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, LlamaConfig

from sparse_bench.harness_ext.models import find_or_prepare_model


def block_tensors(index: int, config: LlamaConfig, dtype: torch.dtype, generator: torch.Generator) -> dict:
    hidden, mlp = config.hidden_size, config.intermediate_size
    head = hidden // config.num_attention_heads
    shapes = {"self_attn.q_proj": (hidden, hidden), "self_attn.k_proj": (config.num_key_value_heads * head, hidden),
              "self_attn.v_proj": (config.num_key_value_heads * head, hidden), "self_attn.o_proj": (hidden, hidden),
              "mlp.gate_proj": (mlp, hidden), "mlp.up_proj": (mlp, hidden), "mlp.down_proj": (hidden, mlp)}
    prefix = f"model.layers.{index}."
    tensors = {f"{prefix}{name}.weight": torch.empty(shape).normal_(0, 0.02, generator=generator).to(dtype)
               for name, shape in shapes.items()}
    for norm in ("input_layernorm", "post_attention_layernorm"):
        tensors[f"{prefix}{norm}.weight"] = torch.ones(hidden, dtype=dtype)
    return tensors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--hidden", type=int, default=3072)
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--mlp", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=24)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--tokenizer-from", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    config = LlamaConfig(hidden_size=args.hidden, intermediate_size=args.mlp, num_hidden_layers=args.layers,
                         num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                         max_position_embeddings=4096, tie_word_embeddings=True, rope_theta=500000.0,
                         architectures=["LlamaForCausalLM"], dtype=args.dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(args.seed)
    shards = args.layers + 1
    weight_map, total = {}, 0
    outside = {"model.embed_tokens.weight": torch.empty(args.vocab, args.hidden).normal_(0, 0.02, generator=generator)
               .to(dtype), "model.norm.weight": torch.ones(args.hidden, dtype=dtype)}
    for number, tensors in enumerate([outside] + [None] * args.layers, start=1):
        tensors = tensors if tensors is not None else block_tensors(number - 2, config, dtype, generator)
        name = f"model-{number:05d}-of-{shards:05d}.safetensors"
        save_file(tensors, args.out / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, name))
        total += sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
        print(f"wrote {name} ({sum(t.numel() for t in tensors.values()):,} parameters)", flush=True)
        del tensors
    (args.out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(args.out)
    AutoTokenizer.from_pretrained(find_or_prepare_model(args.tokenizer_from)).save_pretrained(args.out)
    print(f"{args.out}: {total / 2**30:.2f} GiB of weights")


if __name__ == "__main__":
    main()
