"""Rollout phases and the transitions allowed between them."""

from __future__ import annotations

from enum import StrEnum


class Phase(StrEnum):
    PENDING = "pending"  # recorded, nothing changed yet
    PREPARING = "preparing"  # creating the candidate at 0 % traffic
    PROGRESSING = "progressing"  # executing the steps
    WAITING = "waiting"  # an approve gate, or paused by policy: needs `promote` or `abort`
    PROMOTING = "promoting"  # candidate to 100 %, then retire the baseline
    ROLLING_BACK = "rolling_back"  # baseline to 100 % first, then remove the candidate
    SUCCEEDED = "succeeded"
    ROLLED_BACK = "rolled_back"
    ABORTED = "aborted"  # stopped before anything changed

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Phase.SUCCEEDED, Phase.ROLLED_BACK, Phase.ABORTED})

TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    # PENDING -> SUCCEEDED: the candidate already served 100 % (a re-run of a finished plan).
    Phase.PENDING: frozenset({Phase.PREPARING, Phase.ABORTED, Phase.SUCCEEDED}),
    # PREPARING -> ABORTED: the candidate's creation was refused (nothing changed).
    Phase.PREPARING: frozenset({Phase.PROGRESSING, Phase.ROLLING_BACK, Phase.ABORTED}),
    Phase.PROGRESSING: frozenset(
        {Phase.PROGRESSING, Phase.WAITING, Phase.PROMOTING, Phase.ROLLING_BACK}
    ),
    Phase.WAITING: frozenset({Phase.PROGRESSING, Phase.PROMOTING, Phase.ROLLING_BACK}),
    # PROMOTING -> WAITING: a fleet's target holds before its baseline is retired.
    Phase.PROMOTING: frozenset({Phase.SUCCEEDED, Phase.ROLLING_BACK, Phase.WAITING}),
    Phase.ROLLING_BACK: frozenset({Phase.ROLLED_BACK}),
    Phase.SUCCEEDED: frozenset(),
    Phase.ROLLED_BACK: frozenset(),
    Phase.ABORTED: frozenset(),
}


def can_move(source: Phase, target: Phase) -> bool:
    return target in TRANSITIONS[source]
