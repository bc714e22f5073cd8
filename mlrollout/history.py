"""A metric's history through any metrics source: windows of ``step`` seconds, oldest first.

``mlrollout impact`` (did the release change the business?) and ``mlrollout plan backtest``
(would these gates have rolled back a healthy release?) both read the past here, through the
same :class:`~mlrollout.contracts.MetricsSource` a rollout looks through, so every source that
answers a look answers a history: CloudWatch, Cloud Monitoring, Azure Monitor, Prometheus, a
``mlrollout.metrics`` plugin, the sandbox's :class:`~mlrollout.sandbox.history.SandboxHistory`.

One loop reads it (:func:`read_history`): one :class:`~mlrollout.contracts.MetricsQuery` per
window (the call a look makes, so its cost per window is the look's), unless the source can do
better: a source with ``query_history(query) -> list[dict[str, Window]]`` answers the whole span
in one call, one mapping per ``query.step`` window from ``query.start`` (a Prometheus
``query_range``, a CloudWatch ``GetMetricData`` with ``Period = step``).

A source that cannot read the past (a live feed that only knows the present) declares
``reads_history = False`` and may say why in ``history_note``; :func:`read_history` then refuses
with :class:`HistoryUnavailable` instead of returning windows that look empty. A history with no
data at all is refused the same way (the source's retention is the usual reason), and a history
whose every window failed raises the first failure (the source's message names the call).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from mlrollout.analysis.measures import Counts, measure
from mlrollout.analysis.monitor import merge
from mlrollout.contracts import MetricsQuery, MetricsSource, Window
from mlrollout.errors import ProviderError, UsageError
from mlrollout.plan.model import Gate, Plan
from mlrollout.units import format_duration

#: The most windows one history may hold (14 days of 10-second windows is 120,960).
MAX_WINDOWS = 500_000


class HistoryUnavailable(ProviderError):
    """The metrics source cannot read (this part of) the past."""


@dataclass
class Sample:
    """One window of the history: ``[start, end)`` and each variant's numbers in it."""

    start: float
    end: float
    windows: dict[str, Window] = field(default_factory=dict)

    def window(self, variants: Iterable[str] | None = None) -> Window:
        """The variants' windows added up (all of them by default): the endpoint's window. A
        failed variant makes the whole window an error measurement."""
        names = list(self.windows) if variants is None else list(variants)
        total = Window()
        for name in names:
            part = self.windows.get(name)
            if part is None:
                continue
            if part.error:
                return Window(error=part.error)
            total = merge(total, part)
        return total


@dataclass
class History:
    start: float
    end: float
    step: float
    variants: tuple[str, ...]
    samples: list[Sample]
    calls: int = 0  # metrics calls made to read it

    def values(self, gate: Gate, variants: Iterable[str] | None = None) -> list[Point]:
        """``gate``'s metric in each window, as :func:`value_of` reads it."""
        out: list[Point] = []
        for sample in self.samples:
            value, weight = value_of(gate, sample.window(variants))
            out.append(Point(sample.start, value, weight))
        return out


@dataclass(frozen=True)
class Point:
    """One window's value of a metric (``None``: no data) and its weight (the requests or
    observations it rests on; 1 for a bare value)."""

    at: float
    value: float | None
    weight: float


def value_of(gate: Gate, window: Window) -> tuple[float | None, float]:
    """``gate``'s metric in ``window`` as a number, read as the gates read it
    (:func:`~mlrollout.analysis.measures.measure`): a rate (errors / requests, a custom count
    ratio) weighted by its trials, a latency quantile, a custom mean; ``requests`` is the count.
    ``None`` when the window has no such data (or the query failed)."""
    if window.error:
        return None, 0.0
    if gate.metric == "requests":
        return (None, 0.0) if window.requests is None else (float(window.requests), 1.0)
    found = measure(gate, window, "endpoint", 1.96)
    if isinstance(found, str):
        return None, 0.0
    if isinstance(found, Counts):
        return found.rate, found.trials
    return (found.value, 1.0) if math.isfinite(found.value) else (None, 0.0)


def read_history(
    source: MetricsSource,
    *,
    start: float,
    end: float,
    step: float,
    variants: Sequence[str],
    gates: Sequence[Gate],
    progress: Callable[[int, int], None] | None = None,
) -> History:
    """Every ``step``-second window of ``[start, end)`` (whole windows only), oldest first.
    ``progress(done, total)`` is called as windows arrive (one call per metrics query)."""
    if not step > 0:
        raise UsageError(f"a history step is longer than 0 s, got {step!r}")
    count = math.floor((end - start) / step + 1e-9)
    if count <= 0:
        raise UsageError(
            f"the history from {start:.0f} to {end:.0f} holds no whole {format_duration(step)} "
            "window"
        )
    if count > MAX_WINDOWS:
        raise UsageError(
            f"{count} windows of {format_duration(step)} is more than {MAX_WINDOWS}",
            hint="read a shorter span or use a longer step",
        )
    if not getattr(source, "reads_history", True):
        note = getattr(source, "history_note", "") or "it only knows the present"
        raise HistoryUnavailable(
            f"the metrics source {type(source).__name__} cannot read history: {note}",
            hint="point analysis.source at a source that keeps history (CloudWatch, Cloud "
            "Monitoring, Azure Monitor, Prometheus)",
        )
    names, gate_tuple = tuple(variants), tuple(gates)
    history = History(start, start + count * step, step, names, [])
    batch = getattr(source, "query_history", None)
    if callable(batch):
        query = MetricsQuery(start, start + count * step, names, gate_tuple, step)
        answers = list(batch(query))
        history.calls = 1
        for i in range(count):
            windows = answers[i] if i < len(answers) else {}
            history.samples.append(Sample(start + i * step, start + (i + 1) * step, windows))
        if progress is not None:
            progress(count, count)
    else:
        for i in range(count):
            lo = start + i * step
            query = MetricsQuery(lo, lo + step, names, gate_tuple, step)
            try:
                windows = source.query(query)
            except ProviderError as exc:
                windows = {name: Window(error=str(exc)) for name in names}
            history.calls += 1
            history.samples.append(Sample(lo, lo + step, windows))
            if progress is not None:
                progress(i + 1, count)
    _check(history, source)
    return history


