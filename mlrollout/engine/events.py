"""One vocabulary for what the journal records: every event kind the engine, the runner and the
commands write, as one enum that reporters, webhooks, the CLI and the state stores import.

The values are the strings stored in journals (they never change: old journals stay readable).
A mutation is journalled twice, ``<action>.requested`` then ``<action>.applied``.
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    STARTED = "started"
    PREPARE_REQUESTED = "prepare.requested"
    PREPARE_APPLIED = "prepare.applied"
    SET_TRAFFIC_REQUESTED = "set_traffic.requested"
    SET_TRAFFIC_APPLIED = "set_traffic.applied"
    FINALIZE_REQUESTED = "finalize.requested"
    FINALIZE_APPLIED = "finalize.applied"
    SET_SHADOW_REQUESTED = "set_shadow.requested"
    SET_SHADOW_APPLIED = "set_shadow.applied"
    #: The platform's own deployment (``strategy.native``): started, forced back, cleaned up.
    START_NATIVE_REQUESTED = "start_native.requested"
    START_NATIVE_APPLIED = "start_native.applied"
    ROLL_BACK_NATIVE_REQUESTED = "roll_back_native.requested"
    ROLL_BACK_NATIVE_APPLIED = "roll_back_native.applied"
    END_NATIVE_REQUESTED = "end_native.requested"
    END_NATIVE_APPLIED = "end_native.applied"
    #: ``flags``: the flag definition written with a split (the live split is left to the flag).
    SET_FLAG_REQUESTED = "set_flag.requested"
    SET_FLAG_APPLIED = "set_flag.applied"
    #: What the platform's deployment did since the last one (its status, green's share).
    NATIVE = "native"
    LOOK = "look"
    ANALYSIS_PASSED = "analysis.passed"
    ANALYSIS_ENDED = "analysis.ended"  # a fixed bake ended undecided, no gate failed
    ANALYSIS_FAILED = "analysis.failed"
    ANALYSIS_INCONCLUSIVE = "analysis.inconclusive"
    STEP_COMPLETED = "step.completed"
    STEPS_COMPLETED = "steps.completed"
    WAITING = "waiting"
    PAUSED = "paused"
    APPROVED = "approved"
    APPROVAL_TIMED_OUT = "approval.timed_out"
    PROMOTE_FORCED = "promote.forced"
    COMMAND_PROMOTE = "command.promote"
    COMMAND_ABORT = "command.abort"
    ABORT_REFUSED = "abort.refused"
    ROLLBACK_STARTED = "rollback.started"
    ROLLED_BACK = "rolled_back"
    PROMOTED = "promoted"
    #: The rollout passed and ended with the candidate removed (a shadow evaluation).
    EVALUATED = "evaluated"
    ABORTED = "aborted"
    ADOPTED = "adopted"
    ADOPTED_APPLIED = "adopted.applied"
    #: Something that changed in the endpoint's world, as its provider reports it (the sandbox's
    #: events): ``data`` has ``at`` (the instant it happened), ``source`` and ``text``.
    FACT = "fact"

    @classmethod
    def requested(cls, action: str) -> EventKind:
        return cls(f"{action}.requested")

    @classmethod
    def applied(cls, action: str) -> EventKind:
        return cls(f"{action}.applied")


#: A look at the metrics: the gates' verdict is in ``data["verdict"]``.
LOOK_KINDS = frozenset(
    {
        EventKind.LOOK,
        EventKind.ANALYSIS_PASSED,
        EventKind.ANALYSIS_ENDED,
        EventKind.ANALYSIS_FAILED,
        EventKind.ANALYSIS_INCONCLUSIVE,
    }
)
#: Written by commands from other processes (``mlrollout promote|abort``).
COMMANDS = frozenset({EventKind.COMMAND_PROMOTE, EventKind.COMMAND_ABORT})
#: Worth a message to a person (webhooks): the changes and the decisions, not every look.
NOTIFY_KINDS = frozenset(
    {
        EventKind.STARTED,
        EventKind.SET_TRAFFIC_APPLIED,
        EventKind.SET_SHADOW_APPLIED,
        EventKind.SET_FLAG_APPLIED,
        EventKind.START_NATIVE_APPLIED,
        EventKind.NATIVE,
        EventKind.ANALYSIS_FAILED,
        EventKind.ANALYSIS_INCONCLUSIVE,
        EventKind.WAITING,
        EventKind.PAUSED,
        EventKind.APPROVED,
        EventKind.PROMOTE_FORCED,
        EventKind.ROLLBACK_STARTED,
        EventKind.ROLLED_BACK,
        EventKind.PROMOTED,
        EventKind.EVALUATED,
        EventKind.ABORTED,
        EventKind.ADOPTED,
    }
)


#: The names a plan's ``notify[].on`` filter uses, and the events each one stands for.
NOTIFY_FILTERS: dict[str, frozenset[EventKind]] = {
    "started": frozenset({EventKind.STARTED}),
    "traffic": frozenset(
        {
            EventKind.SET_TRAFFIC_APPLIED,
            EventKind.SET_SHADOW_APPLIED,
            EventKind.SET_FLAG_APPLIED,
            EventKind.START_NATIVE_APPLIED,
            EventKind.NATIVE,
        }
    ),
    "failed": frozenset({EventKind.ANALYSIS_FAILED}),
    "inconclusive": frozenset({EventKind.ANALYSIS_INCONCLUSIVE}),
    "waiting": frozenset({EventKind.WAITING, EventKind.PAUSED}),
    "approved": frozenset({EventKind.APPROVED, EventKind.PROMOTE_FORCED}),
    "rollback": frozenset({EventKind.ROLLBACK_STARTED, EventKind.ROLLED_BACK}),
    "promoted": frozenset({EventKind.PROMOTED, EventKind.EVALUATED}),
    "aborted": frozenset({EventKind.ABORTED}),
    "adopted": frozenset({EventKind.ADOPTED}),
}
