"""FrozenLM: prompt layout, anchor/label alignment, PAD masking and inputs_embeds generation."""

from __future__ import annotations

import torch

from latentlm.data.synthetic_qa import synthetic_squad
from latentlm.wire.frozen import FrozenLM, answer_cross_entropy, format_content


def _prompts(lm: FrozenLM, n: int = 3):
    examples = synthetic_squad(n, seed=7)
    return examples, [lm.text_prompt_ids(format_content(e.context, e.question)) for e in examples]


def test_generation_from_embeds_equals_generation_from_ids(tiny_llama, tiny_qwen):
    for lm in (tiny_llama, tiny_qwen):
        _, prompts = _prompts(lm)
        prompts[1] = prompts[1][:-5]  # unequal lengths exercise left padding
        embeds, mask = lm.pack_left([lm.embed(p) for p in prompts])
        from_embeds = lm.generate_from_embeds(embeds, mask, max_new_tokens=6, min_new_tokens=6)
        for prompt, got in zip(prompts, from_embeds, strict=True):
            ids = torch.tensor([prompt])
            out = lm.model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=6,
                min_new_tokens=6,
                do_sample=False,
                pad_token_id=lm.pad_id,
                eos_token_id=lm.stop_ids,
            )
            assert lm._cut_at_stop(out[0, ids.shape[1] :].tolist()) == got


def test_first_gold_token_after_anchor_is_label_zero(tiny_llama, tiny_qwen):
    for lm in (tiny_llama, tiny_qwen):
        for example in synthetic_squad(10, seed=3):
            answer = example.answers[0]
            labels = lm.answer_ids(answer)
            joint = lm.encode(lm.anchor_text + answer)
            anchor = [t for t in lm.parts.anchor if t != lm.bos_id]
            assert joint[: len(anchor)] == anchor
            assert labels[0] == joint[len(anchor)]
            assert lm.decode(labels) == answer


def test_pad_never_contributes_to_loss(tiny_llama):
    lm = tiny_llama
    examples, prompts = _prompts(lm, 2)
    answers = [lm.answer_ids(e.answers[0]) for e in examples]
    answers[0] = answers[0][:1]
    ids = lm.pad_answers(answers)
    mask = lm.answer_mask(answers, ids.shape[1])
    embeds, pmask = lm.pack_left([lm.embed(p) for p in prompts])
    logits = lm.teacher_forced_logits(embeds, pmask, ids, mask)
    loss = answer_cross_entropy(logits, ids, mask)
    # Changing what sits in the padded positions changes nothing.
    ids_other = ids.clone()
    ids_other[mask == 0] = 5
    logits_other = lm.teacher_forced_logits(embeds, pmask, ids_other, mask)
    torch.testing.assert_close(answer_cross_entropy(logits_other, ids_other, mask), loss)
    # And the loss equals the per-example brute-force mean over real tokens only.
    total, count = 0.0, 0
    for prompt, ans in zip(prompts, answers, strict=True):
        full = torch.tensor([prompt + ans])
        out = lm.model(input_ids=full).logits[0]
        for t, token in enumerate(ans):
            total += -torch.log_softmax(out[len(prompt) - 1 + t], -1)[token].item()
            count += 1
    torch.testing.assert_close(loss.item(), total / count, rtol=1e-4, atol=1e-4)


def test_chat_layout_and_bos_policy(tiny_llama, tiny_qwen):
    assert tiny_llama.use_bos and tiny_llama.parts.prefix == [tiny_llama.bos_id]
    assert not tiny_qwen.use_bos
    text = tiny_qwen.tokenizer.decode(tiny_qwen.parts.prefix + tiny_qwen.parts.suffix)
    assert text.startswith("<|im_start|>user\n") and text.endswith("<|im_start|>assistant\n")


def test_embed_rms_matches_table(tiny_llama):
    weight = tiny_llama.model.get_input_embeddings().weight.double()
    torch.testing.assert_close(tiny_llama.embed_rms, weight.pow(2).mean().sqrt().item())
