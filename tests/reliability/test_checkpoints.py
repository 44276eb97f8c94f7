"""Fault injection: damaged checkpoints and saved models are named, never trained on; resume falls back."""

import pytest
import torch

from latentlm.core import RunDir
from latentlm.core.checkpoint import DamagedFileError, read_json
from latentlm.core.engine import load_model_weights
from tests.core.test_io import TinyConfig, TinyModel
from tests.core.toy_task import ToyRegression
from tests.reliability.faults import train, weights


def flip_bytes(path, count=4):
    data = bytearray(path.read_bytes())
    for i in range(1, count + 1):
        data[-8 * i] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_checkpoint_is_data_only_with_a_manifest(tmp_path):
    train(tmp_path, 4, checkpoint_every=4)
    folder = RunDir(tmp_path).latest_checkpoint()
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "manifest.json",
        "model.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "rng_rank0.json",
        "rng_rank0.safetensors",
        "scheduler.json",
        "state.json",
    ]
    listed = read_json(folder / "manifest.json")["files"]
    assert sorted(listed) == [n for n in names if n != "manifest.json"]
    assert listed["model.safetensors"]["size"] == (folder / "model.safetensors").stat().st_size
    for path in folder.iterdir():  # no pickle anywhere (a pickle starts with the PROTO opcode 0x80)
        assert not path.read_bytes().startswith(b"\x80")


@pytest.mark.parametrize("fault", ["flipped", "truncated", "missing_rng"])
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, capsys, fault):
    train(tmp_path / "cut", 10, checkpoint_every=5)
    newest = tmp_path / "cut" / "checkpoints" / "step_10"
    if fault == "flipped":
        flip_bytes(newest / "model.safetensors")
        expected = f"{newest / 'model.safetensors'}: damaged: its content differs from manifest.json"
    elif fault == "truncated":
        truncate(newest / "model.safetensors")
        expected = f"{newest / 'model.safetensors'}: damaged: "
    else:
        (newest / "rng_rank0.json").unlink()
        expected = f"{newest / 'rng_rank0.json'}: missing (listed in manifest.json)"
    capsys.readouterr()
    resumed, state = train(tmp_path / "cut", 15, checkpoint_every=5)
    err = capsys.readouterr().err
    assert expected in err and "resuming from the older" in err and "step_5" in err
    run = RunDir(tmp_path / "cut")
    record = next(r for r in run.read_metrics() if "resume/damaged_checkpoints" in r)
    assert record["step"] == 5 and expected in record["resume/damaged_checkpoints"]
    assert (tmp_path / "cut" / "checkpoints" / "damaged_step_10").is_dir()
    # Resumed exactly from step 5: the same weights as a run that was never damaged.
    full, _ = train(tmp_path / "full", 15, checkpoint_every=5)
    assert state.step == 15
    for name, value in weights(full.model).items():
        torch.testing.assert_close(weights(resumed.model)[name], value, rtol=0, atol=0)


def test_no_intact_checkpoint_is_refused_with_the_files_named(tmp_path):
    train(tmp_path, 4, checkpoint_every=2, keep_checkpoints=2)
    checkpoints = tmp_path / "checkpoints"
    truncate(checkpoints / "step_4" / "optimizer.safetensors")
    flip_bytes(checkpoints / "step_2" / "model.safetensors")
    with pytest.raises(ValueError, match="no intact checkpoint") as err:
        train(tmp_path, 8, checkpoint_every=2)
    assert str(checkpoints / "step_4" / "optimizer.safetensors") in str(err.value)
    assert str(checkpoints / "step_2" / "model.safetensors") in str(err.value)


def test_nan_stop_names_the_newest_intact_checkpoint(tmp_path):
    from tests.reliability.faults import NaNGradient

    train(tmp_path, 4, checkpoint_every=2)
    flip_bytes(tmp_path / "checkpoints" / "step_4" / "model.safetensors")
    with pytest.raises(FloatingPointError, match="last good checkpoint is .*step_4"):
        # resumes from step 2 (step 4 set aside), writes a new step_4, then fails at step 6
        train(tmp_path, 10, task=NaNGradient(bad_steps={5}), checkpoint_every=2)
    assert (tmp_path / "checkpoints" / "damaged_step_4").is_dir()


@pytest.mark.parametrize("fault", ["flipped", "truncated"])
def test_load_model_weights_names_the_damaged_file(tmp_path, fault):
    train(tmp_path, 4, checkpoint_every=4)
    path = tmp_path / "checkpoints" / "step_4" / "model.safetensors"
    (flip_bytes if fault == "flipped" else truncate)(path)
    with pytest.raises(DamagedFileError, match=f"^{path}: damaged"):
        load_model_weights(ToyRegression().build_model(), path.parent)


@pytest.mark.parametrize("fault", ["flipped", "truncated", "config"])
def test_from_pretrained_names_the_damaged_file(tmp_path, fault):
    folder = TinyModel(TinyConfig(width=3)).save_pretrained(tmp_path / "model")
    assert (folder / "manifest.json").is_file()
    if fault == "config":
        path = folder / "config.json"
        path.write_text(path.read_text().replace('"width": 3', '"width": 4'))
    else:
        path = folder / "model.safetensors"
        (flip_bytes if fault == "flipped" else truncate)(path)
    with pytest.raises(DamagedFileError, match=f"^{path}: damaged"):
        TinyModel.from_pretrained(folder)


def test_truncated_model_without_manifest_still_names_the_file(tmp_path):
    folder = TinyModel(TinyConfig(width=3)).save_pretrained(tmp_path / "model")
    (folder / "manifest.json").unlink()  # a folder saved before manifests existed
    truncate(folder / "model.safetensors")
    with pytest.raises(DamagedFileError, match="model.safetensors: not a readable safetensors file"):
        TinyModel.from_pretrained(folder)


def test_process_count_mismatch_is_named_as_such(tmp_path):
    import shutil

    from latentlm.core.checkpoint import write_manifest

    train(tmp_path, 2, checkpoint_every=2)
    folder = tmp_path / "checkpoints" / "step_2"
    for suffix in ("json", "safetensors"):  # as if two processes had written it
        shutil.copy(folder / f"rng_rank0.{suffix}", folder / f"rng_rank1.{suffix}")
    write_manifest(folder)
    with pytest.raises(ValueError, match="step_2: written by 2 processes, resumed with 1; resume with 2"):
        train(tmp_path, 4)
