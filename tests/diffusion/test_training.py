"""Loss modes, freezing, the Stage II unfreeze policy and Stage I -> Stage II checkpoint start."""

import json
import math
import re
from pathlib import Path

import pytest
import torch

from latentlm.core.checkpoint import DamagedFileError, load_tensors
from latentlm.core.config import load_config
from latentlm.core.engine import Trainer
from latentlm.core.run import RunDir
from latentlm.diffusion.config import DiffusionConfig
from latentlm.diffusion.data import DirectFileDataset, collate_batch
from latentlm.diffusion.model import stream_of
from latentlm.diffusion.task import DiffusionTask, load_stage1_checkpoint, resolve_checkpoint_file


def _task(overrides, run=None):
    return DiffusionTask(load_config(DiffusionConfig, None, overrides), run)


def _batch(task):
    dataset = task.train_dataset()
    return task.collate([dataset[i] for i in range(8)])


@pytest.mark.parametrize(
    ("stage", "mode", "expected"),
    [
        ("stage1_coupling", "stage1_coupling", {"text_nelbo_per_token", "latent_mse"}),
        ("stage1_coupling", "l2t", {"text_nelbo_per_token"}),
        ("stage1_coupling", "t2l", {"latent_mse"}),
        ("stage2_variational", "stage1_coupling", {"text_nelbo_per_token", "latent_mse", "kl", "geometry"}),
    ],
)
def test_every_mode_gives_finite_losses_and_gradients_only_where_trainable(
    tiny_overrides, stage, mode, expected
):
    torch.manual_seed(0)
    overrides = [
        *tiny_overrides,
        f"train.stage_schedule={stage}",
        f"train.loss_type={mode}",
        "loss.geom_weight=0.5",
        "train.clean_cond_prob=0.0",
    ]
    if stage == "stage2_variational":
        overrides.append("data.use_external_latents=false")
    task = _task(overrides)
    model = task.build_model()
    out = task.compute_losses(model, _batch(task), mode)
    assert expected <= set(out)
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert p.grad is None, name
    frozen_stream = {"l2t": "latent", "t2l": "text"}.get(mode)
    for name, p in model.named_parameters():
        assert p.requires_grad == (stream_of(name) != frozen_stream or frozen_stream is None), name
    if stage == "stage2_variational":
        assert model.latent_encoder.mu_head.weight.grad is not None


def test_stream_classification():
    assert stream_of("rwkv.blocks.3.time_mix.text.key.weight") == "text"
    assert stream_of("rwkv.blocks.0.channel_mix.latent.value.weight") == "latent"
    assert stream_of("rwkv.token_embedding.weight") == "text"
    assert stream_of("rwkv.latent_head.bias") == "latent"
    assert stream_of("rwkv.blocks.0.modulation.latent.weight") == "latent"
    assert stream_of("latent_encoder.mu_head.weight") is None


def test_sequential_schedule_phases(tiny_overrides):
    task = _task(
        [
            *tiny_overrides,
            "train.loss_type=sequential",
            "train.sequential_schedule=[{type: stage1_coupling, steps: 2}, {type: l2t, steps: 1},"
            " {type: t2l, steps: 3}]",
        ]
    )
    assert [task.mode_at(s) for s in range(8)] == ["stage1_coupling"] * 2 + ["l2t"] + ["t2l"] * 5


def _train(overrides, run_path):
    cfg = load_config(DiffusionConfig, None, overrides)
    run = RunDir(run_path, tensorboard=False)
    task = DiffusionTask(cfg, run)
    trainer = Trainer(task, cfg.train, run)
    trainer.fit()
    return trainer, task, run


