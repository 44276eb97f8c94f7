"""Grouped-query attention without copying the key-value cache, for decoding on CPU.

transformers' ``eager`` attention repeats every key and value head ``num_key_value_groups`` times
(``repeat_kv``) before its matmuls, a copy of the whole cache at every decoding step; its ``sdpa``
path dispatches one query a step to a flash kernel that is slower still on CPU. ``grouped_query``
instead folds each key-value head's query heads into the query rows, so one matmul per key-value
head serves its whole group and the cache is read in place (SmolLM2-135M: 9 query heads on 3
key-value heads; compared with eager by ``benchmarks/hmm_distill_speed.py``).

Select it with ``model.set_attn_implementation(GROUPED_QUERY)`` after importing this module (importing
registers it with transformers, with the eager additive mask).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import eager_mask

GROUPED_QUERY = "grouped_query"


def grouped_query_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Softmax attention of ``query`` (B, H, q, d) over ``key``/``value`` (B, Hkv, T, d), H = G * Hkv.

    ``attention_mask`` is additive, (B, 1, q, >= T). Returns (B, q, H, d) as transformers expects, and
    no attention weights. Inference only (``dropout`` must be 0).
    """
    if dropout:
        raise ValueError("grouped_query attention is for inference: dropout must be 0")
    batch, heads, length, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    rows = query.reshape(batch, kv_heads, groups * length, dim)  # (B, Hkv, G*q, d): heads h = g + G*kv
    scores = torch.matmul(rows, key.transpose(2, 3)) * scaling  # (B, Hkv, G*q, T)
    if attention_mask is not None:
        mask = attention_mask[:, :, None, :, :keys]  # (B, 1, 1, q, T)
        scores = (scores.view(batch, kv_heads, groups, length, keys) + mask).view_as(scores)
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(scores.dtype, torch.float32))
    out = torch.matmul(probs.to(value.dtype), value).view(batch, heads, length, dim)  # (B, H, q, d)
    return out.transpose(1, 2).contiguous(), None  # (B, q, H, d)


AttentionInterface.register(GROUPED_QUERY, grouped_query_attention)
AttentionMaskInterface.register(GROUPED_QUERY, eager_mask)
