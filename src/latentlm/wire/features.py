"""Encoder input features and frozen-model prompt pieces for a batch of prompts.

`FeatureBuilder` owns the frozen helpers an encoder reads (the sentence encoder, the frozen LLMs'
embedding tables) and builds only the features the encoder declares. `latent_prompt` and
`text_prompt` lay out one model's input embeddings around the content (see `wire.frozen`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from latentlm.wire.config import EncoderConfig
from latentlm.wire.encoders import BYTE_VOCAB, EncoderInputs
from latentlm.wire.frozen import QUESTION_LABEL, ContentSpans, FrozenLM, content_spans, format_content


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

    def tokenize(self, texts: Sequence[str]):
        """Padded, truncated batch encoding with character offsets (special tokens: (0, 0))."""
        return self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_tokens,
            return_tensors="pt",
            return_offsets_mapping=True,
        )

    @torch.no_grad()
    def __call__(self, texts: Sequence[str], encoding=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states (B, L, d_st) and mask (B, L); `encoding` reuses a `tokenize` result."""
        enc = encoding if encoding is not None else self.tokenize(texts)
        out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        return out.last_hidden_state, enc["attention_mask"]

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm mean-pooled sentence embeddings (B, d_st), the sentence-transformers recipe."""
        states, mask = self(texts)
        weights = mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)


def span_overlap(spans_a: torch.Tensor, spans_b: torch.Tensor) -> torch.Tensor:
    """Row-normalised overlap of character spans: (L_a, 2), (L_b, 2) -> (L_a, L_b).

    Row t averages the spans of b that share a character with span t of a; empty spans (special
    tokens, padding) overlap nothing and give a zero row.
    """
    start_a, end_a = spans_a[:, :1], spans_a[:, 1:]
    start_b, end_b = spans_b[:, 0][None], spans_b[:, 1][None]
    overlap = ((start_a < end_b) & (end_a > start_b) & (end_a > start_a)).float()  # (L_a, L_b)
    return overlap / overlap.sum(-1, keepdim=True).clamp_min(1.0)


def aligned_embeddings(lm: FrozenLM, text: str, spans: torch.Tensor) -> torch.Tensor:
    """A frozen model's input embeddings of `text` moved onto other character spans (L, 2) -> (L, d):
    each row is the mean embedding of the model's tokens overlapping that span."""
    enc = lm.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"] or [lm.pad_id]
    offsets = torch.tensor(enc["offset_mapping"] or [(0, 0)], dtype=torch.long)
    with torch.no_grad():
        embeds = lm.embed(ids)  # (L_b, d)
    return span_overlap(spans, offsets).to(embeds.dtype) @ embeds


def sentence_relevance(
    sentence: SentenceStates, texts: Sequence[str]
) -> list[tuple[ContentSpans, list[float]]]:
    """Per `format_content` text: its spans and the cosine of each context sentence to the question
    (one sentence-encoder pass over every piece of the batch)."""
    spans = [content_spans(text) for text in texts]
    pieces = [
        [text[a:b] for a, b in s.sentences] + [text[slice(*s.question)]]
        for text, s in zip(texts, spans, strict=True)
    ]
    embeds = sentence.embed_texts([p for group in pieces for p in group]).split([len(g) for g in pieces])
    return [(s, (e[:-1] @ e[-1]).tolist()) for s, e in zip(spans, embeds, strict=True)]


def ranked_sentences(sentence: SentenceStates, context: str, question: str) -> str:
    """The context's sentences from the most to the least similar to the question, one text: the
    context-scope `anchor_budget` keeps its first M tokens, the `anchor_span` latent starts from them."""
    text = format_content(context, question)
    spans, cosines = sentence_relevance(sentence, [text])[0]
    order = sorted(range(len(cosines)), key=lambda k: -cosines[k])
    return " ".join(text[slice(*spans.sentences[k])] for k in order)


