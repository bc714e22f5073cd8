"""History through a real metrics source: :func:`mlrollout.history.read_history` against the
real Prometheus server with its backfilled history (see conftest.py), one look's queries per
window, and the numbers each window holds."""

from __future__ import annotations

from mlrollout.history import read_history
from mlrollout.metrics.prometheus_spec import SPEC
from mlrollout.plan.model import Gate
from mlrollout.retry import RetryPolicy

from .conftest import RATES, T0, Proxy

QUERIES = {
    "requests": "sum by (variant) (increase(model_requests_total[{window}]))",
    "errors": 'sum by (variant) (increase(model_requests_total{code=~"5.."}[{window}]))',
}
ERRORS = Gate(name="errors", metric="error_rate", max="2%")


def test_history_reads_each_window_of_the_backfilled_past(proxy: Proxy) -> None:
    source = SPEC.open({"url": proxy.url, "queries": QUERIES}, None)  # type: ignore[arg-type]
    source.retry = RetryPolicy(attempts=2, sleep=lambda seconds: None)  # type: ignore[attr-defined]
    history = read_history(
        source, start=T0, end=T0 + 900, step=300, variants=["v1", "v3"], gates=[ERRORS]
    )
    assert len(history.samples) == 3 and history.calls == 3
    assert len(proxy.queries()) == 3 * 2  # each window: requests and errors, every variant
    for sample in history.samples:
        for variant in ("v1", "v3"):
            rates = RATES[variant]
            window = sample.windows[variant]
            assert window.error is None, window.error
            assert window.requests == round((rates["ok"] + rates["err"]) * 300)
            assert window.errors == round(rates["err"] * 300)
    # The endpoint's window adds its variants up: v3's 10 % errors dilute v1's 0.125 %.
    values = history.values(ERRORS)
    expected = (0.1 + 2.0) / (80.0 + 20.0)
    assert all(p.value is not None and abs(p.value - expected) < 1e-9 for p in values)
    assert all(p.weight == 100.0 * 300 for p in values)
