"""The three words a comparison may end in, and the rule that picks one from an interval.

Dependency-free, so the runtime install's ``kdpipe compare`` reads verdicts without scipy;
``evaluation.significance`` computes the intervals.
"""

from __future__ import annotations

BETTER, WORSE, TIE = "better", "worse", "no detectable difference"


def verdict(low: float, high: float) -> str:
    """A's standing against B from the interval of metric(A) - metric(B)."""
    if low > 0:
        return BETTER
    if high < 0:
        return WORSE
    return TIE
