# Written by CombaDistill's `combadistill export`.
"""A CombaDistill Comba student as a transformers causal LM (load with trust_remote_code=True).

The maths lives in combadistill_comba_core (plain PyTorch); this file adapts it to transformers: loading,
`generate()` with a recurrent cache, `labels` and `loss`, hidden states.
"""
import os

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .combadistill_comba_core import (BackboneMixin, CombaAttention, CombaDistillCache, DecoderLayer, ShortConvolution,
                                      causal_lm_loss, chunkwise_comba, l2_normalize, logits_of)
from .configuration_combadistill_comba import CombaDistillConfig


def _fla_sequence_op():
    """fla's chunk_comba, taken only when COMBADISTILL_USE_FLA=1 and fla imports; None otherwise.

    fla's recurrence reads the un-decayed state with an auxiliary key p and then decays and writes, which is this
    model's recurrence with p = lambda k^; the read-out is S q with q = q^ - d k^. The op is handed pre-normalised
    inputs (use_qk_l2norm_in_kernel=False, since its epsilon differs) and keys and values expanded to every query
    head. It has not been checked against this model's outputs by CombaDistill's tests, which is why it is opt-in.
    """
    if os.environ.get("COMBADISTILL_USE_FLA") != "1":
        return None
    try:
        from fla.ops.comba import chunk_comba
    except ImportError:
        return None

    def op(q, k, v, g, beta, lam, d, scale, initial_state, chunk_size):
        if not q.is_cuda or q.dtype == torch.float64 or q.shape[-1] > 256:
            return chunkwise_comba(q, k, v, g, beta, lam, d, scale, initial_state, chunk_size)
        groups = q.shape[1] // k.shape[1]
        f32 = torch.float32
        k_hat = l2_normalize(k.to(f32)).repeat_interleave(groups, dim=1)
        values = v.to(f32).repeat_interleave(groups, dim=1)
        readout = l2_normalize(q.to(f32)) - d.to(f32).view(1, -1, 1, 1) * k_hat
        p = lam.to(f32).view(1, -1, 1, 1) * k_hat
        o, state = chunk_comba(q=readout.transpose(1, 2).contiguous(), k=k_hat.transpose(1, 2).contiguous(),
                               v=values.transpose(1, 2).contiguous(), p=p.transpose(1, 2).contiguous(),
                               g=g.to(f32).transpose(1, 2).contiguous(), beta=beta.to(f32).transpose(1, 2).contiguous(),
                               scale=scale, initial_state=None if initial_state is None else initial_state.to(f32),
                               output_final_state=True, use_qk_l2norm_in_kernel=False)
        return o.transpose(1, 2).to(q.dtype), state

    return op


class CombaDistillPreTrainedModel(PreTrainedModel):
    config_class = CombaDistillConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DecoderLayer"]
    _is_stateful = True
    _tied_weights_keys = {}

    @classmethod
    def _supports_default_dynamic_cache(cls):
        return False   # the decoding state is a CombaDistillCache, made by the model itself

    def _init_weights(self, module):
        """For weights a checkpoint did not provide (a model built from a config): the converter's scheme."""
        def fresh(p):
            return p is not None and not getattr(p, "_is_hf_initialized", False) and not p.is_meta
        if getattr(module, "_is_hf_initialized", False):
            return
        std = getattr(self.config, "initializer_range", 0.02)
        with torch.no_grad():
            if isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
                if fresh(module.weight):
                    module.weight.normal_(0.0, std)
                if isinstance(module, torch.nn.Linear) and fresh(module.bias):
                    module.bias.zero_()
            elif isinstance(module, ShortConvolution) and fresh(module.weight):
                module.weight.zero_()
                module.weight[:, :, -1] = 1


class CombaDistillModel(CombaDistillPreTrainedModel, BackboneMixin):
    def __init__(self, config):
        super().__init__(config)
        self.build_backbone(config)
        op = _fla_sequence_op()
        if op is not None:
            for layer in self.layers:
                if isinstance(layer.self_attn, CombaAttention):
                    layer.self_attn.sequence_op = op
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, output_hidden_states=None, return_dict=None, **kwargs):
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        _check_mask(attention_mask)
        use_cache = self.config.use_cache if use_cache is None else use_cache
        cache = _own_cache(past_key_values)
        if cache is None and use_cache:
            cache = CombaDistillCache(len(self.layers))
        hidden = [] if output_hidden_states else None
        h = self.backbone_forward(input_ids, inputs_embeds, cache, hidden)
        return BaseModelOutputWithPast(last_hidden_state=h, past_key_values=cache if use_cache else None,
                                       hidden_states=tuple(hidden) if hidden is not None else None)


class CombaDistillForCausalLM(CombaDistillPreTrainedModel, GenerationMixin):
    def __init__(self, config):
        super().__init__(config)
        self.model = CombaDistillModel(config)
        self.lm_head = None if config.tie_word_embeddings else \
            torch.nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, labels=None, use_cache=None, output_hidden_states=None, return_dict=None,
                logits_to_keep=0, cache_position=None, **kwargs):
        if labels is not None and use_cache is None:
            use_cache = False
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=past_key_values,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state
        if isinstance(logits_to_keep, int) and logits_to_keep > 0:
            hidden = hidden[:, -logits_to_keep:]
        elif isinstance(logits_to_keep, torch.Tensor):
            hidden = hidden[:, logits_to_keep]
        logits = logits_of(hidden, self.lm_head, self.model.embed_tokens)
        loss = None
        if labels is not None:
            loss_function = getattr(self, "loss_function", None)
            if loss_function is not None:
                loss = loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
            else:
                loss = causal_lm_loss(logits, labels)
        result = CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=out.past_key_values,
                                        hidden_states=out.hidden_states)
        return result.to_tuple() if return_dict is False else result

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, inputs_embeds=None,
                                      use_cache=True, **kwargs):
        cache = _own_cache(past_key_values)
        inputs = {"past_key_values": cache, "use_cache": use_cache, "attention_mask": attention_mask}
        if cache is not None and cache.seen_tokens > 0:
            inputs["input_ids"] = input_ids[:, cache.seen_tokens:]    # only the tokens the state has not read
        elif inputs_embeds is not None:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids
        if "logits_to_keep" in kwargs:
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        return past_key_values.reorder_cache(beam_idx)


def _own_cache(past_key_values):
    """Our cache, or None for none or an empty cache of another kind that a transformers version may hand in."""
    if past_key_values is None or isinstance(past_key_values, CombaDistillCache):
        return past_key_values
    length = past_key_values.get_seq_length() if hasattr(past_key_values, "get_seq_length") else None
    if length == 0:
        return None
    raise TypeError(f"past_key_values is a {type(past_key_values).__name__}; this model decodes with a CombaDistillCache")


def _check_mask(attention_mask):
    """Padding on the right (training batches) is fine: later positions never reach earlier ones. Padding on the
    left would run through the recurrence, so it is refused."""
    if attention_mask is None or bool(attention_mask.all()):
        return
    m = attention_mask.to(torch.int64)
    if bool((m[:, 1:] > m[:, :-1]).any()):
        raise ValueError("attention_mask pads on the left; a Comba model reads every token into its state, so pad "
                         "on the right (tokenizer.padding_side = 'right') or generate one sequence at a time")


__all__ = ["CombaDistillConfig", "CombaDistillModel", "CombaDistillForCausalLM", "CombaDistillPreTrainedModel",
           "DecoderLayer"]
