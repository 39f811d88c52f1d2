"""Seeds of the random draws a run makes besides training's own.

Training shuffles with ``seed`` itself.  Each other draw — the batches Taylor scores are summed
over, the images sensitivity curves are measured on, the weights ``prune.rewind: reinit`` draws
afresh — gets a seed derived from ``seed``, its purpose and its pruning round, so that adding one
draw leaves every other draw (and the training order) as it was, and a resumed run draws exactly
what an uninterrupted one did.
"""

from __future__ import annotations

PURPOSES = {"taylor": 1, "sensitivity": 2, "reinit": 3}


def draw_seed(seed: int, purpose: str, round_index: int) -> int:
    """The seed of the ``purpose`` draw (one of :data:`PURPOSES`) at pruning round ``round_index``
    (0: before the first round) of a run with ``seed``.  No two (purpose, round) pairs of one run
    share a seed; the numbers may coincide with seeds drawn for other purposes elsewhere (random
    pruning's generator, another run's draws), which seed unrelated streams."""
    if purpose not in PURPOSES:
        raise ValueError(f"unknown draw {purpose!r}; expected one of: {', '.join(PURPOSES)}")
    return (seed * 1_000_003 + round_index) * 8 + PURPOSES[purpose]
