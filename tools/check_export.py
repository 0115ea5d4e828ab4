#!/usr/bin/env python3
"""Runs folders written by `combadistill export` outside CombaDistill and saves what they compute.

    python3 tools/check_export.py --backend core --out OUT EXPORT...            plain PyTorch (1.13+), no transformers
    python3 tools/check_export.py --backend transformers --out OUT EXPORT...    transformers' AutoModelForCausalLM

For each EXPORT it writes OUT/<folder name>.safetensors (CombaDistill's tests compare these with their own forward):
  input_ids       (2, 40) int64, seeded random ids below the vocabulary size
  logits_f32      (2, 40, V) one forward of input_ids in float32 on the CPU
  stepped_f32     (2, 40, V) the same ids read as a prefill of 11 tokens, then one token at a time through the cache
  greedy_ids      (1, 69) int64: 5 prompt ids and 64 greedy tokens (end-of-sequence ids do not stop it)
  labels          (2, 40) int64: input_ids with the last 10 positions of row 1 set to -100
  loss_f32        (1,) the causal-LM loss for those labels
With --backend transformers, also, on CUDA when there is one (else the CPU):
  logits_bf16, stepped_bf16, greedy_ids_bf16   the model loaded with dtype=bfloat16
  generate_ids    (1, 69) model.generate(max_new_tokens=64, do_sample=False) in float32
  snippet_ids     the ids the transformers snippet of docs/export.md printed (--docs), run as written
With --backend core and --docs, the plain-PyTorch snippet of docs/export.md is run as written as well.
OUT/summary.json lists versions and the comparisons made here (cache against prefill, generate against greedy).
"""
import argparse
import json
import os
import re
import struct
import sys

import torch

_DTYPES = {torch.float32: "F32", torch.int64: "I64"}


def save_safetensors(path, tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.dtype not in _DTYPES:
            t = t.float()
        data = t.numpy().tobytes()
        header[name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for b in blobs:
            f.write(b)


def fixed_inputs(vocab):
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, vocab, (2, 40), generator=g)
    labels = ids.clone()
    labels[1, 30:] = -100
    return ids, labels


def snippet(docs, marker):
    """The code block of docs/export.md that follows the comment <!-- MARKER -->."""
    text = open(docs).read()
    m = re.search(r"<!-- " + re.escape(marker) + r" -->\s*```python\n(.*?)```", text, re.S)
    if not m:
        raise SystemExit(f"{docs}: no python block after <!-- {marker} -->")
    return m.group(1)


def run_snippet(code, folder):
    """Runs a docs snippet with PATH replaced by the export folder; returns the last line it printed, parsed."""
    import io
    import contextlib
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace('"PATH"', repr(folder)), "docs/export.md", "exec"), {"__name__": "__snippet__"})
    lines = out.getvalue().strip().splitlines()
    return json.loads(lines[-1]) if lines else None


class CoreBackend:
    def __init__(self, folder):
        import importlib.util
        spec = importlib.util.spec_from_file_location("combadistill_comba_core", os.path.join(folder, "combadistill_comba_core.py"))
        core = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(core)    # this folder's copy, not one imported for an earlier export
        self.core = core
        self.folder = folder

    def load(self, dtype, device):
        return self.core.load_pretrained(self.folder, dtype=dtype, device=device)

    def logits(self, model, ids):
        return model(ids)

    def stepped(self, model, ids, prefill):
        cache = model.new_cache()
        pieces = [model(ids[:, :prefill], cache)]
        for t in range(prefill, ids.shape[1]):
            pieces.append(model(ids[:, t:t + 1], cache))
        return torch.cat(pieces, 1)

    def loss(self, model, ids, labels):
        return self.core.causal_lm_loss(model(ids), labels)


