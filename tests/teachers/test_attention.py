"""grouped_query attention equals transformers' sdpa attention (prefill with padding, cached decoding)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from latentlm.teachers.attention import GROUPED_QUERY, grouped_query_attention


def tiny_llama(implementation: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=50, hidden_size=24, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=64,
    )  # fmt: skip
    model = LlamaForCausalLM(config).double().eval()
    model.set_attn_implementation(implementation)
    return model


def test_grouped_query_equals_sdpa_on_padded_prefill_and_cached_decoding():
    # sdpa, not eager, is the float64 reference: eager's float32 softmax turns the float64 mask's
    # minimum into -inf, so fully padded rows become NaN and reach the valid rows through the values.
    reference, grouped = tiny_llama("sdpa"), tiny_llama(GROUPED_QUERY)
    grouped.load_state_dict(reference.state_dict())
    ids = torch.randint(0, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    mask[2, :6] = 0
    with torch.no_grad():
        outs = [m(input_ids=ids, attention_mask=mask, use_cache=True) for m in (reference, grouped)]
        valid = mask.bool()
        torch.testing.assert_close(outs[0].logits[valid], outs[1].logits[valid], rtol=0, atol=1e-10)
        caches = [o.cache for o in outs]
        step = torch.randint(0, 50, (3, 1))
        for _ in range(3):
            mask = torch.cat([mask, torch.ones(3, 1, dtype=mask.dtype)], 1)
            outs = [
                m(input_ids=step, attention_mask=mask, cache=c, use_cache=True)
                for m, c in zip((reference, grouped), caches, strict=True)
            ]
            torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=0, atol=1e-10)
            caches = [o.cache for o in outs]
            step = outs[0].logits[:, -1].argmax(-1, keepdim=True)


def test_grouped_query_by_hand():
    """One key-value head serving two query heads: softmax(q k^T * s + mask) v for each head."""
    torch.manual_seed(1)
    q, k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 1, 3, 4), torch.randn(1, 1, 3, 4)
    mask = torch.tensor([0.0, float("-inf"), 0.0]).view(1, 1, 1, 3)
    out, _ = grouped_query_attention(None, q, k, v, mask, scaling=0.5)
    for head in range(2):
        weights = torch.softmax(q[0, head, 0] @ k[0, 0].T * 0.5 + mask[0, 0, 0], -1)
        torch.testing.assert_close(out[0, 0, head], weights @ v[0, 0])
    with pytest.raises(ValueError, match="dropout"):
        grouped_query_attention(None, q, k, v, None, scaling=0.5, dropout=0.1)
