"""A small English corpus for sentence-embedding fidelity (shipped as ``corpus_en.txt``)."""

from __future__ import annotations

from importlib import resources


def load_corpus(limit: int | None = None) -> list[str]:
    """Return the packaged English sentences (one per line, blank lines and '#' comments skipped)."""
    text = resources.files("slimkit.data").joinpath("corpus_en.txt").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines()]
    sentences = [ln for ln in lines if ln and not ln.startswith("#")]
    return sentences[:limit] if limit else sentences
