"""``mlrollout demo``: three sandbox rollouts from the example plans, explained: a candidate
that is worse from the start, a healthy one, and one that regresses mid-rollout (a sandbox
event) and is caught when it does."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from mlrollout.cli.common import Output, Settings
from mlrollout.engine.events import EventKind
from mlrollout.state.open import open_store
from mlrollout.units import format_duration

DEMO_PLANS = ("local-canary-bad.yaml", "local-late-regression.yaml", "local-canary-good.yaml")
#: What each demo rollout ends with: rolled back, rolled back, promoted.
EXPECTED_EXIT_CODES = [1, 1, 0]


def plans_dir() -> Path:
    """The example plans: ``plans/`` of a source checkout, or the copies shipped in the package."""
    here = Path(__file__).resolve()
    for candidate in (
        Path.cwd() / "plans",
        here.parents[2] / "plans",
        here.parents[1] / "examples",
    ):
        if all((candidate / name).is_file() for name in DEMO_PLANS):
            return candidate
    raise FileNotFoundError("the example plans are missing from this installation")


def demo_state(state: str) -> Path:
    """Where the demo keeps its rollouts: beside the user's state, never inside it.

    ``.mlrollout`` → ``.mlrollout/demo``; ``x/state.db`` → ``x/state-demo.db``; a backend URL →
    ``.mlrollout/demo`` (the demo only runs on the local sandbox)."""
    if "://" in state:
        return Path(".mlrollout") / "demo"
    path = Path(state).expanduser()
    if path.suffix in (".db", ".sqlite"):
        return path.with_name(f"{path.stem}-demo{path.suffix}")
    return path / "demo"


def run_demo(settings: Settings, output: Output) -> int:
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan
    from mlrollout.report.console import JsonReporter, PlainReporter
    from mlrollout.sandbox.world import summary as world_summary

    state_dir = demo_state(settings.state)
    if state_dir.exists():  # the demo's own sandbox endpoints start fresh each time
        if state_dir.is_dir():
            shutil.rmtree(state_dir)
        else:
            state_dir.unlink()
    store = open_store(str(state_dir))
    folder = plans_dir()
    say = (
        (lambda text: None)
        if output == Output.json
        else (lambda text: sys.stdout.write(text + "\n"))
    )
    results = []
    simulated = 0.0
    started = time.perf_counter()
    for name in DEMO_PLANS:
        path = folder / name
        shown = path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path
        loaded = load_plan(str(shown))
        plan = loaded.plan
        assert plan.sandbox is not None
        behaviours = ", ".join(
            f"{v} errors {b.error_rate:.1%} p99 {b.latency_p99 * 1000:.0f}ms"
            for v, b in plan.sandbox.variants.items()
        )
        say(
            f"\n== {shown}: {plan.strategy.type} of {plan.candidate.name} on the sandbox "
            f"endpoint {plan.target.endpoint} ({behaviours})"
        )
        for change in world_summary(plan.sandbox)["changes"]:
            say(f"   then at {change['at']} of the rollout: {change['text']}")
        record = Runner(store).create(loaded)
        from mlrollout.plan.timeline import expand_steps

        listener = (
            JsonReporter(sys.stdout)
            if output == Output.json
            else PlainReporter(sys.stdout, record.id, expand_steps(plan))
        )
        outcome = Runner(store, listeners=[listener]).drive(record.id)
        events = store.events(record.id)
        simulated += events[-1].at - events[0].at
        results.append(
            {
                "plan": str(shown),
                "rollout": record.id,
                "phase": outcome.phase.value,
                "exit_code": outcome.exit_code,
                "reason": outcome.state.reason,
            }
        )
        verdict = "promoted" if outcome.exit_code == 0 else "rolled back"
        say(
            f"-> {verdict} (exit code {outcome.exit_code})"
            + (f": {outcome.state.reason}" if outcome.state.reason else "")
        )
        facts = [e for e in events if e.kind == EventKind.FACT]
        failed = next((e for e in events if e.kind == EventKind.ANALYSIS_FAILED), None)
        if facts and failed is not None:
            changed = float(facts[0].data["at"])
            say(
                f"   the world changed at +{format_duration(changed - events[0].at)} "
                f"({facts[0].data.get('text')}); the gates caught it "
                f"{format_duration(failed.at - changed)} later, at "
                f"+{format_duration(failed.at - events[0].at)}"
            )
    elapsed = time.perf_counter() - started
    if output == Output.json:
        import json

        sys.stdout.write(json.dumps({"demo": results, "seconds": round(elapsed, 3)}) + "\n")
    else:
        state = f"--state {state_dir}"
        bad, late, good = (r["rollout"] for r in results)
        say(
            f"\n{len(results)} rollouts, {format_duration(simulated)} of simulated traffic, in "
            f"{elapsed:.1f}s of real time.\n\nWhat to try next:\n"
            f"  mlrollout plan preview {results[1]['plan']}   # the timeline, gates, the world\n"
            f"  mlrollout {state} status {bad}       # why it was rolled back\n"
            f"  mlrollout {state} report {good}      # the Markdown report\n"
            f"  mlrollout {state} report {late}      # when the regression began, when caught\n"
            f"  mlrollout run {results[2]['plan']}   # run it yourself, with a live view\n"
            f"  edit the sandbox error rates in a plan and run it again"
        )
    return 0 if [r["exit_code"] for r in results] == EXPECTED_EXIT_CODES else 1
