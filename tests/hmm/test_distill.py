"""Distillation and teacher-tokenizer embeddings with a tiny in-process causal LM (no download)."""

import copy

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from latentlm.hmm.config import DataConfig, DistillConfig, TeacherConfig
from latentlm.hmm.data import build_corpus
from latentlm.hmm.distill import sample_continuations, sample_corpus, sample_texts
from latentlm.hmm.teacher import embed_sequences

WORDS = ["<pad>", "<unk>", "<eos>", "the", "cat", "dog", "sat", "ran", "on", "mat", "."]


@pytest.fixture(scope="module")
def tiny_lm():
    vocab = {w: i for i, w in enumerate(WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        eos_token_id=2,
        pad_token_id=0,
        bos_token_id=2,
    )
    model = LlamaForCausalLM(config).eval()
    return model, tokenizer


def test_sampling_is_seeded_and_non_empty(tiny_lm):
    model, tokenizer = tiny_lm
    cfg = DistillConfig(num_sequences=5, max_new_tokens=6, batch_size=2, seed=3)
    first = sample_texts(model, tokenizer, cfg)
    assert first == sample_texts(model, tokenizer, cfg)
    assert 1 <= len(first) <= 5 and all(text.strip() for text in first)
    assert all(word in WORDS for text in first for word in text.split())


def test_top_1_sampling_equals_greedy_generate(tiny_lm):
    """The cached loop feeds the right positions: with top_k=1 it reproduces ``generate``'s greedy rows."""
    model, tokenizer = tiny_lm
    cfg = DistillConfig(num_sequences=3, max_new_tokens=7, top_k=1)
    prompt = tokenizer("the cat", add_special_tokens=False)["input_ids"]
    rows = sample_continuations(model, prompt, 3, cfg, eos_id=None)
    greedy = model.generate(
        input_ids=torch.tensor([prompt] * 3),
        attention_mask=torch.ones(3, 2, dtype=torch.long),
        do_sample=False,
        max_new_tokens=7,
        min_new_tokens=7,
        pad_token_id=0,
    )[:, 2:]
    assert rows == greedy.tolist()


def test_first_draw_frequencies_match_the_teacher_softmax(tiny_lm):
    model, tokenizer = tiny_lm
    n, cfg = 20_000, DistillConfig(max_new_tokens=1, temperature=0.8)
    torch.manual_seed(0)
    draws = torch.tensor(sample_continuations(model, [2], n, cfg, eos_id=None)).flatten()
    with torch.no_grad():
        expected = (model(input_ids=torch.tensor([[2]])).logits[0, -1].double() / 0.8).softmax(-1)
    freq = torch.bincount(draws, minlength=len(WORDS)).double() / n
    stderr = (expected * (1 - expected) / n).sqrt().max()
    torch.testing.assert_close(freq, expected, atol=5 * float(stderr), rtol=0)


def test_rows_are_cut_after_their_first_eos(tiny_lm):
    model, _ = tiny_lm
    rows = sample_continuations(model, [2], 64, DistillConfig(max_new_tokens=12), eos_id=2)
    assert all(2 not in row[:-1] for row in rows) and any(row[-1] == 2 for row in rows)


def test_sampled_corpus_is_cached(tiny_lm, tmp_path, monkeypatch):
    calls = []

    def fake_load(name, dtype):
        calls.append(name)
        return tiny_lm

    monkeypatch.setattr("latentlm.teachers.load_causal_lm", fake_load)
    cfg = DistillConfig(num_sequences=4, max_new_tokens=5, batch_size=4)
    path = sample_corpus("tiny", cfg, tmp_path)
    assert sample_corpus("tiny", cfg, tmp_path) == path and calls == ["tiny"]
    assert path.read_text().strip()
    other = sample_corpus(
        "tiny", DistillConfig(num_sequences=4, max_new_tokens=5, batch_size=4, seed=1), tmp_path
    )
    assert other != path and calls == ["tiny", "tiny"]  # keyed by teacher and sampling settings
    monkeypatch.setattr("latentlm.hmm.distill.SAMPLER_VERSION", -1)  # the sampling code changed
    assert sample_corpus("tiny", cfg, tmp_path) != path and calls == ["tiny"] * 3


def _two_sentence_corpus(tokenizer, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("the cat sat on the mat .\nthe dog ran .\n")
    return build_corpus(
        DataConfig(path=str(path), format="lines", tokenizer="teacher", heldout_fraction=0.0),
        teacher_tokenizer=tokenizer,
    )


def test_teacher_tokenizer_embeddings_use_hidden_states_and_eos(tiny_lm, tmp_path):
    model, tokenizer = tiny_lm
    corpus = _two_sentence_corpus(tokenizer, tmp_path)
    assert corpus.vocab[:3] == ["<pad>", "<unk>", "<eos>"] and "cat" in corpus.vocab
    emb = embed_sequences(
        model, tokenizer, "causal_lm", corpus.train, TeacherConfig(name="tiny", batch_size=1)
    )
    assert emb.shape == (corpus.train.num_tokens, 16) and emb.dtype == np.float16
    ids = tokenizer("the dog ran .", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    with torch.no_grad():
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
    got = torch.from_numpy(emb[corpus.train.offsets[1] : corpus.train.offsets[2]].astype(np.float32))
    torch.testing.assert_close(got, hidden, atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: DistillConfig(dtype="float16"), "distill.dtype"),
        (lambda: TeacherConfig(dtype="half"), "lvd.teacher.dtype"),
    ],
)
def test_teacher_precision_is_checked_at_start_up(make, field):
    with pytest.raises(ValueError, match=f"{field}: must be one of"):
        make()


def test_bfloat16_teacher_states_stay_close_to_float32(tiny_lm, tmp_path):
    """``lvd.teacher.dtype=bfloat16`` changes the pooled states only by bfloat16 rounding."""
    model, tokenizer = tiny_lm
    corpus = _two_sentence_corpus(tokenizer, tmp_path)
    cfg = TeacherConfig(name="tiny", batch_size=2, position="previous")
    exact = embed_sequences(model, tokenizer, "causal_lm", corpus.train, cfg)
    low = embed_sequences(copy.deepcopy(model).to(torch.bfloat16), tokenizer, "causal_lm", corpus.train, cfg)
    assert low.dtype == np.float16 and low.shape == exact.shape
    scale = np.abs(exact).max()
    np.testing.assert_allclose(low.astype(np.float32), exact.astype(np.float32), atol=0.05 * scale, rtol=0)
