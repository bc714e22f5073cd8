"""The JUnit XML report (``mlrollout report ID -o junit``), read back by a JUnit XML parser
(``junitparser``, as CI plugins read it): one test case per gate and per executed step."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml, Skipped, TestCase

import mlrollout
from mlrollout.api import Rollouts
from mlrollout.engine.runner import plan_of
from mlrollout.plan.model import AnalyzeWindow
from mlrollout.plan.timeline import ExecStep, expand_steps
from mlrollout.report.junit import junit_report
from mlrollout.state.base import Event, RolloutRecord

PLANS = Path(mlrollout.__file__).resolve().parents[1] / "plans"


@dataclass
class Rollout:
    record: RolloutRecord
    events: list[Event]
    steps: list[ExecStep]
    state: Path

    def junit(self) -> str:
        return junit_report(self.record, self.events, self.steps)


def run(state_dir: Path, plan: str) -> Rollout:
    """A sandbox rollout of ``plan`` in a state directory of its own (the sandbox endpoint
    lives there too: a promotion changes what the next rollout starts from)."""
    with Rollouts(str(state_dir)) as rollouts:
        outcome = rollouts.run(PLANS / plan, on_wait="detach")
        record = rollouts.store.get_rollout(outcome.rollout_id)
        return Rollout(record, rollouts.events(record.id), expand_steps(plan_of(record)), state_dir)


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Rollout:
    rollout = run(tmp_path_factory.mktemp("bad"), "local-canary-bad.yaml")
    assert rollout.record.phase == "rolled_back"
    return rollout


def parsed(text: str, tmp_path: Path) -> list[TestCase]:
    """The test cases of the one suite, as junitparser reads the file."""
    ET.fromstring(text)  # well-formed for the standard library too
    path = tmp_path / "junit.xml"
    path.write_text(text, encoding="utf-8")
    xml = JUnitXml.fromfile(str(path))
    suites = list(xml)
    assert len(suites) == 1
    suite = suites[0]
    cases = list(suite)
    assert suite.tests == len(cases)
    assert suite.failures == sum(c.is_failure for c in cases)
    return cases


def failing(cases: list[TestCase]) -> dict[str, str]:
    return {
        c.name: r.message for c in cases for r in c.result if isinstance(r, Failure) and r.message
    }


def test_rolled_back_rollout_fails_its_gate_and_its_step(bad: Rollout, tmp_path: Path) -> None:
    cases = parsed(bad.junit(), tmp_path)
    names = [c.name for c in cases]
    assert names == [
        "gate errors",
        "gate p99",
        "gate sample-ratio",
        "step 1: set candidate weight to 10%",
        "step 2: analyze 10m",
    ]
    failures = failing(cases)
    assert set(failures) == {"gate errors", "step 2: analyze 10m"}
    errors_gate = next(
        g for g in bad.record.snapshot["last_verdict"]["gates"] if g["gate"] == "errors"
    )
    assert failures["gate errors"] == errors_gate["reason"]  # the verdict's sentence
    assert failures["step 2: analyze 10m"] == bad.record.snapshot["reason"]
    assert {c.classname for c in cases} == {"churn-v7-canary.gates", "churn-v7-canary.steps"}
    root = ET.fromstring(bad.junit())
    suite = root.find("testsuite")
    assert suite is not None and suite.get("name") == bad.record.name
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["rollout"] == bad.record.id and props["phase"] == "rolled_back"
    analyze = next(c for c in cases if c.name == "step 2: analyze 10m")
    assert analyze.time == 240.0  # the step's looks ran for 4 minutes


def test_late_regression_fails_what_the_verdict_failed(tmp_path: Path) -> None:
    late = run(tmp_path / "state", "local-late-regression.yaml")
    snapshot = late.record.snapshot
    assert late.record.phase == "rolled_back"
    cases = parsed(late.junit(), tmp_path)
    failed_gates = {
        f"gate {g['gate']}"
        for g in snapshot["last_verdict"]["gates"]
        if g["outcome"] == "fail" and not g["dry_run"]
    }
    step = late.steps[snapshot["step"]]
    assert set(failing(cases)) == failed_gates | {f"step {step.index + 1}: {step.describe()}"}
    steps = [c for c in cases if c.classname.endswith(".steps")]
    assert len(steps) == snapshot["step"] + 1  # the steps never reached are not listed


def test_promoted_rollout_has_no_failure(tmp_path: Path) -> None:
    good = run(tmp_path / "state", "local-canary-good.yaml")
    assert good.record.phase == "succeeded"
    cases = parsed(good.junit(), tmp_path)
    assert failing(cases) == {}
    assert all(c.is_passed for c in cases)
    assert len(cases) == len(good.record.snapshot["last_verdict"]["gates"]) + len(good.steps)


def test_waiting_rollout_skips_its_current_step(tmp_path: Path) -> None:
    waiting = run(tmp_path / "state", "local-approval.yaml")  # it stays active on its endpoint
    assert waiting.record.phase == "waiting"
    cases = parsed(waiting.junit(), tmp_path)
    assert failing(cases) == {}
    steps = [c for c in cases if c.classname.endswith(".steps")]
    assert steps[-1].is_skipped and all(c.is_passed for c in steps[:-1])
    assert "not finished" in next(r.message for r in steps[-1].result if isinstance(r, Skipped))


HOSTILE = 'a <b> & "c" ]]> \x00\x1b\x7f é\n|'


def hand_made(*, dry_run: bool) -> tuple[RolloutRecord, list[Event], list[ExecStep]]:
    gate = {
        "gate": "err<ors>",
        "metric": "error_rate",
        "outcome": "fail",
        "reason": HOSTILE,
        "numbers": {"candidate": 0.05, "baseline": 0.01},
        "dry_run": dry_run,
        "error": None,
    }
    verdict = {"outcome": "continue" if dry_run else "fail", "gates": [gate]}
    rid, t0 = "evil-1", 1_795_698_245.0
    events = [
        Event(rid, 1, t0, "started", {"baseline": "v6", "candidate": "v7"}),
        Event(rid, 2, t0 + 60, "look", {"elapsed": 60.0, "step": 1, "verdict": verdict}),
        Event(rid, 3, t0 + 60, "rolled_back", {"reason": HOSTILE}),
    ]
    record = RolloutRecord(
        id=rid,
        name='evil "name" <&>',
        endpoint_key="local:ep",
        plan={"yaml": ""},
        plan_path="x.yaml",
        created_at=t0,
        phase="rolled_back",
        snapshot={
            "phase": "rolled_back",
            "baseline": "v6",
            "candidate": "v7",
            "step": 1,
            "reason": HOSTILE,
            "last_verdict": verdict,
        },
    )
    steps = [
        ExecStep(0, "weight", weight=10),
        ExecStep(1, "analyze", window=AnalyzeWindow(min=60, max=600, adaptive=False)),
        ExecStep(2, "weight", weight=100),
    ]
    return record, events, steps


def test_hostile_text_stays_well_formed(tmp_path: Path) -> None:
    cases = parsed(junit_report(*hand_made(dry_run=False)), tmp_path)
    failures = failing(cases)
    clean = 'a <b> & "c" ]]> \x7f é\n|'  # XML 1.0 cannot hold NUL or ESC: they are dropped
    assert failures == {"gate err<ors>": clean, "step 2: analyze 10m": clean}
    root = ET.fromstring(junit_report(*hand_made(dry_run=False)))
    assert root.find("testsuite").get("name") == 'evil "name" <&>'  # type: ignore[union-attr]


def test_dry_run_gate_that_would_fail_is_skipped(tmp_path: Path) -> None:
    record, events, steps = hand_made(dry_run=True)
    cases = parsed(junit_report(record, events, steps), tmp_path)
    gate = next(c for c in cases if c.name == "gate err<ors>")
    assert gate.is_skipped and not gate.is_failure
    promoted = replace(record, snapshot={**record.snapshot, "phase": "succeeded", "step": 3})
    cases = parsed(junit_report(promoted, events, steps), tmp_path)
    assert failing(cases) == {}
    assert [c.name for c in cases][1:] == [f"step {s.index + 1}: {s.describe()}" for s in steps]


def test_cli_writes_junit(bad: Rollout, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from mlrollout.cli.app import main

    state_dir = bad.state
    target = tmp_path / "out" / "junit.xml"
    target.parent.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--state",
                str(state_dir),
                "report",
                bad.record.id,
                "-o",
                "junit",
                "--file",
                str(target),
            ]
        )
    assert exit_info.value.code in (0, None)
    assert target.read_text(encoding="utf-8") == bad.junit()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["--state", str(state_dir), "report", bad.record.id, "-o", "junit"])
    assert capsys.readouterr().out == bad.junit()
