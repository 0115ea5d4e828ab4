# Written by CombaDistill's `combadistill export`. Plain PyTorch (1.13 or newer), no transformers needed.
"""The maths of a CombaDistill Comba student, in plain PyTorch.

Every layer is the teacher's pre-norm residual block (RMSNorm, token mixer, RMSNorm, SwiGLU MLP). The token mixer
is either the teacher's softmax attention (a layer kept in a hybrid student) or a Comba layer:

    q, k, v = x Wq, x Wk, x Wv  -> [causal depthwise conv of kernel 4] -> [rotary on q, k]
            -> [2nd-order Taylor features of q, k] -> [a constant-one value channel]
    g = -exp(A_log) * softplus(x Wa + dt_bias)      (log decay, alpha = exp g)
    beta = sigmoid(x Wb),  lambda = sigmoid(lambda_logit),  d   (per query head)
    u_t = beta_t (v_t - lambda S_{t-1} k^_t),   S_t = alpha_t S_{t-1} + u_t k^_t^T,   o_t = s S_t (q^_t - d k^_t)
    with q^, k^ the L2-normalised q, k -> [o / (|z| + eps)] -> [per-head RMSNorm] -> Wo

A sequence is read with the chunkwise-parallel form (`chunkwise_comba`); decoding continues one token at a time
(`recurrent_comba_step`) from a `CombaDistillCache`. The recurrence runs in float32 (float64 for a float64
model) whatever the weights' dtype; every cast mirrors CombaDistill's own forward, so a float32 model gives the
same logits to about 1e-5.

Use it without transformers:

    import combadistill_comba_core as core
    model = core.load_pretrained("path/to/export")          # float32 on the CPU
    logits = model(torch.tensor([[1, 2, 3]]))                # (B, T, V) float32
    ids = core.greedy_generate(model, torch.tensor([[1]]), 64)
"""
import json
import math
import os
import struct
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F

MODEL_TYPE = "combadistill_comba"
NORM_FLOOR = 1e-6
SUPPORTED_CHUNK_SIZES = (16, 32, 64, 128)

# comba_* fields of config.json and their defaults
COMBA_DEFAULTS = {
    "rotary": "none", "short_conv": 4, "output_norm": False, "chunk_size": 64, "scale": 1.0, "initial_d": 0.02,
    "initial_lambda": 0.5, "norm_eps": 1e-6, "feature_map": "identity", "normalize_readout": False, "readout_eps": 0.1,
}


# ----------------------------------------------------------------------------------------------------------------
# configuration

def resolve(config):
    """Every number the model needs, with CombaDistill's defaults, from a config object or a config.json dict."""
    get = (lambda name, default=None: config.get(name, default)) if isinstance(config, dict) \
        else (lambda name, default=None: getattr(config, name, default))
    hidden = get("hidden_size")
    heads = get("num_attention_heads")
    kv_heads = get("num_key_value_heads") or heads
    head_dim = get("head_dim") or hidden // heads
    teacher = get("teacher_model_type", "llama")
    attention_bias = bool(get("attention_bias", False))
    if get("combadistill_rope_theta") is not None:   # the transformers config keeps them under these names
        rope_theta, scaling = get("combadistill_rope_theta"), get("combadistill_rope_scaling")
    else:
        rope = get("rope_parameters") or {}
        rope_theta = get("rope_theta") or rope.get("rope_theta") or 10000.0
        scaling = get("rope_scaling")
        if scaling is None and rope.get("rope_type", "default") != "default":
            scaling = rope
    if scaling is not None and (scaling.get("rope_type") or scaling.get("type")) == "default":
        scaling = None
    o = SimpleNamespace(
        vocab_size=get("vocab_size"), hidden_size=hidden, intermediate_size=get("intermediate_size"),
        num_hidden_layers=get("num_hidden_layers"), num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=head_dim, rms_norm_eps=get("rms_norm_eps", 1e-6), rope_theta=float(rope_theta), rope_scaling=scaling,
        tie_word_embeddings=bool(get("tie_word_embeddings", False)),
        qkv_bias=teacher == "qwen2" or attention_bias, o_bias=teacher != "qwen2" and attention_bias,
        attention_layers=list(get("attention_layers") or []),
    )
    for name, default in COMBA_DEFAULTS.items():
        setattr(o, name, get("comba_" + name, default))
    if o.rotary not in ("none", "teacher"):
        raise ValueError(f"comba_rotary is '{o.rotary}'; expected none or teacher")
    if o.short_conv not in (0, 4):
        raise ValueError(f"comba_short_conv is {o.short_conv}; expected 0 or 4")
    if o.chunk_size not in SUPPORTED_CHUNK_SIZES:
        raise ValueError(f"comba_chunk_size is {o.chunk_size}; expected one of {SUPPORTED_CHUNK_SIZES}")
    if o.feature_map not in ("identity", "taylor"):
        raise ValueError(f"comba_feature_map is '{o.feature_map}'; expected identity or taylor")
    if heads % kv_heads != 0:
        raise ValueError(f"num_attention_heads ({heads}) is not a multiple of num_key_value_heads ({kv_heads})")
    return o


