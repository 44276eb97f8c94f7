"""The autoregressive baseline of the same size (MDLM's comparison): a causal transformer LM.

It is built from the diffusion run's own ``ModelConfig`` (same width, depth, heads, feed-forward width,
vocabulary and sentence length) and trained on the same token rows, so a diffusion run and its baseline
differ only in the generative model.  The row ``x_1 .. x_L`` (words, [SEP], [PAD]...) is predicted left
to right from a [SEP] start token; the loss is the cross-entropy of the real tokens (words + the closing
[SEP]) divided by their number, the same denominator as the diffusion NELBO per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentlm.core.pretrained import PretrainedMixin
from latentlm.core.sampling import sample_categorical
from latentlm.diffusion.config import ModelConfig
from latentlm.diffusion.objectives import linear_cross_entropy
from latentlm.diffusion.sampling import decode_samples

__all__ = ["AutoregressiveLM", "ARLMOutput", "real_token_mask"]


def real_token_mask(ids: torch.Tensor, sep_token_id: int) -> torch.Tensor:
    """(B, L) bool: the words and the first [SEP] of each row (what a sentence's likelihood covers)."""
    is_sep = ids == sep_token_id
    seps_before = is_sep.long().cumsum(1) - is_sep.long()  # [SEP]s strictly before each position
    return seps_before == 0


@dataclass
class ARLMOutput:
    """``loss``: mean CE per real token; ``nll_sum`` / ``num_tokens`` for exact aggregation."""

    loss: torch.Tensor
    nll_sum: torch.Tensor
    num_tokens: torch.Tensor


class CausalBlock(nn.Module):
    """Pre-LN transformer block: causal self-attention and a GELU MLP."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        D = config.d_model
        self.num_heads = config.num_heads
        self.norm1 = nn.LayerNorm(D)
        self.qkv = nn.Linear(D, 3 * D, bias=False)
        self.out = nn.Linear(D, D, bias=False)
        self.norm2 = nn.LayerNorm(D)
        self.mlp = nn.Sequential(
            nn.Linear(D, config.ffn_mult * D), nn.GELU(approximate="tanh"), nn.Linear(config.ffn_mult * D, D)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Args: x (B, T, D). Returns (B, T, D)."""
        B, T, D = x.shape
        qkv = (
            self.qkv(self.norm1(x)).view(B, T, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        )  # (3, B, H, T, K)
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)  # (B, H, T, K)
        x = x + self.out(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp(self.norm2(x))


class AutoregressiveLM(PretrainedMixin, nn.Module):
    """Causal transformer LM with the diffusion model's size; tied input/output embeddings."""

    config_class = ModelConfig

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.complete or config.sep_token_id < 0:
            raise ValueError(
                "model: vocab_size, seq_len and the special ids must be filled in (from the data)"
            )
        self.config = config
        D = config.d_model
        self.token_embedding = nn.Embedding(config.vocab_size, D)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.position = nn.Parameter(torch.zeros(config.seq_len, D))
        self.blocks = nn.ModuleList(CausalBlock(config) for _ in range(config.num_layers))
        self.final_norm = nn.LayerNorm(D)
        self.register_buffer("original_ids", torch.arange(config.vocab_size))

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, D) for inputs (B, T) (position t predicts token t + 1)."""
        T = input_ids.shape[1]
        h = self.token_embedding(input_ids) + self.position[:T]  # (B, T, D)
        for block in self.blocks:
            h = block(h)
        return self.final_norm(h)

    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) for inputs (B, T)."""
        return self.hidden(input_ids) @ self.token_embedding.weight.T

    def forward(self, input_ids: torch.Tensor) -> ARLMOutput:
        """Cross-entropy of the real tokens of (B, L) rows, each predicted from [SEP] + its prefix (the
        output layer only at the real tokens)."""
        B = input_ids.shape[0]
        start = input_ids.new_full((B, 1), self.config.sep_token_id)
        inputs = torch.cat([start, input_ids[:, :-1]], dim=1)  # (B, L): shifted right
        real = real_token_mask(input_ids, self.config.sep_token_id)
        nll = linear_cross_entropy(self.hidden(inputs)[real], self.token_embedding.weight, input_ids[real])
        nll_sum = nll.sum()
        num_tokens = real.sum()
        return ARLMOutput(nll_sum / num_tokens.clamp_min(1), nll_sum, num_tokens)

    @torch.no_grad()
    def sample_ids(
        self,
        num_samples: int,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        generator: torch.Generator | None = None,
        float64: bool = True,
    ) -> torch.Tensor:
        """(num_samples, seq_len) rows drawn left to right ([SEP] ends a sentence; the rest is [PAD])."""
        cfg = self.config
        device = self.position.device
        rows = torch.full((num_samples, 1), cfg.sep_token_id, dtype=torch.long, device=device)
        for _ in range(cfg.seq_len):
            logits = self.logits(rows)[:, -1]
            logits[:, cfg.mask_token_id] = float("-inf")
            rows = torch.cat(
                [rows, sample_categorical(logits, temperature, top_k, top_p, generator, float64)[:, None]], 1
            )
        ids = rows[:, 1:]
        after_sep = ~real_token_mask(ids, cfg.sep_token_id)
        return ids.masked_fill(after_sep, cfg.pad_token_id)

    def decode(self, ids: torch.Tensor, tokenizer=None) -> list[str]:
        """Texts of (B, T) model-vocabulary rows, cut at the first [SEP] / [PAD]."""
        if tokenizer is None:
            from latentlm.teachers import load_tokenizer

            tokenizer = load_tokenizer(self.config.tokenizer)
        sep, pad = (int(self.original_ids[i]) for i in (self.config.sep_token_id, self.config.pad_token_id))
        return decode_samples(tokenizer, self.original_ids[ids], sep, pad)
