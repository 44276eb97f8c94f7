"""The interlingua encoder: character alignment across tokenizers, the anchor's relevance prior,
top-M selection (checked against a brute-force sort) and token reconstruction."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from latentlm.core.config import load_config
from latentlm.wire.config import EncoderConfig, WireRunConfig
from latentlm.wire.encoders import EncoderInputs, InterlinguaEncoder
from latentlm.wire.features import aligned_embeddings, anchor_relevance, span_overlap
from latentlm.wire.frozen import content_spans, format_content
from latentlm.wire.losses import token_reconstruction
from latentlm.wire.task import train_wire

REPO = Path(__file__).resolve().parents[2]


def test_content_spans_split_sentences_and_question():
    content = format_content("Paris is big. Is it old? Yes!  It is", "How big is Paris?")
    spans = content_spans(content)
    assert [content[a:b] for a, b in spans.sentences] == ["Paris is big.", "Is it old?", "Yes!", "It is"]
    assert content[slice(*spans.question)] == "How big is Paris?"
    plain = content_spans("no layout here")
    assert plain.sentences == [(0, 14)] and plain.question == (14, 14)


def test_span_overlap_matches_brute_force():
    gen = torch.Generator().manual_seed(0)
    starts_a = torch.randint(0, 30, (9,), generator=gen)
    a = torch.stack([starts_a, starts_a + torch.randint(0, 5, (9,), generator=gen)], -1)
    starts_b = torch.randint(0, 30, (7,), generator=gen)
    b = torch.stack([starts_b, starts_b + torch.randint(1, 6, (7,), generator=gen)], -1)
    got = span_overlap(a, b)
    for t, u in itertools.product(range(9), range(7)):
        chars_a = set(range(int(a[t, 0]), int(a[t, 1])))
        hits = [v for v in range(7) if chars_a & set(range(int(b[v, 0]), int(b[v, 1])))]
        expected = 1 / len(hits) if u in hits else 0.0
        assert got[t, u].item() == pytest.approx(expected)


def test_aligned_embeddings_average_the_overlapping_tokens(tiny_llama):
    text = format_content("Anna lives in Oslo.", "Where does Anna live?")
    enc = tiny_llama.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    embeds = tiny_llama.embed(enc["input_ids"])
    spans = torch.tensor([[0, 7], [9, 13], [14, 14], [9, 19]])  # "Context", "Anna", empty, a run
    got = aligned_embeddings(tiny_llama, text, spans)
    for row, (start, end) in enumerate(spans.tolist()):
        idx = [k for k, (s, e) in enumerate(enc["offset_mapping"]) if s < end and e > start and end > start]
        expected = embeds[idx].mean(0) if idx else torch.zeros(embeds.shape[-1])
        torch.testing.assert_close(got[row], expected)


def test_anchor_relevance_marks_question_and_sentence_cosines(sentence):
    text = format_content("Anna lives in Oslo. Bob likes tea.", "Where does Anna live?")
    enc = sentence.tokenize([text])
    question, relevance, candidate = anchor_relevance(sentence, [text], enc["offset_mapping"])
    spans = content_spans(text)
    embeds = sentence.embed_texts([text[a:b] for a, b in spans.sentences] + [text[slice(*spans.question)]])
    for t, (start, end) in enumerate(enc["offset_mapping"][0].tolist()):
        in_q = end > start and start >= spans.question[0]
        assert question[0, t].item() == float(in_q)
        sentence_index = [
            k for k, (a, b) in enumerate(spans.sentences) if end > start and a <= start and end <= b
        ]
        if sentence_index:
            cos = (embeds[sentence_index[0]] @ embeds[-1]).item()
            assert relevance[0, t].item() == pytest.approx(cos, abs=1e-6)
        assert candidate[0, t].item() == float(in_q or bool(sentence_index))
    assert question.sum() > 0 and candidate.sum() > question.sum()


def _inputs(batch=2, length=12, d_st=6, dims=(5, 7), seed=0) -> EncoderInputs:
    gen = torch.Generator().manual_seed(seed)
    token_mask = torch.ones(batch, length, dtype=torch.long)
    token_mask[1, 9:] = 0  # a shorter second prompt
    candidate = token_mask.clone()
    candidate[:, 0] = 0  # a label token
    question = torch.zeros(batch, length)
    question[0, 8:11] = 1
    question[1, 6:8] = 1
    return EncoderInputs(
        st_states=torch.randn(batch, length, d_st, generator=gen),
        st_mask=token_mask,
        aligned_embeds=[torch.randn(batch, length, d, generator=gen) for d in dims],
        token_mask=token_mask,
        question_mask=question,
        relevance=torch.rand(batch, length, generator=gen) * (1 - question),
        candidate_mask=candidate,
    )


def test_selection_matches_brute_force_and_passes_gradient_to_the_score():
    cfg = EncoderConfig(kind="interlingua", width=8, heads=2, layers=0)
    inputs = _inputs()
    for slots in (5, 11):  # row 1 has 8 candidates: 11 slots pad with the empty code
        torch.manual_seed(0)
        enc = InterlinguaEncoder(cfg, slots=slots, d_z=4, st_dim=6, model_dims=(5, 7))
        torch.nn.init.normal_(enc.score.weight)
        codes = enc.token_codes(inputs)
        z = enc.select(codes, inputs)
        assert z.shape == (2, slots, 4)
        learned = enc.score(codes.values).squeeze(-1)
        score = cfg.question_prior * inputs.question_mask + cfg.relevance_prior * inputs.relevance + learned
        for row in range(2):
            cands = [t for t in range(12) if inputs.candidate_mask[row, t]]
            kept = sorted(cands, key=lambda t: -score[row, t].item())[:slots]
            kept.sort(key=lambda t: (inputs.question_mask[row, t].item() == 0, t))
            expected = [codes.values[row, t] for t in kept]
            expected += [enc.empty] * (slots - len(kept))
            torch.testing.assert_close(z[row], torch.stack(expected))
        z.sum().backward()
        assert enc.score.weight.grad.abs().sum() > 0


def test_token_reconstruction_is_masked_mean_cosine():
    soft, target = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [0, 1, 0]])
    loss, cos = token_reconstruction(soft, target, mask)
    kept = ((0, 0), (0, 1), (1, 1))
    cosines = [torch.nn.functional.cosine_similarity(soft[b, t], target[b, t], dim=0) for b, t in kept]
    assert cos.item() == pytest.approx(torch.stack(cosines).mean().item(), abs=1e-6)
    assert loss.item() == pytest.approx(1 - cos.item(), abs=1e-6)


def test_interlingua_rejects_private_slots():
    with pytest.raises(ValueError, match="latent.private_length"):
        load_config(
            WireRunConfig,
            REPO / "configs" / "wire" / "tiny.yaml",
            ["encoder.kind=interlingua", "latent.private_length=2"],
        )


def test_reconstruction_warmup_trains_codes_without_the_llms(tmp_path, tiny_llama, tiny_qwen, sentence):
    cfg = load_config(
        WireRunConfig,
        REPO / "configs" / "wire" / "tiny.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            "models=[tiny_llama,tiny_qwen]",
            "encoder.kind=interlingua",
            "encoder.layers=0",
            "latent.private_length=0",
            "loss.align=0",
            "loss.kd=0",
            "loss.recon=1.0",
            "loss.recon_warmup_steps=25",
            "phases=[{name: stage_a, steps: 30}]",
            "train.max_steps=30",
            "train.lr=0.01",
            "train.warmup_steps=0",
            "train.log_every=1",
            "train.eval_every=0",
            "eval.baselines=[]",
        ],
    )
    train_wire(cfg, [tiny_llama, tiny_qwen], sentence)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "train/tiny_qwen/recon_cos" in r]
    warmup, later = rows[:25], rows[25:]
    assert all("train/tiny_qwen/answer_nll" not in r for r in warmup)  # no LLM pass in the warm-up
    assert all("train/tiny_qwen/answer_nll" in r for r in later)
    assert warmup[-1]["train/tiny_qwen/recon_cos"] > warmup[0]["train/tiny_qwen/recon_cos"] + 0.2


def test_anchor_budget_is_the_question_then_sentences_by_relevance(sentence, tiny_llama):
    from latentlm.wire.evaluate import mode_prompts
    from latentlm.wire.features import anchor_budget_contents, text_prompts

    text = format_content("Anna lives in Oslo. Bob likes tea. Anna is tall.", "Where does Anna live?")
    sentences = ["Anna lives in Oslo.", "Bob likes tea.", "Anna is tall."]
    embeds = sentence.embed_texts([*sentences, "Where does Anna live?"])
    cosines = (embeds[:-1] @ embeds[-1]).tolist()
    ranked = [sentences[k] for k in sorted(range(3), key=lambda k: -cosines[k])]
    (selected,) = anchor_budget_contents(sentence, [text])
    assert selected == "\n".join(["Where does Anna live?", *ranked])
    prompt, mask = mode_prompts("anchor_budget", tiny_llama, [text], 6, None, None, sentence)
    expected, expected_mask = text_prompts(tiny_llama, [selected], max_content_tokens=6)
    torch.testing.assert_close(prompt, expected)
    assert torch.equal(mask, expected_mask)
    with pytest.raises(ValueError, match="anchor_budget"):
        mode_prompts("anchor_budget", tiny_llama, [text], 6, None, None, None)


def test_nearest_tokens_is_the_cosine_argmax_over_the_vocabulary(tiny_llama):
    weight = tiny_llama.model.get_input_embeddings().weight
    gen = torch.Generator().manual_seed(0)
    soft = torch.randn(2, 3, weight.shape[1], generator=gen)
    soft[0, 0] = 5.0 * weight[17]  # a scaled copy of a real token finds that token
    expected = torch.nn.functional.normalize(soft, dim=-1) @ torch.nn.functional.normalize(weight, dim=-1).T
    ids = tiny_llama.nearest_tokens(soft, chunk=7)  # chunks smaller than the vocabulary
    assert torch.equal(ids, expected.argmax(-1)) and ids[0, 0].item() == 17


def test_anchor_relevance_of_a_batch_equals_one_text_at_a_time(sentence):
    texts = [
        format_content("Anna lives in Oslo. Bob likes tea.", "Where does Anna live?"),
        format_content("Tea is hot.", "Is tea cold or hot today?"),
    ]
    offsets = sentence.tokenize(texts)["offset_mapping"]
    batched = anchor_relevance(sentence, texts, offsets)
    for row, text in enumerate(texts):
        single = anchor_relevance(sentence, [text], sentence.tokenize([text])["offset_mapping"])
        length = single[0].shape[1]
        for got, expected in zip(batched, single, strict=True):
            torch.testing.assert_close(got[row, :length], expected[0], atol=1e-5, rtol=0)