# ----------------------------------------------------------------------------------------------------------------
# the Comba recurrence (layout of scaled_dot_product_attention)
#   q (B, H, T, Dk)  k (B, Hkv, T, Dk)  v (B, Hkv, T, Dv)  g, beta (B, H, T)  lam, d (H)  state h = S^T (B, H, Dk, Dv)
# query head h reads KV head h // (H / Hkv)

def compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def l2_normalize(x):
    return x / torch.linalg.vector_norm(x, ord=2, dim=-1, keepdim=True).clamp_min(NORM_FLOOR)


def chunkwise_comba(q, k, v, g, beta, lam, d, scale, initial_state=None, chunk_size=64):
    """The chunkwise-parallel form: one unit-lower-triangular inverse per chunk, one loop over chunks for the state.

    Within a chunk, with gamma the inclusive and gamma0 the exclusive cumulative sum of g and h the state at its start:
        A = strictly_lower(diag(beta) lam K K^T * exp(gamma0_i - gamma_j)),  M = (I + A)^-1
        U = M diag(beta) V,  W = M diag(beta exp(gamma0)) lam K,  U~ = U - W h
        h <- exp(gamma_C) h + (K * exp(gamma_C - gamma))^T U~
        O = s [exp(gamma) * (Q~ h) + ((Q~ K^T) * exp(gamma_i - gamma_j) * causal) U~],  Q~ = Q - d K
    Returns o (B, H, T, Dv) in q's dtype and the final state (B, H, Dk, Dv) in float32 (float64 for float64).
    """
    B, H, T, Dk = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    G = H // Hkv
    dtype, device = compute_dtype(q), q.device
    C = chunk_size
    N = (T + C - 1) // C

    def chunked(x):   # (B, heads, T, D) -> (B, Hkv, heads / Hkv, N, C, D), zero-padded to N C tokens
        x = F.pad(x, (0, 0, 0, N * C - T))
        return x.reshape(B, Hkv, x.shape[1] // Hkv, N, C, x.shape[3])

    Q = chunked(l2_normalize(q.to(dtype)))
    K = chunked(l2_normalize(k.to(dtype)))
    V = chunked(v.to(dtype))
    log_decay = chunked(g.to(dtype).unsqueeze(-1))
    b = chunked(beta.to(dtype).unsqueeze(-1))
    lam_ = lam.to(dtype).view(1, Hkv, G, 1, 1, 1)
    d_ = d.to(dtype).view(1, Hkv, G, 1, 1, 1)

    gamma = log_decay.cumsum(-2)
    gamma0 = F.pad(gamma[..., :C - 1, :], (0, 0, 1, 0))     # the shifted inclusive sum, exact for neighbours
    gamma_end = gamma[..., C - 1:, :]
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=device).tril(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=device).tril()

    def decay(rows, cols, mask):   # exp(rows_i - cols_j) where mask holds, else 0 (masked before exp)
        return (rows - cols.transpose(-1, -2)).masked_fill(~mask, float("-inf")).exp()

    A = b * lam_ * K.matmul(K.transpose(-1, -2)) * decay(gamma0, gamma, strictly_lower)
    eye = torch.eye(C, dtype=dtype, device=device).expand(A.shape)
    M = torch.linalg.solve_triangular(A, eye, upper=False, left=True, unitriangular=True)
    U = M.matmul(b * V)
    W = M.matmul(b * gamma0.exp() * lam_ * K)

    keys_to_end = (K * (gamma_end - gamma).exp()).transpose(-1, -2)

    def chunk_major(t):
        return t.reshape(B * H, N, t.shape[-2], t.shape[-1]).transpose(0, 1).contiguous()

    h = torch.zeros(B * H, Dk, Dv, dtype=dtype, device=device) if initial_state is None \
        else initial_state.to(dtype).reshape(B * H, Dk, Dv)
    keys, ws, us, decays = chunk_major(keys_to_end), chunk_major(W), chunk_major(U), chunk_major(gamma_end.exp())
    starts, corrected = [], []
    for n in range(N):
        starts.append(h)
        u = us[n] - ws[n].bmm(h)
        corrected.append(u)
        h = decays[n] * h + keys[n].bmm(u)
    H0 = torch.stack(starts, 1).view(B, Hkv, G, N, Dk, Dv)
    Ut = torch.stack(corrected, 1).view(B, Hkv, G, N, C, Dv)

    readout = Q - d_ * K
    inter = gamma.exp() * readout.matmul(H0)
    intra = (readout.matmul(K.transpose(-1, -2)) * decay(gamma, gamma, causal)).matmul(Ut)
    o = (scale * (inter + intra)).reshape(B, H, N * C, Dv)[:, :, :T].to(q.dtype)
    return o, h.view(B, H, Dk, Dv)


