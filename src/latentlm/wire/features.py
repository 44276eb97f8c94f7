"""Encoder input features and frozen-model prompt pieces for a batch of prompts.

`FeatureBuilder` owns the frozen helpers an encoder reads (the sentence encoder, the frozen LLMs'
embedding tables) and builds only the features the encoder declares. `latent_prompt` and
`text_prompt` lay out one model's input embeddings around the content (see `wire.models`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentlm.wire.encoders import BYTE_VOCAB, EncoderInputs
from latentlm.wire.models import FrozenLM


def byte_features(texts: Sequence[str], max_bytes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes of each text, cut to `max_bytes`, right-padded with 256: (B, L), mask (B, L)."""
    encoded = [list(text.encode("utf-8"))[:max_bytes] or [32] for text in texts]
    length = max(len(e) for e in encoded)
    ids = torch.full((len(texts), length), BYTE_VOCAB - 1, dtype=torch.long)
    mask = torch.zeros(len(texts), length, dtype=torch.long)
    for row, values in enumerate(encoded):
        ids[row, : len(values)] = torch.tensor(values, dtype=torch.long)
        mask[row, : len(values)] = 1
    return ids, mask


def content_embeddings(
    lm: FrozenLM, texts: Sequence[str], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A frozen model's input embeddings of each content text, right-padded: (B, L, d), mask (B, L)."""
    ids = [lm.encode(text)[:max_tokens] or [lm.pad_id] for text in texts]
    length = max(len(i) for i in ids)
    padded = torch.full((len(ids), length), lm.pad_id, dtype=torch.long)
    mask = torch.zeros(len(ids), length, dtype=torch.long)
    for row, values in enumerate(ids):
        padded[row, : len(values)] = torch.tensor(values)
        mask[row, : len(values)] = 1
    with torch.no_grad():
        embeds = lm.embed(padded)
    return embeds * mask.unsqueeze(-1).to(embeds.dtype), mask


class SentenceStates:
    """A frozen sentence encoder (MiniLM by default) giving token states (B, L, d_st) + mask."""

    def __init__(self, model, tokenizer, max_tokens: int) -> None:
        self.model, self.tokenizer, self.max_tokens = model.eval(), tokenizer, max_tokens
        for param in self.model.parameters():
            param.requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @classmethod
    def load(cls, name: str, max_tokens: int) -> SentenceStates:
        from latentlm.teachers import load_encoder

        model, tokenizer = load_encoder(name)
        return cls(model, tokenizer, max_tokens)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return out.last_hidden_state, enc["attention_mask"]


class FeatureBuilder:
    """Builds `EncoderInputs` for the features an encoder requires.

    Args:
        lms: the frozen LLMs (their embedding tables feed the anchor-guided encoder).
        sentence: the frozen sentence encoder, or None when no encoder reads it.
        max_bytes: byte limit for the ByteEncoder.
        max_tokens: token limit for LLM-embedding features.
    """

    def __init__(
        self, lms: Sequence[FrozenLM], sentence: SentenceStates | None, max_bytes: int, max_tokens: int
    ):
        self.lms, self.sentence = list(lms), sentence
        self.max_bytes, self.max_tokens = max_bytes, max_tokens

    def __call__(self, texts: Sequence[str], required: Sequence[str]) -> EncoderInputs:
        inputs = EncoderInputs()
        if "bytes" in required:
            inputs.byte_ids, inputs.byte_mask = byte_features(texts, self.max_bytes)
        if "st" in required:
            if self.sentence is None:
                raise ValueError(
                    "the encoder reads sentence-encoder states but no sentence encoder is loaded"
                )
            inputs.st_states, inputs.st_mask = self.sentence(texts)
        if "llm" in required:
            pairs = [content_embeddings(lm, texts, self.max_tokens) for lm in self.lms]
            inputs.llm_embeds = [p[0] for p in pairs]
            inputs.llm_masks = [p[1] for p in pairs]
        return inputs


def latent_prompt(
    lm: FrozenLM, soft: torch.Tensor, with_anchor: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """[BOS?] prefix | soft tokens | suffix | anchor as embeddings (B, P, d) and a mask of ones."""
    batch = soft.shape[0]
    prefix = lm.embed(lm.parts.prefix).to(soft.dtype)
    tail_ids = lm.parts.suffix + (lm.parts.anchor if with_anchor else [])
    tail = lm.embed(tail_ids).to(soft.dtype)
    embeds = torch.cat(
        [prefix.unsqueeze(0).expand(batch, -1, -1), soft, tail.unsqueeze(0).expand(batch, -1, -1)], dim=1
    )
    return embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)


def soft_content_prompts(
    lm: FrozenLM, contents: Sequence[torch.Tensor], with_anchor: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts whose content is given as per-example embeddings (L_i, d)."""
    prefix = lm.embed(lm.parts.prefix)
    tail = lm.embed(lm.parts.suffix + (lm.parts.anchor if with_anchor else []))
    return lm.pack_left([torch.cat([prefix, c.to(prefix.dtype), tail], dim=0) for c in contents])


def text_prompts(lm: FrozenLM, texts: Sequence[str], max_content_tokens: int | None = None):
    """Left-padded text prompts as embeddings (B, P, d) + mask; token-budget when a limit is given."""
    return lm.pack_left([lm.embed(lm.text_prompt_ids(t, max_content_tokens)) for t in texts])
