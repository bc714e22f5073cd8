"""The A/B report: a synthetic journal of an ``ab_test`` (looks judged by the real gate set with
its winner test) rendered as HTML (a section with the lift's interval as an SVG chart) and as
Markdown (a text table of the interval over the looks)."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from mlrollout.analysis.gateset import GateSet
from mlrollout.contracts import CustomValue, Window
from mlrollout.engine.events import EventKind
from mlrollout.plan.model import Analysis
from mlrollout.report import svg
from mlrollout.report.ab import ab_summary
from mlrollout.report.html import STRATEGY_SECTIONS, html_report
from mlrollout.report.markdown import markdown_report
from mlrollout.state.base import Event, RolloutRecord

ANALYSIS = Analysis.model_validate(
    {
        "alpha": 0.05,
        "min_requests": 200,
        "gates": [
            {"name": "conversion", "metric": "custom", "direction": "decrease",
             "query": {"m": "c"}},
            {"name": "errors", "metric": "error_rate", "vs_baseline": {"max_increase": "25%"}},
        ],
    }
)  # fmt: skip
T0 = 1_000_000.0


def journal(
    lift: float, looks: int = 300, seed: int = 4, *, hostile: bool = False
) -> tuple[RolloutRecord, list[Event]]:
    """A rollout's journal: started, the split set, then a look a minute until the winner gate
    decides (or ``looks`` pass), judged by ``GateSet`` with the winner test."""
    rng = random.Random(seed)
    gates = GateSet.from_plan(ANALYSIS, winner=("conversion", 0.01))
    cand, base = ("v<7>" if hostile else "v7"), "v6"
    events = [
        Event("r1", 1, T0, EventKind.STARTED, {"weights": {base: 100.0}, "baseline": base}),
        Event("r1", 2, T0 + 5, EventKind.SET_TRAFFIC_APPLIED, {"weights": {base: 50, cand: 50}}),
    ]
    xc = xb = n = 0
    intervals: list[tuple[Window, Window]] = []
    verdict = None
    for k in range(1, looks + 1):
        per = 6000
        dc = sum(rng.random() < 0.01 * (1 + lift) for _ in range(per))
        db = sum(rng.random() < 0.01 for _ in range(per))
        xc, xb, n = xc + dc, xb + db, n + per
        ic = Window(requests=per, errors=per // 100, custom={"conversion": CustomValue(dc, per)})
        ib = Window(requests=per, errors=per // 100, custom={"conversion": CustomValue(db, per)})
        intervals.append((ic, ib))
        c = Window(requests=n, errors=n // 100, custom={"conversion": CustomValue(xc, n)})
        b = Window(requests=n, errors=n // 100, custom={"conversion": CustomValue(xb, n)})
        verdict = gates.look(c, b, candidate_share=0.5, look=k, intervals=intervals)
        winner = verdict.gates[0].outcome.value
        kind = {"pass": EventKind.ANALYSIS_PASSED, "fail": EventKind.ANALYSIS_FAILED}.get(
            winner, EventKind.LOOK
        )
        events.append(
            Event("r1", len(events) + 1, T0 + 65 + 60 * k, kind,
                  {"step": 1, "verdict": verdict.to_dict()})
        )  # fmt: skip
        if kind != EventKind.LOOK:
            break
    assert verdict is not None
    won = verdict.gates[0].outcome.value == "pass"
    snapshot = {
        "phase": "succeeded" if won else "rolled_back",
        "baseline": base,
        "candidate": cand,
        "looks": len(events) - 2,
        "last_verdict": verdict.to_dict(),
        "reason": verdict.gates[0].reason,
    }
    name = "<script>alert(1)</script>" if hostile else "ab"
    phase = str(snapshot["phase"])
    record = RolloutRecord("r1", name, "local/ep", {"yaml": ""}, "plan.yaml", T0, phase, snapshot)
    return record, events


@pytest.fixture(scope="module")
def won() -> tuple[RolloutRecord, list[Event]]:
    return journal(0.10)


def test_summary_reads_the_winner_gate_from_the_looks(
    won: tuple[RolloutRecord, list[Event]],
) -> None:
    _, events = won
    summary = ab_summary(events)
    assert summary is not None
    assert summary.gate == "conversion" and summary.min_effect == 0.01 and summary.alpha == 0.025
    assert summary.decided is not None and summary.decided.outcome == "pass"
    assert summary.decision == "the candidate wins"
    assert summary.decided.at == pytest.approx(60 + 60 * len(summary.looks))  # from the split
    assert [g[0] for g in summary.guardrails] == ["errors"]
    assert summary.srm is not None and summary.srm[0] == "pass"
    low, high = summary.final.low, summary.final.high
    assert low is not None and high is not None and 0 < low < high
    rows = summary.table()
    assert len(rows) <= 13 and rows[-1][4] == "pass"


def test_html_section_and_chart(won: tuple[RolloutRecord, list[Event]]) -> None:
    record, events = won
    assert "ab_test" in STRATEGY_SECTIONS
    page = html_report(record, events, [], strategy="ab_test")
    assert "<h2>The A/B test</h2>" in page
    assert "the candidate wins after" in page
    assert "Guardrails" in page and "Sample-ratio check" in page
    charts = [
        ET.fromstring(f) for f in re.findall(r"<svg\b.*?</svg>", page, flags=re.S)
    ]  # every chart is well-formed XML
    lift = [
        c
        for c in charts
        if "relative lift" in (c.findtext("{*}title") or c.findtext("title") or "")
    ]
    assert len(lift) == 1
    chart = ET.tostring(lift[0], encoding="unicode")
    assert "<polygon" in chart  # the interval's band
    assert "no difference" in chart and "min_effect" in chart and "decided" in chart
    parser = HTMLParser()
    parser.feed(page)
    parser.close()


def test_markdown_section_with_the_interval_table(won: tuple[RolloutRecord, list[Event]]) -> None:
    record, events = won
    text = markdown_report(record, events, [])
    assert "## The A/B test" in text
    headline = (
        r"conversion \+\d+\.\d % \[\+\d\.\d+ %, \+\d+\.\d %\] \(always-valid 97\.5 % "
        r"interval\), p [=<] [\d.]+: the candidate wins after"
    )
    assert re.search(headline, text), text
    assert "| Since the split | Lift | Interval | p | Outcome |" in text
    assert "| v7 | candidate |" in text and "| v6 | baseline |" in text
    table = text.split("The lift's always-valid interval over the looks:")[1]
    assert table.count("\n| +") >= 5


def test_no_worthwhile_lift_and_hostile_names_are_escaped() -> None:
    record, events = journal(-0.15, looks=400, seed=9, hostile=True)
    summary = ab_summary(events)
    assert summary is not None and summary.decided is not None
    assert summary.decided.outcome == "fail"
    assert "no worthwhile lift" in summary.decision
    page = html_report(record, events, [], strategy="ab_test")
    assert "<script>" not in page and "v&lt;7&gt;" in page
    assert "no lift of at least 1 %" in markdown_report(record, events, [])


def test_other_strategies_have_no_ab_section() -> None:
    events = [Event("r1", 1, T0, EventKind.STARTED, {"weights": {"v6": 100.0}})]
    assert ab_summary(events) is None
    record = RolloutRecord("r1", "c", "local/ep", {"yaml": ""}, "p.yaml", T0, "pending", {})
    assert "The A/B test" not in markdown_report(record, events, [])


def test_band_breaks_at_missing_bounds() -> None:
    chart = svg.render(
        svg.Chart(
            "band",
            [],
            (0.0, 10.0),
            (0.0, 1.0),
            str,
            str,
            bands=[
                svg.Band(
                    "b",
                    [(0, 0.1, 0.2), (1, 0.1, 0.3), (2, None, 0.3), (3, 0.2, 0.4), (4, 0.2, 0.5)],
                    "#000",
                )
            ],
            hlines=[(0.5, "half", "#111")],
        )
    )
    assert chart.count("<polygon") == 2
    ET.fromstring(chart)
