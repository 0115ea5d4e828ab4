#!/usr/bin/env python3
"""Small pytorch_model.bin fixtures for CombaDistill's tests, written by torch.save (any torch since 1.6).

    python3 tools/make_pytorch_fixtures.py --out tests/CombaDistill.Tests/Data/pytorch

Writes, under OUT, a tiny Llama-shaped state dict (vocabulary 32, hidden 16, one layer, GQA 2/1 heads):
  f32/, f16/, bf16/          config.json, pytorch_model.bin (torch.save of the state dict in that dtype) and
                             model.safetensors with the same tensors, written here byte by byte (no safetensors
                             package needed), to compare against.
  sharded_bf16/              the bf16 tensors in two shards pytorch_model-0000N-of-00002.bin with
                             pytorch_model.bin.index.json, as transformers' save_pretrained writes them.
  views_f32/                 tensors that are views into shared storages (tied embeddings, a slice at an offset,
                             a transposed non-contiguous tensor), as torch.save keeps them.
  refused/                   pickles that must be refused: code.bin (an object whose pickle calls os.system),
                             module.bin (a whole nn.Module), namespace.bin (tensors beside an argparse.Namespace),
                             legacy.bin (torch's pre-1.6 non-zip format).
Nothing here is ever unpickled by CombaDistill's tests with Python; the files are only read.
"""
import argparse
import json
import os
import struct

import torch

SAFETENSORS_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def state_dict(seed):
    g = torch.Generator().manual_seed(seed)
    hidden, inter, vocab, heads, kv, head_dim = 16, 24, 32, 2, 1, 8
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.layers.0.input_layernorm.weight": (hidden,),
        "model.layers.0.self_attn.q_proj.weight": (heads * head_dim, hidden),
        "model.layers.0.self_attn.k_proj.weight": (kv * head_dim, hidden),
        "model.layers.0.self_attn.v_proj.weight": (kv * head_dim, hidden),
        "model.layers.0.self_attn.o_proj.weight": (hidden, heads * head_dim),
        "model.layers.0.post_attention_layernorm.weight": (hidden,),
        "model.layers.0.mlp.gate_proj.weight": (inter, hidden),
        "model.layers.0.mlp.up_proj.weight": (inter, hidden),
        "model.layers.0.mlp.down_proj.weight": (hidden, inter),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    return {name: torch.randn(shape, generator=g) * 0.3 for name, shape in shapes.items()}


def config(dtype_name, tie=False):
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32, "hidden_size": 16,
        "intermediate_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 8, "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": tie, "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": dtype_name,
    }


def raw_bytes(t):
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().tobytes()
    return t.numpy().tobytes()


def write_safetensors(path, tensors):
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        data = raw_bytes(tensors[name])
        header[name] = {"dtype": SAFETENSORS_DTYPE[tensors[name].dtype], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def write_config(folder, dtype_name, tie=False):
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config(dtype_name, tie), f, indent=2)


class RunsCode:
    def __reduce__(self):
        return (os.system, ("echo this pickle runs code",))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    out = parser.parse_args().out
    base = state_dict(seed=13)

    for dtype, name in [(torch.float32, "float32"), (torch.float16, "float16"), (torch.bfloat16, "bfloat16")]:
        folder = os.path.join(out, {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}[name])
        os.makedirs(folder, exist_ok=True)
        tensors = {k: v.to(dtype) for k, v in base.items()}
        torch.save(tensors, os.path.join(folder, "pytorch_model.bin"))
        write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
        write_config(folder, name)

    folder = os.path.join(out, "sharded_bf16")
    os.makedirs(folder, exist_ok=True)
    tensors = {k: v.to(torch.bfloat16) for k, v in base.items()}
    names = list(tensors)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{len(shards):05d}.bin"
        torch.save({k: tensors[k] for k in shard}, os.path.join(folder, file))
        weight_map.update({k: file for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    write_safetensors(os.path.join(folder, "model.safetensors"), tensors)
    write_config(folder, "bfloat16")

    # Views: lm_head shares the embedding's storage (tied), q_proj is a slice at an offset of a larger storage that
    # k_proj also lives in, and o_proj is stored transposed (non-contiguous).
    folder = os.path.join(out, "views_f32")
    os.makedirs(folder, exist_ok=True)
    views = dict(base)
    qk = torch.cat([base["model.layers.0.self_attn.k_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]])
    views["model.layers.0.self_attn.k_proj.weight"] = qk[:8]
    views["model.layers.0.self_attn.q_proj.weight"] = qk[8:]
    views["model.layers.0.self_attn.o_proj.weight"] = base["model.layers.0.self_attn.o_proj.weight"].t().contiguous().t()
    views["lm_head.weight"] = views["model.embed_tokens.weight"]
    assert views["model.layers.0.self_attn.q_proj.weight"].storage_offset() == 8 * 16
    assert not views["model.layers.0.self_attn.o_proj.weight"].is_contiguous()
    torch.save(views, os.path.join(folder, "pytorch_model.bin"))
    write_safetensors(os.path.join(folder, "model.safetensors"), {k: v.contiguous() for k, v in views.items()})
    write_config(folder, "float32", tie=False)

    folder = os.path.join(out, "refused")
    os.makedirs(folder, exist_ok=True)
    small = {"model.norm.weight": base["model.norm.weight"]}
    torch.save({**small, "hook": RunsCode()}, os.path.join(folder, "code.bin"))
    torch.save(torch.nn.Linear(2, 2), os.path.join(folder, "module.bin"))
    torch.save({**small, "args": argparse.Namespace(lr=0.1)}, os.path.join(folder, "namespace.bin"))
    torch.save(small, os.path.join(folder, "legacy.bin"), _use_new_zipfile_serialization=False)
    print("torch", torch.__version__, "wrote", sorted(os.listdir(out)))


if __name__ == "__main__":
    main()
