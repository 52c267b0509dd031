"""One decode step of a Llama or Qwen3 model without transformers' per-call machinery.

A decode step feeds one token per row. Through ``model(...)`` it also rebuilds a 4-D mask from
the 2-D one, threads a dozen keyword arguments through every layer's wrappers and, for grouped
keys and values under a mask, copies each layer's whole cache once per query-head group
(``repeat_kv``) — together ~20% of a step at batch 4-8 on CPU. This step calls the model's own
modules (norms, projections, MLP, rotary table and ``apply_rotary_pos_emb``) in the same order,
and attends with ``scaled_dot_product_attention`` over the cache with ``enable_gqa`` instead of
the copies: its logits equal ``model(...)``'s bit for bit (checked in the tests).

Only models whose layers are exactly Llama's or Qwen3's qualify (:func:`supports_decode_step`); others
decode through ``model(...)``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache, PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from agents.kv_batch import dynamic_layers

# Qwen3 is Llama with a norm over each query and key head (``q_norm``, ``k_norm``).
_MODEL_TYPES = frozenset({"llama", "qwen3"})


def supports_decode_step(model: PreTrainedModel) -> bool:
    """Whether :func:`decode_step` computes what ``model(...)`` does for this model: a Llama or
    Qwen3 without biases, attending through SDPA."""
    config: Any = model.config
    return (
        config.model_type in _MODEL_TYPES
        and getattr(config, "_attn_implementation", None) == "sdpa"
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
    )


def decode_step(
    model: PreTrainedModel,
    tokens: torch.Tensor,
    attention: torch.Tensor,
    positions: torch.Tensor,
    cache: DynamicCache,
) -> torch.Tensor:
    """The next-token logits of one decode step, ``[rows, vocab]``.

    Args:
        model: a model for which :func:`supports_decode_step` holds.
        tokens: ``[rows, 1]`` ids fed this step.
        attention: ``[rows, width]`` with 1 for every column a row attends to, this step's
            column (the last) included.
        positions: ``[rows, 1]`` the fed tokens' positions.
        cache: the rows' keys and values; this step's are appended.
    """
    inner: Any = model.model
    hidden = inner.embed_tokens(tokens)
    cos, sin = inner.rotary_emb(hidden, positions)
    mask = attention.bool()[:, None, None, :]
    rows = tokens.shape[0]
    head_norms = model.config.model_type == "qwen3"
    for layer, cache_layer in zip(inner.layers, dynamic_layers(cache), strict=True):
        attn = layer.self_attn
        x = layer.input_layernorm(hidden)
        query = attn.q_proj(x).view(rows, 1, -1, attn.head_dim)
        key = attn.k_proj(x).view(rows, 1, -1, attn.head_dim)
        if head_norms:
            query, key = attn.q_norm(query), attn.k_norm(key)
        query, key = query.transpose(1, 2), key.transpose(1, 2)
        value = attn.v_proj(x).view(rows, 1, -1, attn.head_dim).transpose(1, 2)
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        keys, values = cache_layer.update(key, value)
        out = F.scaled_dot_product_attention(
            query, keys, values, attn_mask=mask, scale=attn.scaling, enable_gqa=True
        )
        hidden = hidden + attn.o_proj(out.transpose(1, 2).reshape(rows, 1, -1))
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    logits: torch.Tensor = model.lm_head(inner.norm(hidden))
    return logits[:, -1, :]
