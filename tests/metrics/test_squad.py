"""Official SQuAD normalisation, EM/F1 on hand cases, the JSON reader and the synthetic generator."""

from __future__ import annotations

import json

import pytest

from latentlm.data.squad import SquadFormatError, load_squad, parse_squad, select_examples
from latentlm.data.synthetic_qa import synthetic_squad
from latentlm.metrics.squad import exact_match, f1_score, normalize_answer, squad_scores


def test_normalisation_hand_cases():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert normalize_answer("Theory") == "theory"  # 'the' only as a word
    assert normalize_answer("  ") == ""


def test_em_f1_hand_cases():
    assert exact_match("the Broncos", "Broncos.") == 1.0
    assert exact_match("Denver", "Denver Broncos") == 0.0
    # pred {denver, broncos, team}, gold {denver, broncos}: P=2/3, R=1 -> F1 = 0.8
    assert f1_score("Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    assert f1_score("Carolina Panthers", "Denver Broncos") == 0.0
    assert f1_score("", "Denver") == 0.0
    # repeated tokens count with multiplicity: pred {a1 x2}, gold {a1}: P=1/2, R=1 -> 2/3
    assert f1_score("x x", "x") == pytest.approx(2 / 3)
    scores = squad_scores(["Denver Broncos", "1990"], [["Broncos", "Denver Broncos"], ["in 1990", "1991"]])
    # q1: EM 1, F1 1; q2: EM 0, F1 max(2*(1/1)*(1/2)/(1.5)=2/3, 0) -> means x100
    assert scores["em"] == pytest.approx(50.0)
    assert scores["f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)


def test_reader_real_and_errors(tmp_path, data_dir):
    examples = load_squad(data_dir / "squad" / "dev-v1.1-subset.json")
    assert len(examples) == 8927
    first = examples[0]
    assert first.answers[0] == "Denver Broncos"
    assert first.context[first.answer_starts[0] :].startswith("Denver Broncos")
    assert len(select_examples(examples, 5, offset=2)) == 5
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"paragraphs": [{"context": "x", "qas": [{"question": "q"}]}]}]}))
    with pytest.raises(
        SquadFormatError, match=r"bad.json: data\[0\].paragraphs\[0\].qas\[0\]: missing field 'answers'"
    ):
        load_squad(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{\n oops")
    with pytest.raises(SquadFormatError, match="broken.json: invalid JSON at line 2"):
        load_squad(broken)
    with pytest.raises(FileNotFoundError, match="SQuAD file not found"):
        load_squad(tmp_path / "missing.json")
    with pytest.raises(SquadFormatError, match="missing field 'data'"):
        parse_squad({}, "x.json")


def test_synthetic_is_deterministic_and_extractive():
    a, b = synthetic_squad(20, seed=4), synthetic_squad(20, seed=4)
    assert a == b and a != synthetic_squad(20, seed=5)
    for ex in a:
        assert ex.context[ex.answer_starts[0] :].startswith(ex.answers[0])


def test_answer_start_must_fit_inside_the_context():
    def squad(start):
        answer = {"text": "cat", "answer_start": start}
        return {
            "data": [{"paragraphs": [{"context": "a cat", "qas": [{"question": "q", "answers": [answer]}]}]}]
        }

    assert parse_squad(squad(2), "ok.json")[0].answer_starts == (2,)
    for start in (3, -1):
        with pytest.raises(SquadFormatError) as err:
            parse_squad(squad(start), "x.json")
        assert str(err.value) == (
            f"x.json: data[0].paragraphs[0].qas[0].answers[0].answer_start: {start} does not fit the answer "
            "(3 characters) inside the context (5 characters)"
        )
