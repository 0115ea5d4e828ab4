#!/usr/bin/env python3
"""Reference data from Hugging Face transformers for CombaDistill's Llama-family teacher.

Run on a host with torch, transformers and safetensors (no network needed):

    python tools/hf_reference.py --out OUT [--stories260k FOLDER]

It writes, under OUT:
  llama3_gqa_bf16/                 a small random Llama (GQA 6/2, llama3 rope scaling), bfloat16,
                                   saved sharded with save_pretrained
  llama3_gqa_bf16_logits.safetensors   input_ids, logits_bf16 (the model as stored), logits_f32 (the
                                   same weights widened to float32)
  qwen2_tied/                      a small random Qwen2 (q/k/v biases, tied embeddings), float32
  qwen2_tied_logits.safetensors    input_ids, logits_f32
  stories260K_logits.safetensors   (with --stories260k: a folder made by `combadistill import`)
                                   logits_after_bos [1, V], input_ids / logits for a short prompt,
                                   greedy_ids: 200 greedy tokens from BOS

All logits are float32, computed on the CPU with eager attention.
"""
import argparse
import math
import os

import torch
import transformers
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

INPUT_IDS = torch.tensor([[1, 5, 17, 42, 8, 63, 2, 30, 11, 77, 4, 19],
                          [1, 88, 3, 3, 50, 21, 9, 70, 33, 14, 60, 7]], dtype=torch.int64)


def metadata():
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def randomize(model, seed):
    """Weights of a useful scale (transformers' init, std 0.02, makes nearly constant logits)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if "norm" in name:
                value = 1 + 0.2 * noise
            elif name.endswith(".bias"):
                value = 0.1 * noise
            elif "embed_tokens" in name:
                value = noise
            else:
                value = noise / math.sqrt(p.shape[1])
            p.copy_(value.to(p.dtype))


@torch.no_grad()
def logits_of(model, ids):
    model.eval()
    return model(input_ids=ids).logits.float().contiguous()


def llama3_gqa_bf16(out):
    config = LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
        rms_norm_eps=1e-5, rope_theta=500000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 256},
        bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    model = LlamaForCausalLM(config)
    randomize(model, seed=1)
    model = model.to(torch.bfloat16)
    folder = os.path.join(out, "llama3_gqa_bf16")
    model.save_pretrained(folder, max_shard_size="20KB", safe_serialization=True)
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json")), "expected a sharded checkpoint"
    logits_bf16 = logits_of(model, INPUT_IDS)
    logits_f32 = logits_of(model.float(), INPUT_IDS)
    save_file({"input_ids": INPUT_IDS, "logits_bf16": logits_bf16, "logits_f32": logits_f32},
              os.path.join(out, "llama3_gqa_bf16_logits.safetensors"), metadata())


def qwen2_tied(out):
    config = Qwen2Config(
        vocab_size=89, hidden_size=32, intermediate_size=72, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False,
        bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    model = Qwen2ForCausalLM(config)
    randomize(model, seed=2)
    model.tie_weights()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert model.model.layers[0].self_attn.q_proj.bias is not None
    folder = os.path.join(out, "qwen2_tied")
    model.save_pretrained(folder, safe_serialization=True)
    save_file({"input_ids": INPUT_IDS, "logits_f32": logits_of(model, INPUT_IDS)},
              os.path.join(out, "qwen2_tied_logits.safetensors"), metadata())


def stories260k(folder, out):
    model = AutoModelForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, attn_implementation="eager")
    bos = torch.tensor([[1]], dtype=torch.int64)
    prompt = torch.tensor([[1, 403, 407, 261, 378]], dtype=torch.int64)  # BOS " Once" " upon" " a" " time"
    with torch.no_grad():
        # like llama2.c's run, no stop at EOS: always 200 tokens
        greedy = model.generate(bos, do_sample=False, max_new_tokens=200, eos_token_id=None, pad_token_id=0)
    save_file({"logits_after_bos": logits_of(model, bos)[0].contiguous(),
               "input_ids": prompt, "logits": logits_of(model, prompt),
               "greedy_ids": greedy[0, 1:].contiguous()},
              os.path.join(out, "stories260K_logits.safetensors"), metadata())
    top = torch.topk(logits_of(model, bos)[0, 0], 5)
    print("stories260K top-5 after BOS:", [(int(i), round(float(v), 4)) for v, i in zip(top.values, top.indices)])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder for the checkpoints and logits")
    parser.add_argument("--stories260k", help="a folder written by `combadistill import` from stories260K.bin")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    llama3_gqa_bf16(args.out)
    qwen2_tied(args.out)
    if args.stories260k:
        stories260k(args.stories260k, args.out)
    print("wrote", sorted(os.listdir(args.out)))


if __name__ == "__main__":
    main()
