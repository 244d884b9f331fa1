"""Pareto fronts and 2-D hypervolume for multi-objective results."""

from __future__ import annotations

from collections.abc import Sequence


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the non-dominated points (ties kept)."""
    signs = [1.0 if m else -1.0 for m in maximize]
    pts = [[s * v for s, v in zip(signs, p, strict=True)] for p in points]  # all maximised now
    front = []
    for i, p in enumerate(pts):
        dominated = any(
            all(q[k] >= p[k] for k in range(len(p))) and any(q[k] > p[k] for k in range(len(p)))
            for j, q in enumerate(pts)
            if j != i
        )
        if not dominated:
            front.append(i)
    return front


def hypervolume_2d(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Area dominated by ``points`` (both objectives maximised) above ``reference``."""
    pts = sorted(
        (p for p in points if p[0] > reference[0] and p[1] > reference[1]), key=lambda p: -p[0]
    )
    area, best_y = 0.0, reference[1]
    for x, y in pts:
        if y > best_y:
            area += (x - reference[0]) * (y - best_y)
            best_y = y
    return area
