"""How much slower one way of running is than another, from interleaved pairs of runs.

Why pairs: on a shared machine a run's time moves by 10% and more with whatever else runs, far
more than a checkpoint overhead of a few percent. Two runs taken back to back see mostly the same
machine, so their ratio cancels most of that; interleaving (the order alternates from pair to
pair) cancels a drift within a pair.

Why this estimate: the per-pair log ratio is ``d = δ + (e1 - e2)``, the true shift plus the
difference of two noises. The two runs of a pair are exchangeable but for δ, so ``e1 - e2`` is
symmetric about zero whatever the noise looks like (bursts from other processes included). That
is the one assumption of the Hodges-Lehmann estimate (the median of all pairwise means of the
``d``) and of its interval from the exact distribution of Wilcoxon's signed-rank statistic: the
interval covers δ with the stated confidence, with no assumption of normal noise, and a few
pairs hit by a burst move it little. It is narrower than the median's own interval for the same
pairs (its efficiency is ~95% of the mean's under normal noise, the median's 64%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Overhead:
    """How much of the slower runs' time the difference is, with a confidence interval."""

    estimate: float
    """``1 - fast/slow`` at the estimated shift: 0.02 means the slow runs spend 2% more."""
    low: float | None
    """The interval's ends; None when there are too few pairs for one at this confidence."""
    high: float | None
    confidence: float
    pairs: int


def signed_rank_counts(n: int) -> list[int]:
    """For Wilcoxon's signed-rank statistic on ``n`` pairs: how many of the 2**n sign patterns
    give each rank sum 0 .. n(n+1)/2."""
    counts = [1] + [0] * (n * (n + 1) // 2)
    for rank in range(1, n + 1):
        for total in range(rank * (rank + 1) // 2, rank - 1, -1):
            counts[total] += counts[total - rank]
    return counts


def _interval_rank(n: int, confidence: float) -> int:
    """The largest ``c`` with P(rank sum < c) <= (1 - confidence) / 2; 0 when no c qualifies."""
    tail = (1 - confidence) / 2 * 2**n
    below, rank = 0, 0
    for count in signed_rank_counts(n):
        if below + count > tail:
            break
        below += count
        rank += 1
    return rank


def paired_overhead(slow: Sequence[float], fast: Sequence[float], *, confidence: float = 0.95) -> Overhead:
    """The overhead of ``slow`` over ``fast`` from runs taken in pairs (``slow[i]`` beside ``fast[i]``).

    See the module docstring for the method.
    """
    if len(slow) != len(fast) or not slow:
        raise ValueError("need as many slow runs as fast runs, at least one")
    logs = [math.log(a / b) for a, b in zip(slow, fast, strict=True)]
    walsh = sorted((logs[i] + logs[j]) / 2 for i in range(len(logs)) for j in range(i, len(logs)))
    middle = len(walsh) // 2
    shift = walsh[middle] if len(walsh) % 2 else (walsh[middle - 1] + walsh[middle]) / 2
    rank = _interval_rank(len(logs), confidence)
    low = high = None
    if rank:
        low, high = _fraction(walsh[rank - 1]), _fraction(walsh[-rank])
    return Overhead(_fraction(shift), low, high, confidence, len(logs))


def _fraction(log_ratio: float) -> float:
    """``1 - fast/slow`` for ``log(slow/fast)``: the share of the slow run's time."""
    return 1 - math.exp(-log_ratio)
