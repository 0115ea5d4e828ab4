# Written by CombaDistill's `combadistill export`.
"""Configuration of a CombaDistill Comba student for transformers (model_type "combadistill_comba")."""
try:
    from transformers import PreTrainedConfig as _BaseConfig
except ImportError:   # transformers 4.x
    from transformers import PretrainedConfig as _BaseConfig


class CombaDistillConfig(_BaseConfig):
    """The teacher's architecture fields (Llama, Mistral or Qwen2), which layers kept softmax attention, and the
    comba_* options of the Comba layers. Field meanings are those of combadistill_comba_core.resolve."""

    model_type = "combadistill_comba"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=None, head_dim=None, max_position_embeddings=2048,
                 rms_norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None, attention_bias=False, hidden_act="silu",
                 teacher_model_type="llama", attention_layers=None, comba_rotary="none", comba_short_conv=4,
                 comba_output_norm=False, comba_chunk_size=64, comba_scale=1.0, comba_initial_d=0.02,
                 comba_initial_lambda=0.5, comba_norm_eps=1e-6, comba_feature_map="identity",
                 comba_normalize_readout=False, comba_readout_eps=0.1, use_cache=True, initializer_range=0.02,
                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=None, **kwargs):
        kwargs.pop("combadistill_rope_theta", None)
        kwargs.pop("combadistill_rope_scaling", None)
        fields = dict(
            vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
            num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
            num_key_value_heads=num_key_value_heads or num_attention_heads,
            head_dim=head_dim or hidden_size // num_attention_heads, max_position_embeddings=max_position_embeddings,
            rms_norm_eps=rms_norm_eps, attention_bias=attention_bias, hidden_act=hidden_act,
            teacher_model_type=teacher_model_type, attention_layers=list(attention_layers or []),
            comba_rotary=comba_rotary, comba_short_conv=comba_short_conv, comba_output_norm=comba_output_norm,
            comba_chunk_size=comba_chunk_size, comba_scale=comba_scale, comba_initial_d=comba_initial_d,
            comba_initial_lambda=comba_initial_lambda, comba_norm_eps=comba_norm_eps,
            comba_feature_map=comba_feature_map, comba_normalize_readout=comba_normalize_readout,
            comba_readout_eps=comba_readout_eps, use_cache=use_cache, initializer_range=initializer_range,
            tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            # rotary under names of our own: transformers versions differ in what they do with rope_theta/rope_scaling
            combadistill_rope_theta=rope_theta, combadistill_rope_scaling=rope_scaling,
        )
        for name, value in fields.items():
            setattr(self, name, value)
        super().__init__(tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id,
                         eos_token_id=eos_token_id, pad_token_id=pad_token_id, **kwargs)
        # again, in case the base class reset or dropped any of them
        for name, value in fields.items():
            setattr(self, name, value)
        for name, value in (("rope_theta", rope_theta), ("rope_scaling", rope_scaling)):
            try:
                setattr(self, name, value)
            except (AttributeError, TypeError, ValueError):
                pass
