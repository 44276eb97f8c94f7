"""Two-stream denoiser: shapes per mixer and latent_pred_from, adaLN-Zero identity start, names."""

import re

import pytest
import torch

from latentlm.diffusion.config import ModelConfig
from latentlm.diffusion.model import LatentDiffusionLM, TwoStreamDenoiser


def _config(**kw):
    base = dict(
        vocab_size=17,
        mask_token_id=16,
        latent_dim=5,
        seq_len=9,
        d_model=16,
        num_layers=2,
        num_heads=2,
        num_latent_tokens=3,
        decay_lora_rank=4,
        prefix_length=2,
        pad_token_id=0,
        sep_token_id=1,
    )
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("mixer", ["rwkv", "attention"])
@pytest.mark.parametrize("pred_from", ["text", "prefix", "both"])
def test_shapes(mixer, pred_from):
    torch.manual_seed(0)
    model = TwoStreamDenoiser(_config(sequence_mixer=mixer, latent_pred_from=pred_from))
    out = model(torch.randint(0, 16, (2, 9)), torch.randn(2, 5), torch.rand(2), torch.rand(2))
    assert out.text_hidden.shape == (2, 9, 16) and out.latent_output.shape == (2, 5)
    assert model.text_logits(out.text_hidden).shape == (2, 9, 17)


def test_adaln_zero_blocks_start_as_identity():
    torch.manual_seed(0)
    model = TwoStreamDenoiser(_config())
    h_text, h_latent, cond = torch.randn(2, 9, 16), torch.randn(2, 3, 16), torch.randn(2, 16)
    for block in model.blocks:
        out_text, out_latent = block(h_text, h_latent, cond)
        torch.testing.assert_close(out_text, h_text)
        torch.testing.assert_close(out_latent, h_latent)


def test_prefix_latent_head_reads_only_the_prefix_embeddings():
    torch.manual_seed(0)
    model = TwoStreamDenoiser(_config(latent_pred_from="prefix", num_layers=1))
    torch.nn.init.normal_(model.latent_head.weight)
    x = torch.randint(0, 16, (1, 9))
    z, t = torch.randn(1, 5), torch.rand(1)
    base = model(x, z, t, t).latent_output
    changed_prefix = x.clone()
    changed_prefix[0, 0] = (x[0, 0] + 1) % 16
    assert not torch.allclose(model(changed_prefix, z, t, t).latent_output, base)
    # adaLN-Zero blocks are identities at init, so tokens after the prefix cannot reach the latent head.
    changed_tail = x.clone()
    changed_tail[0, 5] = (x[0, 5] + 1) % 16
    torch.testing.assert_close(model(changed_tail, z, t, t).latent_output, base)


def test_seed_unfreeze_regexes_select_recurrent_layers():
    names = [n for n, _ in LatentDiffusionLM(_config(variational=True)).named_parameters()]
    time_mix = [n for n in names if re.search("rwkv.*time_mix", n)]
    channel_mix = [n for n in names if re.search("rwkv.*channel_mix", n)]
    assert time_mix and channel_mix
    assert all(".time_mix." in n for n in time_mix) and all(".channel_mix." in n for n in channel_mix)
    assert not any(re.search("rwkv.*time_mix", n) for n in names if n.startswith("latent_"))


def test_latent_modulation_conditions_every_block_and_belongs_to_the_latent_stream():
    """``latent_modulation`` starts without effect (zero init), then the latent reaches the text states
    through the adaLN conditioning alone (latent tokens cut off); it is frozen with the latent stream."""
    from latentlm.diffusion.model import stream_of

    torch.manual_seed(0)
    plain, modulated = TwoStreamDenoiser(_config()), TwoStreamDenoiser(_config(latent_modulation=True))
    modulated.load_state_dict(plain.state_dict(), strict=False)
    x, t = torch.randint(0, 16, (2, 9)), torch.rand(2)
    z_a, z_b = torch.randn(2, 5), torch.randn(2, 5)
    torch.testing.assert_close(modulated(x, z_a, t, t).text_hidden, plain(x, z_a, t, t).text_hidden)
    with torch.no_grad():
        for p in modulated.parameters():
            p.add_(0.1 * torch.randn_like(p))
        modulated.latent_in.weight.zero_()  # the latent tokens no longer carry the latent
        modulated.latent_in.bias.zero_()
    assert not torch.allclose(modulated(x, z_a, t, t).text_hidden, modulated(x, z_b, t, t).text_hidden)
    assert stream_of("rwkv.latent_modulation.weight") == "latent"
