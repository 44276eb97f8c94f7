"""Real frozen models (installed from PyPI): inputs_embeds generation and anchor/label alignment."""

from __future__ import annotations

import os

import pytest
import torch

from latentlm.data.squad import load_squad
from latentlm.wire.features import text_prompts
from latentlm.wire.frozen import FrozenLM, format_content

pytestmark = pytest.mark.real_model


def _available(name: str) -> bool:
    from latentlm.teachers import resolve_model

    try:
        source = resolve_model(name)
    except Exception:
        return False
    from pathlib import Path

    return source.gguf_file is None or (Path(source.path) / source.gguf_file).is_file()


@pytest.fixture(scope="module")
def dev(data_dir):
    return load_squad(data_dir / "squad" / "dev-v1.1-subset.json")[:12]


def test_smollm2_generation_from_embeds_equals_ids(dev):
    from latentlm.wire.frozen import load_frozen_lm

    lm = load_frozen_lm("smollm2", "chat")
    assert not lm.use_bos and lm.tokenizer.decode(lm.parts.prefix).startswith("<|im_start|>system")
    contents = [format_content(e.context, e.question) for e in dev[:2]]
    with torch.no_grad():
        embeds, mask = text_prompts(lm, contents)
        got = lm.generate_from_embeds(embeds, mask, max_new_tokens=4)
        for content, new in zip(contents, got, strict=True):
            ids = torch.tensor([lm.text_prompt_ids(content)])
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=4,
                do_sample=False,
                pad_token_id=lm.pad_id,
                eos_token_id=lm.stop_ids,
            )
            assert lm._cut_at_stop(out[0, ids.shape[1] :].tolist()) == new


@pytest.mark.parametrize(
    ("name", "style"), [("smollm2", "chat"), ("qwen2.5-coder-0.5b", "chat"), ("gemma3-270m", "plain")]
)
def test_first_gold_token_after_anchor_is_label_zero(dev, name, style):
    if not _available(name):
        # CI installs every model (scripts/setup.sh), so a missing one there is a failure, not a skip.
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"{name} is not installed (latentlm fetch {name})"
        )
    from latentlm.teachers import load_tokenizer

    tok = load_tokenizer(name)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    lm = FrozenLM(torch.nn.Linear(1, 1), tok, name, style)  # tokenizer-only checks need no weights
    anchor = [t for t in lm.parts.anchor if t != lm.bos_id]
    for example in dev:
        answer = example.answers[0]
        labels = lm.answer_ids(answer)
        joint = lm.encode(lm.anchor_text.rstrip() + lm.anchor_text[len(lm.anchor_text.rstrip()) :] + answer)
        assert joint[: len(anchor)] == anchor, f"{name}: the anchor merges with the answer {answer!r}"
        assert labels == joint[len(anchor) :] and labels[0] == joint[len(anchor)]
        assert lm.decode(labels) == answer.strip()


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5-coder-0.5b"])
def test_interlingua_alignment_on_real_tokenizers(name):
    """MiniLM (uncased WordPiece) and a byte-level BPE meet on characters: a word that is one token
    in both gets exactly the LLM's embedding of that token; label and special tokens are no candidates."""
    from latentlm.wire.features import SentenceStates, aligned_embeddings, anchor_relevance
    from latentlm.wire.frozen import load_frozen_lm

    lm = load_frozen_lm(name, "plain")
    sentence = SentenceStates.load("minilm", 64)
    text = format_content(
        "The river Seine flows through Paris. Bread is cheap.", "Which river flows through Paris?"
    )
    enc = sentence.tokenize([text])
    offsets = enc["offset_mapping"][0]
    aligned = aligned_embeddings(lm, text, offsets)
    pieces = [text[a:b] for a, b in offsets.tolist()]
    first_paris = pieces.index("Paris")
    assert torch.equal(aligned[first_paris], lm.embed(lm.encode(" Paris"))[0])
    question, relevance, candidate = anchor_relevance(sentence, [text], enc["offset_mapping"])
    assert question[0].sum() == len(sentence.tokenizer.tokenize("Which river flows through Paris?"))
    assert candidate[0, 0] == 0 and candidate[0, pieces.index("Context")] == 0  # [CLS], the label
    assert relevance[0, first_paris] > relevance[0, pieces.index("Bread")]  # the question's sentence


SYSTEM_PROMPTS = {
    "smollm2": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "qwen2.5-coder-0.5b": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",
}


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5-coder-0.5b"])
def test_context_scope_layout_on_real_tokenizers(name):
    """[chat scaffold][M soft tokens][question][anchor] for the two models' own tokenizers, against
    the ChatML text written out by hand."""
    if not _available(name):
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"{name} is not installed")
    from latentlm.teachers import load_tokenizer
    from latentlm.wire.features import context_prompts

    class Embeddings(torch.nn.Module):
        def __init__(self, vocab: int) -> None:
            super().__init__()
            self.table = torch.nn.Embedding(vocab, 8)

        def get_input_embeddings(self):
            return self.table

    tok = load_tokenizer(name)
    lm = FrozenLM(Embeddings(len(tok)), tok, name, "chat")
    question = "Which river flows through Paris?"
    soft = torch.randn(6, 8)
    embeds, mask = context_prompts(lm, [soft], [question])
    before = f"<|im_start|>system\n{SYSTEM_PROMPTS[name]}<|im_end|>\n<|im_start|>user\n"
    after = f"\nQuestion: {question}<|im_end|>\n<|im_start|>assistant\nAnswer:"
    before_ids = tok(before, add_special_tokens=False)["input_ids"]
    after_ids = tok(after, add_special_tokens=False)["input_ids"]
    expected = torch.cat([lm.embed(before_ids), soft, lm.embed(after_ids)])
    assert mask.shape[1] == len(before_ids) + 6 + len(after_ids)
    assert torch.equal(embeds[0], expected)
