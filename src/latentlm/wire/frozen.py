"""Frozen causal LLMs as LatentWire decoders: prompt layout, anchor, BOS policy, inputs_embeds I/O.

A `FrozenLM` wraps any Hugging Face causal LM (a GGUF file included) and its tokenizer. Every
prompt is laid out as

    [BOS?] prefix | content | suffix | [BOS?] anchor | answer ...

where `content` is the part LatentWire replaces (the context + question text, or M soft tokens),
`prefix`/`suffix` are the chat-template scaffold (empty / a newline for plain prompting) and the
anchor is the literal `"Answer: "` (seed 004, "anchor consistency in train and eval"). The anchor's
trailing whitespace is moved onto the answer, so that the first gold token after the anchor is the
same token the model produces after the text prompt (seed 004, §"anchor/label alignment").

Loss helpers mask PAD in labels *and* attention, with answers right-padded (the PAD bug of seed
004 §2). Generation from `inputs_embeds` returns only new tokens, bans EOS for the first steps,
honours `min_new_tokens`, and is greedy (deterministic first step).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentlm.data.text import sentence_spans
from latentlm.wire.config import PromptConfig

IGNORE_INDEX = -100
_SENTINEL = "\u2063LATENTWIRE_CONTENT\u2063"


CONTEXT_LABEL, QUESTION_LABEL = "Context: ", "\nQuestion: "


def format_content(context: str, question: str) -> str:
    """The text LatentWire compresses: the SQuAD context and question (no anchor)."""
    return f"{CONTEXT_LABEL}{context}{QUESTION_LABEL}{question}"


@dataclass
class ContentSpans:
    """Character spans inside a `format_content` text: each context sentence and the question."""

    sentences: list[tuple[int, int]]
    question: tuple[int, int]


def content_spans(content: str) -> ContentSpans:
    """Sentence and question spans of `format_content(context, question)` (sentences by
    `latentlm.data.text.sentence_spans`, the project's one splitter).

    Text not in that layout is treated as one context sentence with an empty question.
    """
    cut = content.rfind(QUESTION_LABEL)
    if not content.startswith(CONTEXT_LABEL) or cut < 0:
        return ContentSpans([(0, len(content))], (len(content), len(content)))
    start = len(CONTEXT_LABEL)
    sentences = sentence_spans(content[start:cut], offset=start) or [(start, cut)]
    return ContentSpans(sentences, (cut + len(QUESTION_LABEL), len(content)))


@dataclass
class PromptParts:
    """Token ids of the fixed parts of a prompt (1-D lists), shared by every example."""

    prefix: list[int]
    suffix: list[int]
    anchor: list[int]


class FrozenLM:
    """A frozen causal LM with its tokenizer and the prompting policy LatentWire needs.

    Args:
        model: a Hugging Face causal LM (eval mode; parameters are frozen here).
        tokenizer: its tokenizer.
        name: a short name used in metrics and checkpoints (e.g. ``smollm2``).
        prompt_style: ``plain`` or ``chat`` (the tokenizer's chat template around the content).
        anchor_text: the literal placed before the answer (``"Answer: "``).
        add_bos: ``auto`` (the tokenizer's own choice), ``yes`` or ``no`` — BOS at sequence start.
        bos_after_prefix: put a BOS between the content/latent segment and the anchor.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        name: str,
        prompt_style: str = "plain",
        anchor_text: str = "Answer: ",
        add_bos: str = "auto",
        bos_after_prefix: bool = False,
    ) -> None:
        if prompt_style not in ("plain", "chat"):
            raise ValueError(f"prompt_style: expected 'plain' or 'chat', got {prompt_style!r}")
        if add_bos not in ("auto", "yes", "no"):
            raise ValueError(f"add_bos: expected 'auto', 'yes' or 'no', got {add_bos!r}")
        if prompt_style == "chat" and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"{name}: prompt_style='chat' but the tokenizer has no chat template")
        self.model = model.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.prompt_style = prompt_style
        self.anchor_text = anchor_text
        self.bos_after_prefix = bos_after_prefix
        self.pad_id = self._pad_id()
        self.bos_id = tokenizer.bos_token_id
        self.use_bos = self._use_bos(add_bos)
        self.stop_ids = self._stop_ids()
        self.parts = self._prompt_parts()
        self._embed_rms: float | None = None

    # ----------------------------------------------------------------- tokenizer policy
    def _pad_id(self) -> int:
        tok = self.tokenizer
        for candidate in (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, 0):
            if candidate is not None:
                return int(candidate)
        return 0

    def _use_bos(self, add_bos: str) -> bool:
        if add_bos == "no" or self.bos_id is None:
            if add_bos == "yes":
                raise ValueError(f"{self.name}: add_bos='yes' but the tokenizer has no BOS token")
            return False
        if add_bos == "yes":
            return True
        return self._tokenizer_adds_bos()

    def _tokenizer_adds_bos(self) -> bool:
        """Whether the tokenizer itself prepends BOS (Gemma, Llama-2) or not (ChatML models)."""
        if self.bos_id is None:
            return False
        probe = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        return len(probe) > 0 and probe[0] == self.bos_id

    def _stop_ids(self) -> list[int]:
        tok = self.tokenizer
        ids = set()
        if tok.eos_token_id is not None:
            ids.add(int(tok.eos_token_id))
        for literal in ("<|im_end|>", "<end_of_turn>", "<|endoftext|>", "<|eot_id|>"):
            token_id = tok.convert_tokens_to_ids(literal)
            if isinstance(token_id, int) and token_id != tok.unk_token_id and token_id >= 0:
                ids.add(token_id)
        return sorted(ids)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without special tokens added by the tokenizer."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_parts(self) -> PromptParts:
        if self.prompt_style == "chat":
            rendered = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": _SENTINEL}], tokenize=False, add_generation_prompt=True
            )
            prefix_text, suffix_text = rendered.split(_SENTINEL)
            bos_token = self.tokenizer.bos_token
            if self._tokenizer_adds_bos() and bos_token and prefix_text.startswith(bos_token):
                prefix_text = prefix_text[len(bos_token) :]  # BOS is governed by the BOS policy
        else:
            prefix_text, suffix_text = "", "\n"
        prefix = ([self.bos_id] if self.use_bos else []) + (self.encode(prefix_text) if prefix_text else [])
        anchor = self.encode(self.anchor_text.rstrip()) if self.anchor_text.strip() else []
        if self.bos_after_prefix and self.bos_id is not None:
            anchor = [self.bos_id] + anchor
        return PromptParts(prefix=prefix, suffix=self.encode(suffix_text), anchor=anchor)

    def answer_ids(self, answer: str) -> list[int]:
        """Gold answer token ids as they follow the anchor (the anchor's trailing space included).

        The answer is tokenized together with the anchor and the anchor's own tokens are cut
        off, so label 0 is exactly the token that follows the anchor in `anchor + answer`.
        """
        stripped = self.anchor_text.rstrip()
        piece = self.anchor_text[len(stripped) :] + answer
        if not stripped:
            return self.encode(piece)
        anchor_ids = self.encode(stripped)
        joint = self.encode(stripped + piece)
        if joint[: len(anchor_ids)] == anchor_ids:
            return joint[len(anchor_ids) :]
        return self.encode(piece)

    def text_prompt_ids(self, content: str, max_content_tokens: int | None = None) -> list[int]:
        """Full text prompt ids; `max_content_tokens` truncates the content (token-budget baseline)."""
        content_ids = self.encode(content)
        if max_content_tokens is not None:
            content_ids = content_ids[:max_content_tokens]
        return self.parts.prefix + content_ids + self.parts.suffix + self.parts.anchor

    # ----------------------------------------------------------------- embeddings
    @property
    def d_model(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embed(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Input embeddings as the model sees them (Gemma's sqrt(d) scale included): (..., d)."""
        if not isinstance(ids, torch.Tensor):
            ids = torch.tensor(list(ids), dtype=torch.long)
        return self.model.get_input_embeddings()(ids.to(self.device))

    @torch.no_grad()
    def nearest_tokens(self, soft: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
        """Ids of the vocabulary embeddings closest in cosine to each soft token: (..., d) -> (...)."""
        weight = self.model.get_input_embeddings().weight
        flat = F.normalize(soft.reshape(-1, soft.shape[-1]).to(weight.dtype), dim=-1)  # (N, d)
        best_score = torch.full((flat.shape[0],), float("-inf"), device=flat.device)
        best_id = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
        for start in range(0, weight.shape[0], chunk):
            scores = flat @ F.normalize(weight[start : start + chunk], dim=-1).T  # (N, chunk)
            value, index = scores.float().max(dim=-1)
            better = value > best_score
            best_score = torch.where(better, value, best_score)
            best_id = torch.where(better, index + start, best_id)
        return best_id.reshape(soft.shape[:-1])

    @property
    def embed_rms(self) -> float:
        """RMS of the input embeddings over the vocabulary (the target scale of soft tokens)."""
        if self._embed_rms is None:
            table = self.model.get_input_embeddings()
            vocab = table.weight.shape[0]
            total, count = 0.0, 0
            with torch.no_grad():
                for start in range(0, vocab, 16384):
                    ids = torch.arange(start, min(vocab, start + 16384), device=self.device)
                    rows = table(ids).double()
                    total += float(rows.pow(2).sum())
                    count += rows.numel()
            self._embed_rms = (total / count) ** 0.5
        return self._embed_rms

    # ----------------------------------------------------------------- batching
    def pack_left(self, sequences: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-pad per-example embedding sequences (L_i, d) into (B, L, d) + attention mask (B, L)."""
        if not sequences:
            raise ValueError("pack_left: no sequences")
        length = max(seq.shape[0] for seq in sequences)
        d = sequences[0].shape[-1]
        out = sequences[0].new_zeros(len(sequences), length, d)
        mask = torch.zeros(len(sequences), length, dtype=torch.long, device=out.device)
        for row, seq in enumerate(sequences):
            out[row, length - seq.shape[0] :] = seq
            mask[row, length - seq.shape[0] :] = 1
        return out, mask

    def pad_answers(self, answers: Sequence[Sequence[int]], max_len: int | None = None) -> torch.Tensor:
        """Right-pad answer ids to (B, A) with PAD (then masked out by `IGNORE_INDEX` labels)."""
        length = max(1, max(len(a) for a in answers))
        if max_len is not None:
            length = min(length, max_len)
        out = torch.full((len(answers), length), self.pad_id, dtype=torch.long)
        for row, ids in enumerate(answers):
            ids = list(ids)[:length]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    @staticmethod
    def answer_mask(answers: Sequence[Sequence[int]], length: int) -> torch.Tensor:
        """(B, A) 1 where a real answer token sits, 0 on right padding (never PAD-id based)."""
        mask = torch.zeros(len(answers), length, dtype=torch.long)
        for row, ids in enumerate(answers):
            mask[row, : min(len(ids), length)] = 1
        return mask

    # ----------------------------------------------------------------- forward passes
    def forward_embeds(self, embeds: torch.Tensor, mask: torch.Tensor, keep_last: int = 0) -> torch.Tensor:
        """Logits for embeddings (B, T, d) with any padding; positions follow the mask.

        Args:
            keep_last: compute logits only for the last this-many positions (0: all), which spares
                the vocabulary projection of the prompt positions.

        Returns:
            (B, T, V), or (B, keep_last, V).
        """
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=keep_last,
        )
        return out.logits

    def teacher_forced_logits(
        self,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Logits that predict each answer token given the prompt and earlier answer tokens.

        Args:
            prompt_embeds: (B, P, d) left-padded prompt (prefix + content/latent + anchor).
            prompt_mask: (B, P) attention mask of the prompt.
            answer_ids: (B, A) right-padded gold answer ids.
            answer_mask: (B, A) 1 on real answer tokens; PAD positions get attention 0.

        Returns:
            (B, A, V) logits; row t predicts `answer_ids[:, t]`.
        """
        answer_embeds = self.embed(answer_ids).to(prompt_embeds.dtype)  # (B, A, d)
        embeds = torch.cat([prompt_embeds, answer_embeds], dim=1)  # (B, P+A, d)
        mask = torch.cat([prompt_mask, answer_mask.to(prompt_mask.device)], dim=1)
        length = answer_ids.shape[1]
        logits = self.forward_embeds(embeds, mask, keep_last=length + 1)  # (B, A+1, V)
        return logits[:, :length]

    # ----------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_from_embeds(
        self,
        embeds: torch.Tensor,
        mask: torch.Tensor,
        max_new_tokens: int = 16,
        min_new_tokens: int = 1,
        eos_ban_steps: int = 0,
    ) -> list[list[int]]:
        """Greedy generation from left-padded `inputs_embeds`; returns only the new token ids.

        Args:
            embeds: (B, T, d) left-padded prompt embeddings.
            mask: (B, T) attention mask.
            max_new_tokens: decoding budget.
            min_new_tokens: stop tokens are banned until this many tokens exist.
            eos_ban_steps: stop tokens are also banned for this many first steps.

        Returns:
            B lists of generated ids, cut at the first stop token (excluded).
        """
        from transformers import LogitsProcessor, LogitsProcessorList

        ban_until = max(min_new_tokens, eos_ban_steps)
        stop_ids = self.stop_ids

        class _BanStops(LogitsProcessor):
            # With inputs_embeds and no input_ids, generate() passes only the new ids so far.
            def __call__(self, input_ids, scores):
                if input_ids.shape[1] < ban_until and stop_ids:
                    scores[:, stop_ids] = float("-inf")
                return scores

        out = self.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            logits_processor=LogitsProcessorList([_BanStops()]),
            eos_token_id=stop_ids or None,
            pad_token_id=self.pad_id,
        )
        return [self._cut_at_stop(row.tolist()) for row in out]

    def _cut_at_stop(self, ids: list[int]) -> list[int]:
        for pos, token in enumerate(ids):
            if token in self.stop_ids:
                return ids[:pos]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Decoded answer: special tokens dropped, first non-empty line only, whitespace stripped.

        SQuAD answers are one line; instruct models often continue with an explanation after a
        newline, which is cut here (the same cleaning for every mode)."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()
        return text.split("\n", 1)[0].strip()


def answer_cross_entropy(
    logits: torch.Tensor, answer_ids: torch.Tensor, answer_mask: torch.Tensor
) -> torch.Tensor:
    """Mean CE over real answer tokens; PAD positions (mask 0) never contribute.

    Args:
        logits: (B, A, V) teacher-forced logits.
        answer_ids: (B, A) gold ids (right padded).
        answer_mask: (B, A) 1 on real tokens.
    """
    labels = answer_ids.masked_fill(answer_mask == 0, IGNORE_INDEX)
    if (labels != IGNORE_INDEX).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX
    )


def load_frozen_lm(
    name: str,
    prompt_style: str = "plain",
    anchor_text: str = "Answer: ",
    add_bos: str = "auto",
    bos_after_prefix: bool = False,
    dtype: torch.dtype = torch.float32,
) -> FrozenLM:
    """Load a frozen LM by latentlm alias (``smollm2``, ``qwen2.5-coder-0.5b``, ``gemma3-270m``),
    Hugging Face id or local path, through `latentlm.teachers.load_causal_lm`."""
    from latentlm.teachers import load_causal_lm

    model, tokenizer = load_causal_lm(name, dtype=dtype)
    return FrozenLM(model, tokenizer, name, prompt_style, anchor_text, add_bos, bos_after_prefix)


def load_frozen_lms(names: Sequence[str], prompt: PromptConfig) -> list[FrozenLM]:
    """The frozen models `names` with a prompting policy (`prompt.style: auto` picks the chat
    template when the tokenizer has one)."""
    lms = []
    for name in names:
        lm = load_frozen_lm(name, "plain", prompt.anchor_text, prompt.add_bos, prompt.bos_after_prefix)
        style = prompt.style
        if style == "auto":
            style = "chat" if getattr(lm.tokenizer, "chat_template", None) else "plain"
        if style != "plain":
            lm = FrozenLM(
                lm.model,
                lm.tokenizer,
                name,
                style,
                prompt.anchor_text,
                prompt.add_bos,
                prompt.bos_after_prefix,
            )
        lms.append(lm)
    return lms
