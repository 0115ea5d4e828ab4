#!/usr/bin/env python3
"""Reference data from Hugging Face transformers for Mistral's sliding-window attention, and a pytorch_model.bin
written by a current torch through save_pretrained.

Run on a host with torch, transformers and safetensors (no network needed):

    python3 tools/hf_mistral_reference.py --out OUT

It writes four flat files under OUT:
  config.json                      a small random Mistral (GQA 4/2 heads, sliding_window 4), as save_pretrained
  model.safetensors                writes them (float32)
  pytorch_model.bin                the same weights through torch.save(model.state_dict()) (a zip pickle)
  mistral_sliding_logits.safetensors  input_ids [2, 12], logits_f32 (eager attention, the window in force) and
                                   logits_full_f32 (the same weights with sliding_window=None), computed on the CPU

The first three belong in tests/CombaDistill.Tests/Data/hf/mistral_sliding/, the logits in tests/CombaDistill.Tests/Data/hf/.
"""
import argparse
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import MistralConfig, MistralForCausalLM

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_reference import INPUT_IDS, logits_of, metadata, randomize  # noqa: E402  (the same inputs and weight scale)


def config(window):
    return MistralConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
        sliding_window=window, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, attn_implementation="eager")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    out = parser.parse_args().out
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)

    model = MistralForCausalLM(config(window=4))
    randomize(model, seed=5)
    windowed = logits_of(model, INPUT_IDS)
    full_model = MistralForCausalLM(config(window=None))
    full_model.load_state_dict(model.state_dict())
    full = logits_of(full_model, INPUT_IDS)
    assert torch.allclose(windowed[:, :4], full[:, :4], atol=1e-5), "the first 4 positions see the same keys"
    assert (windowed[:, 4:] - full[:, 4:]).abs().max() > 1e-3, "the window must matter past position 4"

    with tempfile.TemporaryDirectory() as tmp:
        # transformers 5 writes safetensors only (its save_pretrained has no safe_serialization any more)
        model.save_pretrained(tmp)
        shutil.copy(os.path.join(tmp, "config.json"), os.path.join(out, "config.json"))
        shutil.copy(os.path.join(tmp, "model.safetensors"), os.path.join(out, "model.safetensors"))
    # what transformers before 5 wrote with safe_serialization=False, and what its migration guide says to do now
    torch.save(model.state_dict(), os.path.join(out, "pytorch_model.bin"))
    save_file({"input_ids": INPUT_IDS, "logits_f32": windowed, "logits_full_f32": full},
              os.path.join(out, "mistral_sliding_logits.safetensors"),
              metadata())
    print("wrote", sorted(os.listdir(out)), "max |windowed - full| past the window:",
          float((windowed[:, 4:] - full[:, 4:]).abs().max()))


if __name__ == "__main__":
    main()
