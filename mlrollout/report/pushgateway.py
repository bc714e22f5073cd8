"""The plan's ``notify: [{pushgateway: URL}]``: the rollout's own state as Prometheus metrics.

After every look and every change the rollout's state (its phase, the variants' weights, each
gate's last outcome and numbers, the looks so far) is rendered in the Prometheus text exposition
format and ``PUT`` to ``{URL}/metrics/job/mlrollout/rollout/{id}``: one group per rollout, which
each push replaces whole, so only the newest state matters and older pushes still waiting are
dropped (counted as superseded, not as lost). Delivery is the webhooks' own
(:class:`~mlrollout.report.webhook.QueuedNotifier`): off the critical path, each push within a
total deadline, a failing gateway reported once on stderr, and the rollout goes on.

When the rollout ends its group is left in place with its final state and
``mlrollout_rollout_ended 1``, as dashboards want it; delete it when it is no longer wanted
(``DELETE {URL}/metrics/job/mlrollout/rollout/{id}``, or the gateway's own retention).

Every series has the label ``rollout`` (the group's key); the gateway adds ``job="mlrollout"``
(scrape it with ``honor_labels: true``). A token from the entry's ``token_env`` is sent as a
bearer token; the webhooks' shared ``MLROLLOUT_WEBHOOK_TOKEN`` is not sent to a gateway.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Unpack
from urllib.parse import quote

from mlrollout.engine.events import LOOK_KINDS, NOTIFY_KINDS, EventKind
from mlrollout.engine.phases import Phase
from mlrollout.report.webhook import DeliveryOptions, HookSpec, Post, QueuedNotifier, post_json

if TYPE_CHECKING:
    from mlrollout.engine.engine import RolloutState
    from mlrollout.state.base import Event

JOB = "mlrollout"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The events after which the state is pushed: every look, every change and decision (the
#: ``.requested`` halves, facts and commands change nothing the metrics show).
PUSH_KINDS = (
    LOOK_KINDS
    | NOTIFY_KINDS
    | {
        EventKind.PREPARE_APPLIED,
        EventKind.FINALIZE_APPLIED,
        EventKind.STEP_COMPLETED,
        EventKind.STEPS_COMPLETED,
        EventKind.APPROVAL_TIMED_OUT,
        EventKind.ADOPTED_APPLIED,
    }
)

#: The outcomes a gate's series are written for (1 for the last look's, 0 for the others).
OUTCOMES = ("pass", "continue", "hold", "fail")

#: Every metric the pusher writes: name -> (type, help). The dashboard reads only these.
METRICS: dict[str, tuple[str, str]] = {
    "mlrollout_rollout_phase": (
        "gauge",
        "The rollout's phase: 1 for the current one, 0 for the others.",
    ),
    "mlrollout_rollout_step": ("gauge", "The index of the plan step the rollout is at."),
    "mlrollout_rollout_ended": ("gauge", "1 once the rollout has ended (its final state), else 0."),
    "mlrollout_looks_total": ("counter", "Looks at the metrics so far."),
    "mlrollout_last_event_timestamp_seconds": (
        "gauge",
        "When the last event was recorded, in seconds since the Unix epoch.",
    ),
    "mlrollout_variant_weight_ratio": ("gauge", "Each variant's share of the traffic (0 to 1)."),
    "mlrollout_gate_outcome": (
        "gauge",
        "Each gate's outcome at the last look: 1 for it, 0 for the others.",
    ),
    "mlrollout_gate_estimate": (
        "gauge",
        "Each gate's metric at the last look, on the candidate and on the baseline side, in the "
        "metric's unit (a rate from 0 to 1, seconds, a count).",
    ),
    "mlrollout_gate_threshold": (
        "gauge",
        "The limit each gate holds the candidate's value to, in the metric's unit.",
    ),
    "mlrollout_gate_evidence": (
        "gauge",
        "Each gate's test statistic at the last look (a sequential test's evidence of a "
        "regression, or a z statistic).",
    ),
    "mlrollout_gate_boundary": (
        "gauge",
        "The value the evidence must reach for the gate to fail (the sequential boundary, or "
        "the critical z).",
    ),
    "mlrollout_gate_requests": ("gauge", "The requests each gate's last look counted, per side."),
}

_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._~-]+")


def group_url(base: str, rollout_id: str) -> str:
    """The rollout's group at the gateway ``base``: ``/metrics/job/mlrollout/rollout/{id}``.

    An id the path cannot carry as it is (a ``/``, a space...) goes base64url-encoded, the
    gateway's own way (``rollout@base64/...``), so that it arrives unchanged."""
    head = f"{base.rstrip('/')}/metrics/job/{JOB}/rollout"
    if _SAFE_SEGMENT.fullmatch(rollout_id):
        return f"{head}/{quote(rollout_id, safe='')}"
    encoded = base64.urlsafe_b64encode(rollout_id.encode()).decode() or "="
    return f"{head}@base64/{encoded}"