def test_stage2_starts_from_stage1_checkpoint_and_unfreezes_on_schedule(tiny_overrides, tiny_data):
    stage1_dir = tiny_data["root"] / "stage1"
    _train([*tiny_overrides, "train.max_steps=2"], stage1_dir)
    stage1 = load_tensors(RunDir(stage1_dir, tensorboard=False).latest_checkpoint() / "model.safetensors")

    patterns = ["rwkv.*time_mix"]
    stage2_overrides = [
        *tiny_overrides,
        "train.stage_schedule=stage2_variational",
        "data.use_external_latents=false",
        f"model.checkpoint_path={stage1_dir}",
        "train.unfreeze_after_steps=2",
        f"train.unfreeze_patterns={patterns}",
        "train.param_log_every=1",
    ]
    task = _task(stage2_overrides)
    model = task.build_model()
    for name, value in model.state_dict().items():
        if name.startswith("rwkv."):
            torch.testing.assert_close(value, stage1[name], rtol=0, atol=0)
    assert model.latent_encoder is not None and model.latent_prior is not None

    # The policy flips exactly the matching parameters, exactly at unfreeze_after_steps.
    assert task._apply_unfreeze_policy(model, 1) == []
    frozen_before = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen_before == {n for n, _ in model.named_parameters() if n.startswith("rwkv.")}
    changed = task._apply_unfreeze_policy(model, 2)
    expected = [n for n, _ in model.named_parameters() if re.search(patterns[0], n)]
    assert changed == expected and len(expected) > 0
    assert all("time_mix" in n for n in changed)
    assert task._apply_unfreeze_policy(model, 3) == []

    # Train 3 steps: step 0-1 frozen denoiser, step 2 unfreezes time_mix.
    trainer, _, run = _train([*stage2_overrides, "train.max_steps=3"], tiny_data["root"] / "stage2")
    final = trainer.model.state_dict()
    for name, value in final.items():
        if name.startswith("rwkv.") and "time_mix" not in name:
            torch.testing.assert_close(value, stage1[name], rtol=0, atol=0, msg=name)
    moved = [n for n in final if "time_mix" in n and not torch.equal(final[n], stage1[n])]
    assert moved  # the unfrozen recurrence trained at step 3
    counts = [r for r in run.read_metrics() if "params/active" in r]
    assert [r["step"] for r in counts] == [0, 1, 2]
    assert counts[0]["params/active"] == counts[1]["params/active"] < counts[2]["params/active"]


def test_collate_handles_missing_latents(tiny_data):
    with_latents = DirectFileDataset(tiny_data["token_dir"], tiny_data["latent_dir"], "val", True)
    without = DirectFileDataset(tiny_data["token_dir"], tiny_data["latent_dir"], "val", False)
    assert without[0]["latent"] is None
    batch = collate_batch([with_latents[0], without[1]], latent_dim=6)
    assert batch["has_latent"].tolist() == [True, False]
    assert torch.equal(batch["latent"][1], torch.zeros(6))
    torch.testing.assert_close(batch["latent"][0], with_latents[0]["latent"])
    # Standardised with the training statistics: train latents have mean ~0, std ~1.
    train = DirectFileDataset(tiny_data["token_dir"], tiny_data["latent_dir"], "train", True)
    stacked = torch.stack([train[i]["latent"] for i in range(len(train))])
    torch.testing.assert_close(stacked.mean(0), torch.zeros(6), atol=1e-5, rtol=0)


def test_stage2_start_skips_and_names_a_damaged_checkpoint(tiny_overrides, tiny_data):
    stage1_dir = tiny_data["root"] / "stage1"
    _train([*tiny_overrides, "train.max_steps=2", "train.checkpoint_every=1"], stage1_dir)
    older, newest = RunDir(stage1_dir, tensorboard=False).checkpoints()[-2:]
    weights = newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a tensor: still readable, but the manifest's SHA-256 differs
    weights.write_bytes(bytes(data))
    assert resolve_checkpoint_file(stage1_dir) == older / "model.safetensors"
    model = _task(tiny_overrides).build_model()
    with pytest.raises(DamagedFileError, match=re.escape(str(weights))):
        load_stage1_checkpoint(model, newest)
    load_stage1_checkpoint(model, stage1_dir)
    expected = load_tensors(older / "model.safetensors")
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0)


def test_bad_checkpoint_path_is_named(tiny_overrides, tmp_path):
    task = _task([*tiny_overrides, f"model.checkpoint_path={tmp_path / 'nope'}"])
    with pytest.raises(FileNotFoundError, match="model.checkpoint_path"):
        task.build_model()


