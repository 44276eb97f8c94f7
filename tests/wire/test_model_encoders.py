"""Adapters (calibration, FiLM, affine, slices) and encoders (shapes, padding invariance)."""

from __future__ import annotations

import pytest
import torch

from latentlm.wire.config import AdapterConfig, EncoderConfig, LatentConfig, WireModelConfig
from latentlm.wire.encoders import EncoderInputs
from latentlm.wire.features import byte_features
from latentlm.wire.model import WireAdapter, WireModel, token_rms


def test_calibration_hits_target_rms():
    torch.manual_seed(0)
    adapter = WireAdapter(AdapterConfig(kind="mlp", affine=False, film=True), 8, 12, embed_rms=0.037)
    out = adapter(torch.randn(3, 5, 8) * 10)
    torch.testing.assert_close(token_rms(out), torch.full((3, 5, 1), 0.037), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        token_rms(adapter(torch.randn(2, 4, 8), gain=1.5)),
        torch.full((2, 4, 1), 0.0555),
        rtol=1e-4,
        atol=1e-6,
    )


def test_affine_and_film_start_at_identity():
    torch.manual_seed(1)
    plain = WireAdapter(AdapterConfig(kind="linear", affine=False, film=False), 8, 6, 1.0)
    fancy = WireAdapter(AdapterConfig(kind="linear", affine=True, film=True), 8, 6, 1.0)
    fancy.load_state_dict(plain.state_dict(), strict=False)
    z = torch.randn(2, 3, 8)
    torch.testing.assert_close(fancy(z), plain(z))
    assert fancy.identity_penalty().item() == 0.0


def _model(kind: str, private: int = 2) -> WireModel:
    cfg = WireModelConfig(
        model_names=["a", "b"],
        model_dims=[12, 20],
        embed_rms=[0.5, 2.0],
        st_dim=10,
        encoder=EncoderConfig(kind=kind, width=16, heads=2, layers=1, max_bytes=64, max_tokens=32),
        latent=LatentConfig(length=5, private_length=private, d_z=8),
        adapter=AdapterConfig(),
    )
    return WireModel(cfg).eval()


def _inputs(batch: int = 2, pad: int = 0) -> EncoderInputs:
    torch.manual_seed(3)
    ids, mask = byte_features(["hello world", "a longer prompt here"][:batch], 64)
    st = torch.randn(batch, 6, 10)
    st_mask = torch.ones(batch, 6, dtype=torch.long)
    llm = [torch.randn(batch, 4, 12), torch.randn(batch, 3, 20)]
    llm_masks = [torch.ones(batch, 4, dtype=torch.long), torch.ones(batch, 3, dtype=torch.long)]
    if pad:
        ids = torch.cat([ids, torch.full((batch, pad), 256)], 1)
        mask = torch.cat([mask, torch.zeros(batch, pad, dtype=torch.long)], 1)
        st = torch.cat([st, torch.randn(batch, pad, 10)], 1)
        st_mask = torch.cat([st_mask, torch.zeros(batch, pad, dtype=torch.long)], 1)
        llm = [torch.cat([e, torch.randn(batch, pad, e.shape[-1])], 1) for e in llm]
        llm_masks = [torch.cat([m, torch.zeros(batch, pad, dtype=torch.long)], 1) for m in llm_masks]
    return EncoderInputs(ids, mask, st, st_mask, llm, llm_masks)


@pytest.mark.parametrize("kind", ["byte", "stquery", "anchor"])
def test_encoder_shapes_and_padding_invariance(kind):
    model = _model(kind)
    z = model.encode(_inputs())
    assert z.shape == (2, 3 + 2 * 2, 8)  # shared 3 + private 2 per model
    with torch.no_grad():
        torch.testing.assert_close(model.encode(_inputs(pad=3)), z, rtol=1e-4, atol=1e-5)
    assert model.soft_tokens(z, 0).shape == (2, 5, 12)
    assert model.soft_tokens(z, 1).shape == (2, 5, 20)


def test_latent_slices_shared_then_private():
    model = _model("byte", private=2)
    z = torch.arange(7).float().view(1, 7, 1).expand(1, 7, 8)
    assert model.latent_for(z, 0)[0, :, 0].tolist() == [0, 1, 2, 3, 4]
    assert model.latent_for(z, 1)[0, :, 0].tolist() == [0, 1, 2, 5, 6]


def test_save_load_roundtrip(tmp_path):
    model = _model("anchor")
    z = model.encode(_inputs())
    model.save_pretrained(tmp_path / "wire")
    loaded = WireModel.from_pretrained(tmp_path / "wire").eval()
    torch.testing.assert_close(loaded.soft_tokens(loaded.encode(_inputs()), 1), model.soft_tokens(z, 1))
