"""Reading history through any metrics source (:mod:`mlrollout.history`) and the sandbox's own
history (:mod:`mlrollout.sandbox.history`)."""

from __future__ import annotations

import pytest

from mlrollout.contracts import MetricsQuery, Window
from mlrollout.errors import ProviderError
from mlrollout.history import HistoryUnavailable, parse_instant, read_history
from mlrollout.plan.model import Gate, Sandbox
from mlrollout.sandbox.history import SandboxHistory

T0 = 1_800_000_000.0
ERRORS = Gate(name="errors", metric="error_rate", max="5%")
CONVERSION = Gate(name="conversion", metric="custom", query={"metric": "conversion"})


def sandbox(**extra: object) -> Sandbox:
    return Sandbox.model_validate(
        {
            "seed": 3,
            "rps": {"base": 20, "daily_swing": 3},
            "variants": {"v1": {"error_rate": 0.02, "custom": {"conversion": 0.1}}, "v2": {}},
            **extra,
        }
    )


class Counting:
    """A metrics source with no history shortcut: a constant window per query, counted."""

    def __init__(self, window: Window | None = None, *, fail: bool = False) -> None:
        self.queries: list[MetricsQuery] = []
        self.window = window if window is not None else Window(requests=100, errors=1)
        self.fail = fail

    def query(self, query: MetricsQuery) -> dict[str, Window]:
        self.queries.append(query)
        if self.fail:
            raise ProviderError(
                "GetMetricData failed: AccessDenied (grant cloudwatch:GetMetricData)"
            )
        return {v: self.window for v in query.variants}


def test_a_source_without_a_shortcut_gets_one_query_per_window() -> None:
    source = Counting()
    history = read_history(
        source, start=T0, end=T0 + 3600 + 59, step=600, variants=["v1"], gates=[ERRORS]
    )
    assert len(history.samples) == 6 and history.calls == 6  # whole windows only
    assert [(q.start, q.end, q.step) for q in source.queries][:2] == [
        (T0, T0 + 600, 600),
        (T0 + 600, T0 + 1200, 600),
    ]
    assert [p.value for p in history.values(ERRORS)] == [0.01] * 6


def test_a_source_that_reads_no_history_says_so() -> None:
    source = Counting()
    source.reads_history = False  # type: ignore[attr-defined]
    source.history_note = "it streams the present only"  # type: ignore[attr-defined]
    with pytest.raises(HistoryUnavailable, match="cannot read history: it streams the present"):
        read_history(source, start=T0, end=T0 + 600, step=60, variants=["v1"], gates=[ERRORS])
    assert source.queries == []


def test_a_history_with_no_data_is_refused_with_the_retention_hint() -> None:
    with pytest.raises(HistoryUnavailable, match="has no data for v1") as caught:
        read_history(Counting(Window()), start=T0, end=T0 + 600, step=60, variants=["v1"], gates=[])
    assert "retention" in (caught.value.hint or "")


def test_a_history_whose_every_window_failed_raises_the_sources_message() -> None:
    with pytest.raises(ProviderError, match="GetMetricData failed: AccessDenied"):
        read_history(
            Counting(fail=True), start=T0, end=T0 + 600, step=60, variants=["v1"], gates=[]
        )


def test_the_sandbox_history_is_the_baseline_serving_everyone_in_one_call() -> None:
    history = read_history(
        SandboxHistory(sandbox(), T0, "shop"),
        start=T0 - 2 * 86400,
        end=T0,
        step=3600,
        variants=["v1", "v2", "nope"],
        gates=[ERRORS, CONVERSION],
    )
    assert history.calls == 1 and len(history.samples) == 48
    first = history.samples[0].windows
    assert first["v1"].requests and first["v2"].requests == 0 and first["nope"].requests is None
    requests = [s.windows["v1"].requests or 0 for s in history.samples]
    # The x3 daily cycle: the busiest hour has about three times the quietest's requests.
    assert 2.5 < max(requests) / min(requests) < 3.3
    rates = [p.value for p in history.values(ERRORS)]
    assert all(r is not None and 0.015 < r < 0.025 for r in rates)


def test_an_event_shifts_the_sandbox_history_at_its_instant() -> None:
    shifted = sandbox(events=[{"at": "-1d", "variant": "v1", "custom": {"conversion": 0.2}}])
    history = read_history(
        SandboxHistory(shifted, T0, "shop"),
        start=T0 - 2 * 86400,
        end=T0,
        step=3600,
        variants=["v1"],
        gates=[CONVERSION],
    )
    values = [p.value or 0.0 for p in history.values(CONVERSION)]
    assert all(0.09 < v < 0.11 for v in values[:24]) and all(0.19 < v < 0.21 for v in values[24:])


def test_a_control_endpoint_has_other_draws_and_no_variant_events() -> None:
    shifted = sandbox(events=[{"at": "-1d", "variant": "v1", "custom": {"conversion": 0.2}}])
    args = dict(start=T0 - 2 * 86400, end=T0, step=3600, variants=["v1"], gates=[CONVERSION])
    mine = read_history(SandboxHistory(shifted, T0, "shop"), **args)  # type: ignore[arg-type]
    other = read_history(SandboxHistory(shifted, T0, "other", control=True), **args)  # type: ignore[arg-type]
    values = [p.value or 0.0 for p in other.values(CONVERSION)]
    assert all(0.09 < v < 0.11 for v in values)
    assert mine.samples[0].windows["v1"].requests != other.samples[0].windows["v1"].requests


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("now", T0),
        ("now-14d", T0 - 14 * 86400),
        ("-2h", T0 - 7200),
        ("2027-01-15T00:00Z", None),  # the ISO instant, in UTC
    ],
)
def test_instants_read_relative_and_iso(text: str, expected: float | None) -> None:
    if expected is None:
        from datetime import UTC, datetime

        expected = datetime(2027, 1, 15, tzinfo=UTC).timestamp()
    assert parse_instant(text, T0) == expected