def recurrent_comba_step(q, k, v, g, beta, lam, d, scale, state=None):
    """One token: q (B, H, Dk), k (B, Hkv, Dk), v (B, Hkv, Dv), g and beta (B, H), state (B, H, Dk, Dv) or None.
    Reads from the un-decayed previous state, then decays and writes. Returns o (B, H, Dv) and the new state."""
    B, H, Dk = q.shape
    Hkv, Dv = k.shape[1], v.shape[-1]
    G = H // Hkv
    dtype = compute_dtype(q)

    def per_query_head(x):
        return x.unsqueeze(2).expand(B, Hkv, G, x.shape[-1]).reshape(B, H, x.shape[-1])

    q_hat = l2_normalize(q.to(dtype))
    k_hat = per_query_head(l2_normalize(k.to(dtype)))
    values = per_query_head(v.to(dtype))
    h = state.to(dtype) if state is not None else torch.zeros(B, H, Dk, Dv, dtype=dtype, device=q.device)
    read = k_hat.unsqueeze(-2).matmul(h).squeeze(-2)
    u = beta.to(dtype).unsqueeze(-1) * (values - lam.to(dtype).view(1, H, 1) * read)
    nxt = g.to(dtype).exp().view(B, H, 1, 1) * h + k_hat.unsqueeze(-1) * u.unsqueeze(-2)
    readout = q_hat - d.to(dtype).view(1, H, 1) * k_hat
    o = (scale * readout.unsqueeze(-2).matmul(nxt).squeeze(-2)).to(q.dtype)
    return o, nxt


_pairs = {}