def escape_label(value: str) -> str:
    r"""A label value as the exposition format writes it: ``\``, ``"`` and newlines escaped."""
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _gate_numbers(gate: Mapping[str, Any]) -> Iterable[tuple[str, dict[str, str], float]]:
    """``(metric, extra labels, value)`` of one gate's verdict: only the numbers it has."""
    numbers: Mapping[str, Any] = gate.get("numbers") or {}

    def get(key: str) -> float | None:
        value = numbers.get(key)
        return float(value) if isinstance(value, int | float) else None

    for side in ("candidate", "baseline"):
        if (value := get(side)) is not None:
            yield "mlrollout_gate_estimate", {"side": side}, value
        if (value := get(f"{side}_requests")) is not None:
            yield "mlrollout_gate_requests", {"side": side}, value
    if (value := get("threshold")) is not None:
        yield "mlrollout_gate_threshold", {}, value
    if (value := get("statistic")) is not None:
        yield "mlrollout_gate_evidence", {}, value
    boundary = get("boundary")
    if boundary is None:
        boundary = get("critical")
    if boundary is not None:
        yield "mlrollout_gate_boundary", {}, boundary


def render_metrics(
    rollout_id: str, name: str, endpoint: str, event: Event, state: RolloutState
) -> bytes:
    """The rollout's state after ``event`` in the Prometheus text exposition format."""
    series: dict[str, list[tuple[dict[str, str], float]]] = {metric: [] for metric in METRICS}
    rollout = {"rollout": rollout_id}
    for phase in Phase:
        labels = {**rollout, "name": name, "endpoint": endpoint, "phase": phase.value}
        series["mlrollout_rollout_phase"].append((labels, float(phase.value == state.phase)))
    ended = state.phase in {p.value for p in Phase if p.terminal}
    series["mlrollout_rollout_step"].append((rollout, float(state.step)))
    series["mlrollout_rollout_ended"].append((rollout, float(ended)))
    series["mlrollout_looks_total"].append((rollout, float(state.looks)))
    stamp = event.recorded_at or event.at
    series["mlrollout_last_event_timestamp_seconds"].append((rollout, float(stamp)))
    # the candidate and the baseline stay in it at 0 once removed (rolled back, or retired)
    weights = {v: 0.0 for v in (state.baseline, state.candidate) if v} | dict(state.weights)
    for variant, weight in sorted(weights.items()):
        labels = {**rollout, "variant": variant}
        series["mlrollout_variant_weight_ratio"].append((labels, float(weight) / 100))
    gates: Sequence[Mapping[str, Any]] = (state.last_verdict or {}).get("gates") or []
    for gate in gates:
        gate_labels = {**rollout, "gate": str(gate.get("gate", ""))}
        for outcome in OUTCOMES:
            labels = {**gate_labels, "outcome": outcome}
            series["mlrollout_gate_outcome"].append((labels, float(gate.get("outcome") == outcome)))
        for metric, extra, value in _gate_numbers(gate):
            series[metric].append(({**gate_labels, **extra}, value))
    lines: list[str] = []
    for metric, (kind, text) in METRICS.items():
        if not series[metric]:
            continue
        lines.append(f"# HELP {metric} {_escape_help(text)}")
        lines.append(f"# TYPE {metric} {kind}")
        for labels, value in series[metric]:
            pairs = ",".join(f'{key}="{escape_label(v)}"' for key, v in labels.items())
            lines.append(f"{metric}{{{pairs}}} {_number(value)}")
    return ("\n".join(lines) + "\n").encode()


class PushgatewayNotifier(QueuedNotifier):
    """A listener that PUTs the rollout's state to each gateway's group for the rollout.

    Calling it only renders and queues (it never waits on the network); :meth:`close` ends it.
    Only the newest state waits: a push replaces the group, so one still queued is superseded."""

    what = "pushgateway"
    unit = "push"
    latest_only = True

    def __init__(
        self,
        gateways: Sequence[str | HookSpec],
        rollout_id: str,
        name: str,
        endpoint: str,
        post: Post | None = None,
        **options: Unpack[DeliveryOptions],
    ) -> None:
        specs = [
            g if isinstance(g, HookSpec) else HookSpec(g, kind="pushgateway") for g in gateways
        ]
        groups = [replace(spec, url=group_url(spec.url, rollout_id)) for spec in specs]
        put = post or partial(post_json, method="PUT")
        super().__init__(groups, rollout_id, name, put, queue_size=1, **options)
        self.endpoint = endpoint

    def __call__(self, event: Event, state: RolloutState) -> None:
        if event.kind not in PUSH_KINDS:
            return
        body = render_metrics(self.rollout_id, self.name, self.endpoint, event, state)
        with self._cond:
            for hook in self._hooks:
                headers = {"Content-Type": CONTENT_TYPE, "User-Agent": "mlrollout"}
                if hook.spec.token:
                    headers["Authorization"] = f"Bearer {hook.spec.token}"
                self._offer(hook, body, headers)
            self._cond.notify_all()