class TransformersBackend:
    def __init__(self, folder):
        self.folder = folder

    def load(self, dtype, device):
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(self.folder, trust_remote_code=True, dtype=dtype)
        if type(model).__name__ != "CombaDistillForCausalLM":
            raise SystemExit(f"{self.folder}: transformers built a {type(model).__name__}")
        model.generation_config.eos_token_id = None    # compare 64 tokens whatever they are
        return model.to(device).eval()

    def logits(self, model, ids):
        return model(input_ids=ids.to(model.device)).logits

    def stepped(self, model, ids, prefill):
        ids = ids.to(model.device)
        out = model(input_ids=ids[:, :prefill], use_cache=True)
        pieces, cache = [out.logits], out.past_key_values
        for t in range(prefill, ids.shape[1]):
            out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            pieces.append(out.logits)
            cache = out.past_key_values
        return torch.cat(pieces, 1)

    def loss(self, model, ids, labels):
        return model(input_ids=ids.to(model.device), labels=labels.to(model.device)).loss

    def generate(self, model, prompt, tokens):
        prompt = prompt.to(model.device)
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=tokens, do_sample=False,
                              pad_token_id=0)


def decode(backend, model, prompt, tokens):
    """Greedy decoding through one cache, a token per step, in the backend's own calls (not generate())."""
    if isinstance(backend, CoreBackend):
        return backend.core.greedy_generate(model, prompt, tokens)
    prompt = prompt.to(model.device)
    out = model(input_ids=prompt, use_cache=True)
    ids, cache = prompt, out.past_key_values
    logits = out.logits
    for _ in range(tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
        logits, cache = out.logits, out.past_key_values
    return ids.cpu()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["core", "transformers"], required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--docs", help="docs/export.md: also run its snippet for this backend on the first export")
    parser.add_argument("exports", nargs="+")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    summary = {"torch": torch.__version__, "backend": args.backend, "exports": {}}
    if args.backend == "transformers":
        import transformers
        summary["transformers"] = transformers.__version__
    gpu = "cuda" if torch.cuda.is_available() else "cpu"
    summary["bf16_device"] = gpu if args.backend == "transformers" else None

    failures = 0
    for n, folder in enumerate(args.exports):
        folder = os.path.abspath(folder)
        name = os.path.basename(folder.rstrip("/"))
        result, notes = {}, {}
        try:
            check(args, n, folder, result, notes, gpu)
        except Exception:   # keep going: the other exports and everything this one computed are still saved
            import traceback
            notes["error"] = traceback.format_exc()
            failures += 1
        if result:
            save_safetensors(os.path.join(args.out, name + ".safetensors"), result,
                             {"backend": args.backend, "torch": torch.__version__})
        summary["exports"][name] = notes
        print(name, json.dumps(notes), flush=True)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    if failures:
        raise SystemExit(f"{failures} export(s) failed; see {args.out}/summary.json")


def check(args, n, folder, result, notes, gpu):
    """Fills result with the tensors of the docstring, one group at a time, so a failure keeps what came before."""
    with open(os.path.join(folder, "config.json")) as f:
        vocab = json.load(f)["vocab_size"]
    backend = CoreBackend(folder) if args.backend == "core" else TransformersBackend(folder)
    ids, labels = fixed_inputs(vocab)
    prompt = ids[:1, :5]
    result.update(input_ids=ids, labels=labels)
    with torch.no_grad():
        model = backend.load(torch.float32, "cpu")
        result["logits_f32"] = backend.logits(model, ids).float()
        result["stepped_f32"] = backend.stepped(model, ids, 11).float()
        notes["stepped_vs_prefill_f32"] = float((result["stepped_f32"] - result["logits_f32"]).abs().max())
        result["loss_f32"] = backend.loss(model, ids, labels).float().reshape(1)
        result["greedy_ids"] = decode(backend, model, prompt, 64)
        if args.backend == "transformers":
            result["generate_ids"] = backend.generate(model, prompt, 64).cpu()
            notes["generate_equals_greedy"] = bool(torch.equal(result["generate_ids"], result["greedy_ids"]))
            del model
            bf16 = backend.load(torch.bfloat16, gpu)
            result["logits_bf16"] = backend.logits(bf16, ids).float()
            result["stepped_bf16"] = backend.stepped(bf16, ids, 11).float()
            notes["stepped_vs_prefill_bf16"] = float((result["stepped_bf16"] - result["logits_bf16"]).abs().max())
            result["greedy_ids_bf16"] = decode(backend, bf16, prompt, 64)
            del bf16
    if args.docs and n == 0:
        marker = "tested: transformers" if args.backend == "transformers" else "tested: plain torch"
        printed = run_snippet(snippet(args.docs, marker), folder)
        result["snippet_ids"] = torch.tensor([printed], dtype=torch.int64)
        notes["snippet"] = marker


if __name__ == "__main__":
    main()