def test_compact_vocab_round_trips_training_tokens_and_counts_unk(tiny_data):
    import numpy as np

    from latentlm.diffusion.data import CompactVocab, read_token_meta

    meta = read_token_meta(tiny_data["token_dir"])
    train = np.load(f"{tiny_data['token_dir']}/train.npy")[:4]
    vocab = CompactVocab.build(train, meta)
    seen = set(np.unique(train).tolist()) | {meta.pad_token_id, meta.sep_token_id, meta.mask_token_id, 2}
    assert len(vocab) == len(seen) < meta.vocab_size
    # every training token maps to a distinct compact id and back
    np.testing.assert_array_equal(vocab.original_ids[vocab.id_map[train]], train)
    # unseen tokens map to [UNK] (tokenizer id 2 in the fixture), and are counted
    unseen = sorted(set(range(meta.vocab_size)) - seen)
    assert unseen and all(vocab.original_ids[vocab.id_map[u]] == 2 for u in unseen)
    val = np.load(f"{tiny_data['token_dir']}/val.npy")
    expected = sum(int(t) in unseen for t in val.ravel())
    assert vocab.unknown_count(val, meta) == expected


def test_kl_warmup_and_free_bits_match_hand_computation():
    from latentlm.diffusion.variational import free_bits_kl, kl_divergence, kl_weight_at

    assert kl_weight_at(0, 0.5, 10) == 0.0
    assert kl_weight_at(4, 0.5, 10) == 0.5 * 4 / 10
    assert kl_weight_at(10, 0.5, 10) == kl_weight_at(99, 0.5, 10) == 0.5
    assert kl_weight_at(0, 0.5, 0) == 0.5
    # Two examples, two dimensions; q = N(mu, e^logvar), p = N(0, 1): KL = (e^lv + mu^2 - 1 - lv) / 2.
    mu = torch.tensor([[0.0, 2.0], [0.0, 1.0]])
    logvar = torch.tensor([[0.0, 0.0], [-1.0, 0.0]])
    kl = kl_divergence(mu, logvar, torch.zeros(2), torch.zeros(2), reduce=False)
    by_hand = torch.tensor([[0.0, 2.0], [(math.exp(-1.0) - 1.0 + 1.0) / 2, 0.5]])
    torch.testing.assert_close(kl, by_hand)
    # Batch means per dimension: [0.18394, 1.25]; free bits 0.5 lifts the first to 0.5.
    torch.testing.assert_close(free_bits_kl(kl, 0.0), torch.tensor(math.exp(-1.0) / 4 + 1.25))
    torch.testing.assert_close(free_bits_kl(kl, 0.5), torch.tensor(0.5 + 1.25))
    # Below the free bits a dimension gets no gradient; above it does.
    mu = mu.clone().requires_grad_()
    free_bits_kl(kl_divergence(mu, logvar, torch.zeros(2), torch.zeros(2), reduce=False), 0.5).backward()
    assert mu.grad[:, 0].abs().sum() == 0 and mu.grad[:, 1].abs().sum() > 0


def test_stage2_loss_uses_warmup_and_free_bits(tiny_overrides):
    overrides = [
        *tiny_overrides,
        "train.stage_schedule=stage2_variational",
        "data.use_external_latents=false",
        "loss.kl_weight=0.2",
        "loss.kl_warmup_steps=4",
        "loss.free_bits=0.01",
    ]
    task = _task(overrides)
    model = task.build_model()
    batch = _batch(task)
    for step, weight in ((0, 0.0), (2, 0.1), (8, 0.2)):
        torch.manual_seed(0)
        out = task.compute_losses(model, batch, "stage1_coupling", step)
        assert float(out["kl_weight"]) == pytest.approx(weight)
        expected = out["text_nelbo_per_token"] + out["latent_mse"] + weight * out["kl_penalised"] / 8
        torch.testing.assert_close(out["loss"].detach(), expected)


