import pytest

from slimkit.data import load_corpus
from slimkit.data.unlabelled_text import load_unlabelled_text
from slimkit.errors import ConfigError


def test_distill_en_is_large_distinct_and_never_repeats_the_evaluation_corpus():
    lines = load_unlabelled_text("distill_en")
    assert len(lines) >= 1900
    assert len({s.lower() for s in lines}) == len(lines)
    evaluation = {s.lower() for s in load_corpus()}
    assert not [s for s in lines if s.lower() in evaluation]
    assert all(not s.startswith("#") and 3 <= len(s.split()) <= 40 for s in lines)


def test_shuffle_is_seeded_and_limit_caps():
    a = load_unlabelled_text(limit=50, seed=1)
    assert a == load_unlabelled_text(limit=50, seed=1) and len(a) == 50
    assert a != load_unlabelled_text(limit=50, seed=2)


def test_unknown_source_names_the_choices():
    with pytest.raises(ConfigError, match=r"one of \['distill_en'\].*'wiki'"):
        load_unlabelled_text("wiki")
