"""Tiny in-process tokenizers and random causal LMs for the wire unit tests (nothing downloaded)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from latentlm.data.synthetic_qa import synthetic_squad
from latentlm.wire.features import SentenceStates
from latentlm.wire.frozen import FrozenLM, format_content

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer(vocab_size: int = 160, with_bos: bool = True) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on synthetic QA text, with BOS/EOS/PAD and a ChatML template."""
    examples = synthetic_squad(60, seed=123)
    corpus = [format_content(e.context, e.question) + "\nAnswer: " + e.answers[0] for e in examples]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    if with_bos:
        from tokenizers import processors

        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        chat_template=CHAT_TEMPLATE,
    )
    return fast


def build_model(
    kind: str, vocab: int, hidden: int = 32, seed: int = 0, init: float = 0.02
) -> torch.nn.Module:
    """A 2-layer random Llama or Qwen2 causal LM in float32 (`init`: weight init std)."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        initializer_range=init,
    )
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(kind)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def tiny_tokenizer_nobos():
    return build_tokenizer(vocab_size=200, with_bos=False)


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer):
    return FrozenLM(build_model("llama", len(tiny_tokenizer)), tiny_tokenizer, "tiny_llama")


@pytest.fixture(scope="session")
def tiny_qwen(tiny_tokenizer_nobos):
    return FrozenLM(
        build_model("qwen", len(tiny_tokenizer_nobos), hidden=48, seed=1),
        tiny_tokenizer_nobos,
        "tiny_qwen",
        prompt_style="chat",
    )


@pytest.fixture(scope="module")
def sentence(tiny_tokenizer):
    """A tiny random BERT as the sentence encoder (MiniLM's role), 16-d."""
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(tiny_tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    return SentenceStates(bert.eval(), tiny_tokenizer, 64)
