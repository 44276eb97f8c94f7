import pytest
import torch

from latentlm.teachers import encode_tokens, load_causal_lm, load_encoder, model_fingerprint, resolve_model


def test_unknown_model_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="unknown model 'no-such-model'"):
        resolve_model("no-such-model")


def test_hub_ids_and_local_gguf_files_resolve(tmp_path):
    assert resolve_model("org/model").path == "org/model"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"")
    source = resolve_model(str(gguf))
    assert (source.path, source.gguf_file) == (str(tmp_path), "m.gguf")


def test_fingerprint_follows_the_weight_files(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"a" * 10)
    before = model_fingerprint(str(folder))
    assert before == model_fingerprint(str(folder))
    assert before[2][:2] == ("model.safetensors", 10)
    (folder / "model.safetensors").write_bytes(b"b" * 11)  # reinstalled or replaced weights
    assert model_fingerprint(str(folder)) != before
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x" * 3)
    assert model_fingerprint(str(gguf))[2][:2] == ("m.gguf", 3)
    assert model_fingerprint("org/model") == ["org/model", "org/model"]  # a hub id: its name
    assert model_fingerprint("no-such-model") == ["no-such-model"]  # loading it names the problem


@pytest.mark.real_model
def test_minilm_token_states_and_offsets():
    model, tokenizer = load_encoder("minilm")
    (out,) = encode_tokens(model, tokenizer, ["Latent states, please."])
    assert out["hidden"].shape == (len(out["input_ids"]), 384)
    text = "Latent states, please."
    pieces = [text[a:b] for a, b in out["offsets"].tolist() if b > a]
    assert "".join(pieces).lower() == text.replace(" ", "").lower()
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.real_model
def test_smollm2_loads_frozen_and_generates():
    model, tokenizer = load_causal_lm("smollm2")
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    new = model.generate(ids, max_new_tokens=3, do_sample=False)[0, ids.shape[1] :]
    assert "Paris" in tokenizer.decode(new)
    assert model.config.hidden_size == 576 and not model.training
    logits = model(ids).logits
    assert torch.isfinite(logits).all()


@pytest.mark.real_model
def test_cached_gguf_tokenizer_equals_the_gguf_one():
    from transformers import AutoTokenizer

    from latentlm.teachers import load_tokenizer

    source = resolve_model("smollm2")
    reference = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    cached = load_tokenizer("smollm2")
    for text in ["Hello world, what's the capital of France? Answer: Paris", "  spaces\nand \u00e9"]:
        assert cached(text).input_ids == reference(text).input_ids
    chat = [{"role": "user", "content": "hi"}]
    assert cached.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        reference.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )
