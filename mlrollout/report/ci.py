"""What a rollout shows inside a CI system. On GitHub Actions (``GITHUB_ACTIONS=true``): the
log folds each step into a ``::group::``, a rollback is an ``::error::`` annotation with the
verdict's sentence, and the Markdown report is appended to ``$GITHUB_STEP_SUMMARY`` at the end.
Elsewhere nothing changes: plain timestamped lines, as any log gets."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from typing import TextIO

from mlrollout.engine.engine import RolloutState
from mlrollout.engine.events import EventKind
from mlrollout.engine.phases import Phase
from mlrollout.plan.timeline import ExecStep
from mlrollout.report.console import PlainReporter
from mlrollout.state.base import Event, StateStore


def on_github_actions(environ: Mapping[str, str] | None = None) -> bool:
    return (os.environ if environ is None else environ).get("GITHUB_ACTIONS") == "true"


def _escape(text: str, *, prop: bool = False) -> str:
    """A workflow command's data (``%``, CR and LF escaped; in a property also ``:`` and ``,``)."""
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    if prop:
        text = text.replace(":", "%3A").replace(",", "%2C")
    return text


class GitHubReporter(PlainReporter):
    """Plain lines, each step of the plan folded into a group, and an error annotation when the
    rollout rolls back (the reason is the deciding gate's sentence)."""

    def __init__(self, stream: TextIO, rollout_id: str, steps: list[ExecStep]) -> None:
        super().__init__(stream, rollout_id, steps)
        self.group: str | None = None

    def _open(self, title: str) -> None:
        self._close()
        self.stream.write(f"::group::{_escape(title)}\n")
        self.group = title

    def _close(self) -> None:
        if self.group is not None:
            self.stream.write("::endgroup::\n")
            self.group = None

    def __call__(self, event: Event, state: RolloutState) -> None:
        phase = state.phase
        if Phase(phase).terminal or phase == Phase.ROLLING_BACK:
            title = "rollback" if phase == Phase.ROLLING_BACK else None
        elif phase == Phase.PROGRESSING and state.step < len(self.steps):
            step = self.steps[state.step]
            title = f"step {state.step + 1}/{len(self.steps)}: {step.describe()}"
        elif phase == Phase.PROMOTING:
            title = "promotion"
        else:
            title = self.group  # preparing, waiting: stay where we are
        if title is None:
            self._close()
        elif title != self.group:
            self._open(title)
        super().__call__(event, state)
        if event.kind == EventKind.ROLLBACK_STARTED:
            reason = str(event.data.get("reason") or state.reason or "rolled back")
            title = _escape(f"mlrollout: {self.rollout_id} rolls back", prop=True)
            self.stream.write(f"::error title={title}::{_escape(reason)}\n")
        self.stream.flush()

    def close(self) -> None:
        self._close()
        super().close()


def write_step_summary(store: StateStore, rollout_id: str) -> None:
    """Append the rollout's Markdown report to ``$GITHUB_STEP_SUMMARY`` (on GitHub Actions; a
    summary that cannot be written never changes the rollout's outcome)."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not on_github_actions() or not path:
        return
    from mlrollout.engine.runner import plan_of
    from mlrollout.plan.timeline import expand_steps
    from mlrollout.report.markdown import markdown_report

    record = store.get_rollout(rollout_id)
    text = markdown_report(record, store.events(rollout_id), expand_steps(plan_of(record)))
    with contextlib.suppress(OSError), open(path, "a", encoding="utf-8") as summary:
        summary.write(text + "\n")