def taylor_features(x):
    """[1, x / D^(1/4), (x_i x_j w_ij / sqrt(2D))_{i<=j}] with w_ii = 1, w_ij = sqrt(2): phi(q).phi(k) = 1 + q.k/sqrt(D) + (q.k)^2/(2D)."""
    D = x.shape[-1]
    key = (D, x.device, x.dtype)
    if key not in _pairs:
        rows, cols, weights = [], [], []
        for i in range(D):
            for j in range(i, D):
                rows.append(i)
                cols.append(j)
                weights.append((1.0 if i == j else math.sqrt(2)) / math.sqrt(2.0 * D))
        _pairs[key] = (torch.tensor(rows, device=x.device), torch.tensor(cols, device=x.device),
                       torch.tensor(weights, dtype=torch.float64).to(device=x.device, dtype=x.dtype))
    rows, cols, weights = _pairs[key]
    quadratic = x.index_select(-1, rows) * x.index_select(-1, cols) * weights
    return torch.cat([torch.ones_like(x[..., :1]), x / D ** 0.25, quadratic], -1)


# ----------------------------------------------------------------------------------------------------------------
# layers

class RMSNorm(nn.Module):
    """Normalise in float32, cast back, then scale by the weight in the model's dtype."""

    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        normed = x32 * (x32.square().mean(-1, keepdim=True) + self.eps).rsqrt()
        return self.weight * normed.to(x.dtype)


class HeadRMSNorm(nn.Module):
    """RMSNorm over one head's values, one weight shared by the heads; computed in float32 (float64 stays float64)."""

    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x):
        xf = x.to(compute_dtype(x))
        normed = xf * (xf.pow(2).mean(-1, keepdim=True) + self.eps).rsqrt() * self.weight.to(xf.dtype)
        return normed.to(x.dtype)


class ShortConvolution(nn.Module):
    """Depthwise causal convolution over time, no bias; decoding carries the last kernel - 1 inputs."""

    def __init__(self, channels, kernel):
        super().__init__()
        self.kernel = kernel
        weight = torch.zeros(channels, 1, kernel)
        weight[:, :, kernel - 1] = 1
        self.weight = nn.Parameter(weight)

    def forward(self, x, cache=None):
        batch, length, channels = x.shape
        past = cache.to(x.dtype) if cache is not None \
            else torch.zeros(batch, channels, self.kernel - 1, dtype=x.dtype, device=x.device)
        window = torch.cat([past, x.transpose(1, 2)], 2)
        w = self.weight.to(x.dtype)
        if length == 1:
            y = (window * w.squeeze(1)).sum(-1, keepdim=True).transpose(1, 2)
        else:
            y = F.conv1d(window, w, groups=channels).transpose(1, 2)
        return y, window[:, :, window.shape[2] - (self.kernel - 1):].contiguous()