def test_autoregressive_baseline_loss_is_hand_computed_cross_entropy():
    from latentlm.diffusion.autoregressive import AutoregressiveLM, real_token_mask
    from latentlm.diffusion.config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        d_model=8,
        num_layers=1,
        num_heads=2,
        vocab_size=7,
        seq_len=5,
        latent_dim=1,
        mask_token_id=6,
        pad_token_id=0,
        sep_token_id=1,
        unk_token_id=2,
    )
    model = AutoregressiveLM(cfg).eval()
    rows = torch.tensor([[3, 4, 1, 0, 0], [5, 3, 4, 5, 1]])
    assert real_token_mask(rows, 1).tolist() == [[True, True, True, False, False], [True] * 5]
    out = model(rows)
    total, count = 0.0, 0
    for b in range(2):
        prefix = [1]  # the [SEP] start token
        for t in range(5):
            logits = model.logits(torch.tensor([prefix]))[0, -1]
            if t < 3 or b == 1:
                total += -(logits[rows[b, t]] - torch.logsumexp(logits, 0)).item()
                count += 1
            prefix.append(int(rows[b, t]))
    assert count == 8 and int(out.num_tokens) == 8
    assert float(out.loss.detach()) == pytest.approx(total / count, rel=1e-5)
    samples = model.sample_ids(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 5) and not (samples == 6).any()


def test_a_training_step_under_bf16_autocast():
    """The hand-written backward passes (chunk form, fused cross-entropy) under ``train.mixed_precision
    = bf16``: the step runs on CPU autocast, every gradient is finite and close to float32's."""
    from latentlm.diffusion.config import ModelConfig
    from latentlm.diffusion.model import LatentDiffusionLM

    cfg = ModelConfig(
        vocab_size=50, mask_token_id=3, sep_token_id=2, pad_token_id=0, latent_dim=8, seq_len=40,
        d_model=32, num_layers=1, num_heads=2,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LatentDiffusionLM(cfg)
    ids, latent = torch.randint(4, 50, (3, 40)), torch.randn(3, 8)
    grads = {}
    for precision in ("float32", "bf16"):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(ids, latent, generator=torch.Generator().manual_seed(0)).loss
        loss.backward()
        grads[precision] = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    assert torch.isfinite(grads["bf16"]).all()
    cosine = torch.nn.functional.cosine_similarity(grads["bf16"], grads["float32"], dim=0)
    assert cosine > 0.99, float(cosine)


def test_prepared_folders_made_with_other_settings_are_refused(tiny_data, tiny_overrides):
    """`train` with data.prepare set reuses existing folders only if they were prepared that way."""
    from latentlm.diffusion.config import PrepareConfig
    from latentlm.diffusion.data import prepare_settings

    made_by = prepare_settings(PrepareConfig(corpus="sentences.txt", seq_len=8))
    for folder in ("token_dir", "latent_dir"):
        meta_path = Path(tiny_data[folder]) / "meta.json"
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "prepare": made_by}))
    same = ["data.prepare.corpus=sentences.txt", "data.prepare.seq_len=8"]
    _task(tiny_overrides + same)  # the same settings: reused
    with pytest.raises(
        ValueError, match=r"tokens/meta.json: prepared with data.prepare.seq_len=8, the config asks for 64"
    ):
        _task(tiny_overrides + ["data.prepare.corpus=sentences.txt", "data.prepare.seq_len=64"])
    with pytest.raises(ValueError, match=r"prepared with data.prepare.corpus='sentences.txt'"):
        _task(tiny_overrides + ["data.prepare.corpus=other.txt", "data.prepare.seq_len=8"])
    # Latents prepared from other sentences than the tokens ask for: named, never used.
    latent_meta = Path(tiny_data["latent_dir"]) / "meta.json"
    latent_meta.write_text(json.dumps({**json.loads(latent_meta.read_text()), "prepare": {"seed": 1}}))
    with pytest.raises(
        ValueError, match=r"latents/meta.json: prepared with data.prepare.seed=1, the config asks for 0"
    ):
        _task(tiny_overrides + same)