def _check(history: History, source: MetricsSource) -> None:
    """Refuse a history that holds nothing: every window failed, or none has any data."""
    windows = [w for s in history.samples for w in s.windows.values()]
    failed = [w.error for w in windows if w.error]
    if windows and len(failed) == len(windows):
        raise ProviderError(
            f"every window of the history failed; the first: {failed[0]}",
            hint="check the metrics source's settings and credentials with a short span first",
        )
    if not any(_has_data(w) for w in windows):
        span = format_duration(history.end - history.start)
        raise HistoryUnavailable(
            f"the metrics source {type(source).__name__} has no data for "
            f"{', '.join(history.variants)} over the {span} asked for",
            hint="a source keeps history only so long (CloudWatch: 1-minute points for 15 "
            "days, 1-hour points for 455 days; Prometheus: its retention): ask for a more "
            "recent or shorter span, or a longer step",
        )


def _has_data(window: Window) -> bool:
    return not window.error and (
        bool(window.requests)
        or bool(window.custom)
        or bool(window.latency_percentiles)
        or (window.latency is not None and window.latency.total > 0)
    )


# ------------------------------------------------------------------------- opening a source


def history_source(
    plan: Plan,
    *,
    origin: float,
    state: str,
    endpoint: str | None = None,
    control: bool = False,
    serving: Sequence[tuple[float, str]] = (),
) -> MetricsSource:
    """The metrics source ``plan``'s rollouts look through, opened read-only for history: the
    provider's own (or the ``analysis.source`` plugin's), with no lease and a state store that
    refuses writes; for the sandbox (``provider: local``), its
    :class:`~mlrollout.sandbox.history.SandboxHistory` with the world's zero at ``origin``.
    A provider spec with ``open_metrics(context)`` opens its metrics source alone; otherwise
    ``open(context)`` runs (with whatever read-only preflight the provider makes).
    ``endpoint``: another endpoint of the same platform (a control), read the same way;
    ``serving``: on the sandbox, who serves everyone from when on (a promoted candidate)."""
    if endpoint is not None:
        target = plan.target.model_copy(update={"endpoint": endpoint})
        plan = plan.model_copy(update={"target": target})
    if plan.target.provider == "local" and plan.analysis.source == "default":
        from mlrollout.sandbox.history import SandboxHistory

        if plan.sandbox is None:
            raise UsageError("the local provider needs the plan's sandbox section")
        return SandboxHistory(
            plan.sandbox, origin, plan.target.endpoint, control=control, serving=serving
        )
    from mlrollout.clock import SystemClock
    from mlrollout.contracts import ProviderContext, ProviderSpec
    from mlrollout.plan.live import ReadOnlyStore
    from mlrollout.plugins import metrics_source_spec, provider_spec

    context = ProviderContext(plan=plan, clock=SystemClock(), store=ReadOnlyStore(state))
    source = plan.analysis.source
    if not isinstance(source, str):  # {NAME: CONFIG}: a mlrollout.metrics plugin
        [(name, config)] = source.items()
        return metrics_source_spec(name).open(config, context)
    spec: ProviderSpec = provider_spec(plan.target.provider)
    # Optional on a spec: ``open_metrics(context)``, the metrics source alone, without the
    # endpoint's preflight (an old rollout's candidate model may be gone by now).
    opener = getattr(spec, "open_metrics", None)
    if callable(opener):
        found: MetricsSource = opener(context)
        return found
    _adapter, metrics = spec.open(context)
    return metrics


def parse_instant(text: str, now: float) -> float:
    """An instant from ``now``, ``now-14d`` (or ``-14d``), or an ISO 8601 date or time (UTC
    unless it says otherwise): seconds since the epoch."""
    from datetime import UTC, datetime

    from mlrollout.units import parse_duration

    value = text.strip()
    if value == "now":
        return now
    relative = value.removeprefix("now")
    if relative.startswith("-") or relative.startswith("+"):
        try:
            seconds = parse_duration(relative[1:], allow_zero=True)
        except ValueError as exc:
            raise UsageError(f"cannot read the instant {text!r}: {exc}") from None
        return now - seconds if relative.startswith("-") else now + seconds
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"cannot read the instant {text!r}",
            hint="give now, now-14d (or -14d), or an ISO date/time such as 2026-11-01T00:00Z",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