class Rotary:
    """Rotary tables in the rotate_half layout, with llama3 or linear frequency scaling; no module state."""

    def __init__(self, head_dim, theta, scaling=None):
        inverse = [1.0 / math.pow(theta, 2.0 * i / head_dim) for i in range(head_dim // 2)]
        if scaling is not None:
            kind = scaling.get("rope_type") or scaling.get("type")
            factor = float(scaling["factor"])
            if kind == "linear":
                inverse = [f / factor for f in inverse]
            elif kind == "llama3":
                low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
                original = float(scaling["original_max_position_embeddings"])
                scaled = []
                for f in inverse:
                    wavelength = 2 * math.pi / f
                    if wavelength > original / low:
                        scaled.append(f / factor)
                    elif wavelength < original / high:
                        scaled.append(f)
                    else:
                        smooth = (original / wavelength - low) / (high - low)
                        scaled.append((1 - smooth) * f / factor + smooth * f)
                inverse = scaled
            else:
                raise ValueError(f"rope_scaling type '{kind}' is not supported (llama3, linear)")
        self.inverse = inverse

    def cos_sin(self, start, length, dtype, device):
        positions = torch.arange(start, start + length, dtype=torch.float32, device=device)
        half = torch.outer(positions, torch.tensor(self.inverse, dtype=torch.float32, device=device))
        angles = torch.cat([half, half], -1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate(x, cos, sin):
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-second, first], -1) * sin


class CombaAttention(nn.Module):
    def __init__(self, o):
        super().__init__()
        self.o = o
        self.heads, self.kv_heads, self.head_dim = o.num_attention_heads, o.num_key_value_heads, o.head_dim
        hidden, heads, kv, hd = o.hidden_size, self.heads, self.kv_heads, self.head_dim
        self.q_proj = nn.Linear(hidden, heads * hd, bias=o.qkv_bias)
        self.k_proj = nn.Linear(hidden, kv * hd, bias=o.qkv_bias)
        self.v_proj = nn.Linear(hidden, kv * hd, bias=o.qkv_bias)
        self.o_proj = nn.Linear(heads * hd, hidden, bias=o.o_bias)
        self.a_proj = nn.Linear(hidden, heads, bias=False)
        self.b_proj = nn.Linear(hidden, heads, bias=False)
        # the converter's initial values; a loaded checkpoint replaces them
        self.A_log = nn.Parameter(torch.empty(heads).uniform_(1, 16).log())
        dt = (torch.rand(heads) * (math.log(1e-1) - math.log(1e-3)) + math.log(1e-3)).exp()
        self.dt_bias = nn.Parameter(dt + (-(-dt).expm1()).log())
        lam = o.initial_lambda
        self.lambda_logit = nn.Parameter(torch.full((heads,), math.log(lam / (1 - lam))))
        self.d = nn.Parameter(torch.full((heads,), float(o.initial_d)))
        if o.short_conv > 0:
            self.q_conv = ShortConvolution(heads * hd, o.short_conv)
            self.k_conv = ShortConvolution(kv * hd, o.short_conv)
            self.v_conv = ShortConvolution(kv * hd, o.short_conv)
        else:
            self.q_conv = self.k_conv = self.v_conv = None
        self.o_norm = HeadRMSNorm(hd, o.norm_eps) if o.output_norm else None
        self.sequence_op = chunkwise_comba     # a loader may swap in another implementation of the same maths

    def forward(self, x, cos, sin, state=None):
        """x (B, T, hidden); state a dict holding 'recurrent' and the three conv caches (updated in place) or None."""
        o, batch, length = self.o, x.shape[0], x.shape[1]
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_conv is not None:
            q, q_cache = self.q_conv(q, state.get("q_conv") if state else None)
            k, k_cache = self.k_conv(k, state.get("k_conv") if state else None)
            v, v_cache = self.v_conv(v, state.get("v_conv") if state else None)
        q = q.view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        if o.rotary == "teacher":
            q, k = rotate(q, cos.to(q.dtype), sin.to(q.dtype)), rotate(k, cos.to(k.dtype), sin.to(k.dtype))
        if o.feature_map == "taylor":
            q, k = taylor_features(q), taylor_features(k)
        if o.normalize_readout:
            v = torch.cat([v, torch.ones_like(v[..., :1])], -1)

        compute = torch.float64 if x.dtype == torch.float64 else torch.float32
        g = -self.A_log.to(compute).exp() * F.softplus(self.a_proj(x).to(compute) + self.dt_bias.to(compute))
        beta = self.b_proj(x).to(compute).sigmoid()
        g, beta = g.transpose(1, 2), beta.transpose(1, 2)
        lam, d = self.lambda_logit.to(compute).sigmoid(), self.d.to(compute)
        previous = state.get("recurrent") if state else None
        if length == 1:
            out, recurrent = recurrent_comba_step(q.squeeze(2), k.squeeze(2), v.squeeze(2), g.squeeze(2),
                                                  beta.squeeze(2), lam, d, o.scale, previous)
            out = out.unsqueeze(2)
        else:
            out, recurrent = self.sequence_op(q, k, v, g, beta, lam, d, o.scale, previous, o.chunk_size)
        if o.normalize_readout:
            z = out[..., self.head_dim:self.head_dim + 1]
            out = out[..., :self.head_dim] / (z.abs() + o.readout_eps)
        if self.o_norm is not None:
            out = self.o_norm(out)
        if state is not None:
            state["recurrent"] = recurrent
            if self.q_conv is not None:
                state["q_conv"], state["k_conv"], state["v_conv"] = q_cache, k_cache, v_cache
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


class SoftmaxAttention(nn.Module):
    """The teacher's attention, kept in a hybrid student: GQA, rotary, causal softmax; KV cache for decoding."""

    def __init__(self, o):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = o.num_attention_heads, o.num_key_value_heads, o.head_dim
        hidden, heads, kv, hd = o.hidden_size, self.heads, self.kv_heads, self.head_dim
        self.q_proj = nn.Linear(hidden, heads * hd, bias=o.qkv_bias)
        self.k_proj = nn.Linear(hidden, kv * hd, bias=o.qkv_bias)
        self.v_proj = nn.Linear(hidden, kv * hd, bias=o.qkv_bias)
        self.o_proj = nn.Linear(heads * hd, hidden, bias=o.o_bias)

    def forward(self, x, cos, sin, state=None):
        batch, length = x.shape[0], x.shape[1]
        q = self.q_proj(x).view(batch, length, self.heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, length, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if state is not None:
            if "keys" in state:
                k, v = torch.cat([state["keys"], k], 2), torch.cat([state["values"], v], 2)
            state["keys"], state["values"] = k, v
        groups = self.heads // self.kv_heads
        if groups > 1:
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        keys = k.shape[2]
        mask = torch.ones(length, keys, dtype=torch.bool, device=x.device).tril(keys - length)
        if hasattr(F, "scaled_dot_product_attention"):
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=None if length == 1 else mask,
                                                      is_causal=False)
        else:   # PyTorch 1.x
            scores = q.matmul(k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            scores = scores.masked_fill(~mask, float("-inf"))
            attended = scores.float().softmax(-1).to(q.dtype).matmul(v)
        return self.o_proj(attended.transpose(1, 2).reshape(batch, length, self.heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, o):
        super().__init__()
        self.gate_proj = nn.Linear(o.hidden_size, o.intermediate_size, bias=False)
        self.up_proj = nn.Linear(o.hidden_size, o.intermediate_size, bias=False)
        self.down_proj = nn.Linear(o.intermediate_size, o.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, o, index):
        super().__init__()
        self.is_attention = index in o.attention_layers
        self.input_layernorm = RMSNorm(o.hidden_size, o.rms_norm_eps)
        self.self_attn = SoftmaxAttention(o) if self.is_attention else CombaAttention(o)
        self.post_attention_layernorm = RMSNorm(o.hidden_size, o.rms_norm_eps)
        self.mlp = MLP(o)

    def forward(self, x, cos, sin, state=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, state)
        return x + self.mlp(self.post_attention_layernorm(x))


class CombaDistillCache:
    """Decoding state: per Comba layer a fixed-size recurrent state and convolution window, per kept softmax
    layer its keys and values. `seen_tokens` is the next token's position."""

    def __init__(self, num_layers):
        self.layers = [{} for _ in range(num_layers)]
        self.seen_tokens = 0

    def get_seq_length(self, layer_idx=0):
        return self.seen_tokens

    def reorder_cache(self, beam_idx):
        for layer in self.layers:
            for name, t in layer.items():
                layer[name] = t.index_select(0, beam_idx.to(t.device))
        return self


class BackboneMixin:
    """The decoder stack (embed_tokens, layers, norm); mixed into a plain nn.Module here and into transformers'
    PreTrainedModel in the modeling file, so both have the same parameter names."""

    def build_backbone(self, config):
        o = resolve(config)
        self.options = o
        self.embed_tokens = nn.Embedding(o.vocab_size, o.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(o, i) for i in range(o.num_hidden_layers))
        self.norm = RMSNorm(o.hidden_size, o.rms_norm_eps)
        self.rotary = Rotary(o.head_dim, o.rope_theta, o.rope_scaling)

    def backbone_forward(self, input_ids=None, inputs_embeds=None, cache=None, hidden_states_out=None):
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        start = cache.seen_tokens if cache is not None else 0
        cos, sin = self.rotary.cos_sin(start, h.shape[1], h.dtype, h.device)
        for i, layer in enumerate(self.layers):
            if hidden_states_out is not None:
                hidden_states_out.append(h)
            h = layer(h, cos, sin, cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.seen_tokens += h.shape[1]
        h = self.norm(h)
        if hidden_states_out is not None:
            hidden_states_out.append(h)
        return h


class Backbone(nn.Module, BackboneMixin):
    def __init__(self, config):
        nn.Module.__init__(self)
        self.build_backbone(config)

    def forward(self, input_ids=None, inputs_embeds=None, cache=None):
        return self.backbone_forward(input_ids, inputs_embeds, cache)


def logits_of(hidden, lm_head, embed_tokens):
    """The classifier (tied embeddings: the embedding table), logits in float32 as CombaDistill returns them."""
    logits = F.linear(hidden, embed_tokens.weight) if lm_head is None else lm_head(hidden)
    return logits.float()


def causal_lm_loss(logits, labels, ignore_index=-100):
    """Mean cross-entropy of each position's logits against the next label; labels of ignore_index do not count."""
    shifted = F.pad(labels, (0, 1), value=ignore_index)[..., 1:].to(logits.device)
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1), ignore_index=ignore_index)


class CausalLM(nn.Module):
    """The whole student without transformers: `model.*` and `lm_head.*` as in the checkpoint."""

    def __init__(self, config):
        super().__init__()
        self.model = Backbone(config)
        o = self.model.options
        self.lm_head = None if o.tie_word_embeddings else nn.Linear(o.hidden_size, o.vocab_size, bias=False)

    def new_cache(self):
        return CombaDistillCache(len(self.model.layers))

    def forward(self, input_ids, cache=None):
        return logits_of(self.model(input_ids, cache=cache), self.lm_head, self.model.embed_tokens)


@torch.no_grad()
def greedy_generate(model, input_ids, new_tokens):
    """Greedy continuation with the recurrent cache: one prefill, then one token at a time."""
    cache = model.new_cache()
    logits = model(input_ids, cache)
    out = [input_ids]
    for _ in range(new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        out.append(nxt)
        logits = model(nxt, cache)
    return torch.cat(out, 1)


# ----------------------------------------------------------------------------------------------------------------
# loading without transformers or the safetensors package

_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


def read_safetensors(path):
    """Every tensor of a .safetensors file, as a dict of CPU tensors."""
    with open(path, "rb") as f:
        (header_size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_size))
        data = f.read()
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        dtype = _SAFETENSORS_DTYPES[info["dtype"]]
        raw = bytearray(data[begin:end])
        t = torch.frombuffer(raw, dtype=dtype) if end > begin else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"])
    return tensors


def read_checkpoint(folder):
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        tensors.update(read_safetensors(os.path.join(folder, name)))
    return tensors


def load_pretrained(folder, dtype=torch.float32, device="cpu"):
    """An exported folder as a plain-PyTorch `CausalLM` in eval mode; every tensor must be present."""
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    if config.get("model_type") != MODEL_TYPE:
        raise ValueError(f"{folder}/config.json: model_type is '{config.get('model_type')}', not '{MODEL_TYPE}'")
    model = CausalLM(config)
    state = {name: t.to(dtype) if t.is_floating_point() else t for name, t in read_checkpoint(folder).items()}
    model.load_state_dict(state, strict=True)
    return model.to(device=device, dtype=dtype).eval()
