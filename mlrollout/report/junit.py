"""The JUnit XML report of one rollout, for CI systems that show test results (GitLab, Jenkins,
Azure Pipelines, GitHub test-report actions).

One ``<testsuite name=ROLLOUT-NAME>`` holding one ``<testcase>`` per gate (its final verdict: a
failing gate is a ``<failure>`` whose message is the verdict's sentence; a dry-run gate that
would fail is ``<skipped>``, since it does not decide) and one per executed step (the step the
rollout was rolled back during is a ``<failure>`` with the rollback's reason; steps never reached
are not listed). Built with :mod:`xml.etree.ElementTree`, so it is always well-formed.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from mlrollout.engine.engine import RolloutState
from mlrollout.engine.events import LOOK_KINDS, EventKind
from mlrollout.engine.phases import Phase
from mlrollout.plan.timeline import ExecStep
from mlrollout.report.console import describe_gate, gate_name, gates_of, iso, join, outcome
from mlrollout.state.base import Event, RolloutRecord


def _clean(text: str) -> str:
    """Text without the characters XML 1.0 cannot hold (control characters but tab/LF/CR)."""
    return "".join(c for c in text if c in "\t\n\r" or ord(c) >= 0x20)


def _step_times(events: list[Event]) -> dict[int, float]:
    """Seconds each analysis step ran, from its looks' ``elapsed``."""
    times: dict[int, float] = {}
    for event in events:
        step, elapsed = event.data.get("step"), event.data.get("elapsed")
        if event.kind in LOOK_KINDS and isinstance(step, int) and isinstance(elapsed, int | float):
            times[step] = max(times.get(step, 0.0), float(elapsed))
    return times


def junit_report(record: RolloutRecord, events: list[Event], steps: list[ExecStep]) -> str:
    """The JUnit XML document of one rollout (UTF-8, with an XML declaration)."""
    state = RolloutState.from_dict(record.snapshot)
    phase = state.phase
    first = events[0].at if events else None
    last = events[-1].at if events else None
    suite = ET.Element(
        "testsuite",
        name=_clean(record.name),
        timestamp=iso(first)[:-1] if first is not None else "",
        time=f"{(last - first) if first is not None and last is not None else 0.0:.3f}",
        hostname=_clean(record.endpoint_key),
    )
    props = ET.SubElement(suite, "properties")
    head, detail = outcome(state, steps)
    for key, value in (
        ("rollout", record.id),
        ("endpoint", record.endpoint_key),
        ("phase", phase),
        ("baseline", state.baseline or ""),
        ("candidate", state.candidate or ""),
        ("outcome", join(head, detail)),
    ):
        ET.SubElement(props, "property", name=key, value=_clean(str(value)))
    cases: list[ET.Element] = []

    for gate in gates_of(state.last_verdict):
        name = gate_name(gate)
        case = ET.Element(
            "testcase", name=_clean(f"gate {name}"), classname=_clean(f"{record.name}.gates")
        )
        verdict = str(gate.get("outcome", "?"))
        reason = _clean(str(gate.get("reason") or describe_gate(gate)))
        if verdict == "fail" and gate.get("dry_run"):
            ET.SubElement(case, "skipped", message=_clean(f"dry run (not deciding): {reason}"))
        elif verdict == "fail":
            failure = ET.SubElement(case, "failure", message=reason, type="gate")
            failure.text = _clean(describe_gate(gate))
        out = ET.SubElement(case, "system-out")
        out.text = _clean(f"{describe_gate(gate)}\n{reason}")
        cases.append(case)

    rolled_back = phase in (Phase.ROLLED_BACK, Phase.ROLLING_BACK)
    forced = next((e for e in events if e.kind == EventKind.PROMOTE_FORCED), None)
    times = _step_times(events)
    # A promotion leaves ``step`` past the last one; a forced one leaves it where it was forced.
    reached = len(steps) if phase == Phase.SUCCEEDED and forced is None else state.step + 1
    if phase == Phase.ABORTED:  # stopped before anything changed: no step ran
        reached = 0
    for step in steps[: max(0, min(reached, len(steps)))]:
        label = f"step {step.index + 1}: {step.describe()}"
        case = ET.Element("testcase", name=_clean(label), classname=_clean(f"{record.name}.steps"))
        if step.index in times:
            case.set("time", f"{times[step.index]:.3f}")
        current = step.index == state.step
        if current and rolled_back:
            reason = _clean(state.reason or "rolled back")
            failure = ET.SubElement(case, "failure", message=reason, type="rollback")
            failure.text = _clean(f"rolled back during {label}: {reason}")
        elif current and phase == Phase.SUCCEEDED and forced is not None:
            out = ET.SubElement(case, "system-out")
            out.text = _clean(f"cut short: full promotion forced by {forced.data.get('by', '?')}")
        elif current and not Phase(phase).terminal:
            ET.SubElement(case, "skipped", message=_clean(f"not finished: {join(head, detail)}"))
        cases.append(case)

    suite.extend(cases)
    suite.set("tests", str(len(cases)))
    suite.set("failures", str(sum(c.find("failure") is not None for c in cases)))
    suite.set("errors", "0")
    suite.set("skipped", str(sum(c.find("skipped") is not None for c in cases)))
    root = ET.Element("testsuites", name="mlrollout")
    root.append(suite)
    for key in ("tests", "failures", "errors", "skipped", "time"):
        root.set(key, suite.get(key, "0"))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=False).join(
        ['<?xml version="1.0" encoding="UTF-8"?>\n', "\n"]
    )
