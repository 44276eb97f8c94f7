"""Deterministic synthetic extractive QA in the SQuAD example format, for fast tests.

Each paragraph states a few facts ("The capital of Velor is Ostra."); each question asks for one
of them, and the gold answer is a span of the paragraph. The same seed gives the same examples.
"""

from __future__ import annotations

import random

from latentlm.data.squad import SquadExample

_PLACES = ["Velor", "Quenta", "Marrow", "Isel", "Dunmere", "Ardent", "Caldra", "Feyne", "Lorsk", "Tamsin"]
_CITIES = ["Ostra", "Belm", "Karth", "Nivea", "Pell", "Sorrow", "Umbra", "Vey", "Wren", "Yarrow"]
_COLORS = ["red", "blue", "green", "amber", "violet", "silver"]
_ANIMALS = ["heron", "otter", "lynx", "falcon", "badger", "salmon"]


def _facts(rng: random.Random, place: str) -> list[tuple[str, str, str]]:
    """(sentence, question, answer) triples about one place."""
    city, color, animal = rng.choice(_CITIES), rng.choice(_COLORS), rng.choice(_ANIMALS)
    year = str(rng.randint(1100, 1990))
    return [
        (f"The capital of {place} is {city}.", f"What is the capital of {place}?", city),
        (f"The flag of {place} is {color}.", f"What color is the flag of {place}?", color),
        (f"{place} was founded in {year}.", f"When was {place} founded?", year),
        (
            f"The national animal of {place} is the {animal}.",
            f"What is the national animal of {place}?",
            animal,
        ),
    ]


def synthetic_squad(num_examples: int, seed: int = 0) -> list[SquadExample]:
    """Generate `num_examples` extractive QA examples; every answer is a span of its context.

    Args:
        num_examples: how many questions to produce.
        seed: the random seed; equal seeds give equal lists.
    """
    if num_examples < 0:
        raise ValueError("synthetic_squad: num_examples must be >= 0")
    rng = random.Random(seed)
    examples: list[SquadExample] = []
    while len(examples) < num_examples:
        place = rng.choice(_PLACES)
        facts = _facts(rng, place)
        rng.shuffle(facts)
        context = " ".join(sentence for sentence, _, _ in facts)
        sentence, question, answer = facts[rng.randrange(len(facts))]
        start = context.index(sentence) + sentence.index(answer)
        examples.append(
            SquadExample(f"syn-{seed}-{len(examples)}", context, question, (answer,), (start,), place)
        )
    return examples