def anchor_selection_embeddings(
    lm: FrozenLM, sentence: SentenceStates, contexts: Sequence[str], questions: Sequence[str], max_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """This model's input embeddings of the first `max_tokens` tokens of each `ranked_sentences` text,
    right-padded with zeros: (B, L, d) and mask (B, L)."""
    ids = [
        lm.encode(ranked_sentences(sentence, c, q))[:max_tokens]
        for c, q in zip(contexts, questions, strict=True)
    ]
    length = max(1, max(len(i) for i in ids))
    padded = torch.full((len(ids), length), lm.pad_id, dtype=torch.long)
    mask = torch.zeros(len(ids), length, dtype=torch.long)
    for row, values in enumerate(ids):
        padded[row, : len(values)] = torch.tensor(values, dtype=torch.long)
        mask[row, : len(values)] = 1
    with torch.no_grad():
        embeds = lm.embed(padded)
    return embeds * mask.unsqueeze(-1).to(embeds.dtype), mask


def anchor_budget_contents(sentence: SentenceStates, texts: Sequence[str]) -> list[str]:
    """The text counterpart of the interlingua's selection: per text, the question, then the context
    sentences from the most to the least similar to it (a token budget then keeps the first M)."""
    selected = []
    for text, (spans, cosines) in zip(texts, sentence_relevance(sentence, texts), strict=True):
        ranked = sorted(range(len(cosines)), key=lambda k: -cosines[k])
        pieces = [text[slice(*spans.question)], *(text[slice(*spans.sentences[k])] for k in ranked)]
        selected.append("\n".join(pieces))
    return selected


def anchor_relevance(
    sentence: SentenceStates, texts: Sequence[str], offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each sentence-encoder token sits in `format_content` text and how relevant it is.

    Returns (question, relevance, candidate), each (B, L): 1 on question tokens; the cosine between
    the token's context sentence and the question (sentence embeddings; 0 on the question); 1 on
    tokens of the context or question text (not the labels, not special tokens).
    """
    question = torch.zeros(offsets.shape[:2])
    relevance = torch.zeros(offsets.shape[:2])
    candidate = torch.zeros(offsets.shape[:2])
    for row, (spans, cosines) in enumerate(sentence_relevance(sentence, texts)):
        start, end = offsets[row, :, 0], offsets[row, :, 1]
        real = end > start
        q_start, q_end = spans.question
        in_question = real & (start >= q_start) & (end <= q_end)
        question[row], candidate[row] = in_question.float(), in_question.float()
        for (a, b), cos in zip(spans.sentences, cosines, strict=True):
            inside = real & (start >= a) & (end <= b)
            relevance[row][inside] = cos
            candidate[row][inside] = 1.0
    return question, relevance, candidate


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

    def __call__(
        self, texts: Sequence[str], required: Sequence[str], questions: Sequence[str] | None = None
    ) -> EncoderInputs:
        """Features of `texts`; `questions` (one per text) only for the query-aware `anchor` feature."""
        inputs = EncoderInputs()
        if "bytes" in required:
            inputs.byte_ids, inputs.byte_mask = byte_features(texts, self.max_bytes)
        if "st" in required:
            if self.sentence is None:
                raise ValueError(
                    "the encoder reads sentence-encoder states but no sentence encoder is loaded"
                )
            inputs.st_states, inputs.st_mask = self.sentence(texts)
        if "aligned" in required:
            self._aligned(texts, inputs)
        if "llm" in required:
            pairs = [content_embeddings(lm, texts, self.max_tokens) for lm in self.lms]
            inputs.llm_embeds = [p[0] for p in pairs]
            inputs.llm_masks = [p[1] for p in pairs]
        if "anchor" in required:
            if questions is None or self.sentence is None:
                raise ValueError("the anchor_span encoder needs the questions and the sentence encoder")
            pairs = [
                anchor_selection_embeddings(lm, self.sentence, texts, questions, self.max_tokens)
                for lm in self.lms
            ]
            inputs.anchor_embeds = [p[0] for p in pairs]
            inputs.anchor_masks = [p[1] for p in pairs]
        return inputs

    def _aligned(self, texts: Sequence[str], inputs: EncoderInputs) -> None:
        """Sentence-encoder states plus every LLM's embeddings on the sentence encoder's tokens."""
        if self.sentence is None:
            raise ValueError("the interlingua encoder reads sentence-encoder states but none is loaded")
        encoding = self.sentence.tokenize(texts)
        offsets = encoding["offset_mapping"]  # (B, L, 2)
        inputs.st_states, inputs.st_mask = self.sentence(texts, encoding)
        inputs.aligned_embeds = [
            torch.stack([aligned_embeddings(lm, text, offsets[row]) for row, text in enumerate(texts)])
            for lm in self.lms
        ]
        inputs.question_mask, inputs.relevance, inputs.candidate_mask = anchor_relevance(
            self.sentence, texts, offsets
        )
        inputs.token_mask = (offsets[..., 1] > offsets[..., 0]).long()


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


def question_tail_ids(lm: FrozenLM, question: str) -> list[int]:
    """What follows the context in the context scope: `"\nQuestion: q"`, the scaffold's suffix, the anchor."""
    return lm.encode(QUESTION_LABEL + question) + lm.parts.suffix + lm.parts.anchor


def context_prompts(
    lm: FrozenLM, contexts: Sequence[torch.Tensor], questions: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Context-scope prompts `[prefix][context positions][question][suffix][anchor]`, left padded.

    Args:
        contexts: per example, the embeddings that stand for the context, (M_b, d): soft tokens,
            the embeddings of M_b chosen context tokens, or none at all ((0, d)).
        questions: per example, the question text.
    """
    prefix = lm.embed(lm.parts.prefix)
    rows = [
        torch.cat([prefix.to(c.dtype), c, lm.embed(question_tail_ids(lm, q)).to(c.dtype)], dim=0)
        for c, q in zip(contexts, questions, strict=True)
    ]
    return lm.pack_left(rows)


AUTOENCODE_INSTRUCTION = "\nRepeat the text above."
"""Text after the soft tokens in an autoencoding sequence (ICAE's [AE] token, in words every model reads)."""


def autoencode_prompts(lm: FrozenLM, contexts: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """`[prefix][soft tokens][instruction][suffix]`, left padded: the model then regenerates the context."""
    prefix = lm.embed(lm.parts.prefix)
    tail_ids = lm.encode(AUTOENCODE_INSTRUCTION) + lm.parts.suffix
    rows = [torch.cat([prefix.to(c.dtype), c, lm.embed(tail_ids).to(c.dtype)], dim=0) for c in contexts]
    return lm.pack_left(rows)


def context_text_prompts(
    lm: FrozenLM, context_ids: Sequence[Sequence[int]], questions: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """`context_prompts` with the context given as this model's token ids (the text baselines)."""
    with torch.no_grad():
        pieces = [lm.embed(list(ids)) if len(ids) else lm.embed([lm.pad_id])[:0] for ids in context_ids]
    return context_prompts(lm, pieces, questions)


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


def build_features(
    encoder: EncoderConfig,
    lms: Sequence[FrozenLM],
    sentence: SentenceStates | None = None,
    needs_sentence: bool = False,
) -> tuple[FeatureBuilder, int]:
    """Feature builder for an encoder config (loads the sentence encoder only if something reads it);
    returns it and the sentence encoder's width."""
    if sentence is None and (encoder.kind != "byte" or needs_sentence):
        sentence = SentenceStates.load(encoder.sentence_encoder, encoder.max_tokens)
    features = FeatureBuilder(lms, sentence, encoder.max_bytes, encoder.max_tokens)
    return features, (sentence.dim if sentence is not None else 384)
