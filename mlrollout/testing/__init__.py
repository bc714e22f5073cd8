"""The provider test kit: the contract every endpoint provider passes against its emulator.

A provider's tests subclass :class:`EndpointContract` and give it a ``subject`` fixture — a fresh
endpoint on the provider's emulator, serving one baseline at 100 %, and the candidate to roll
out — and pytest runs every check of the contract on it::

    import pytest
    from mlrollout.testing import ContractSubject, EndpointContract

    class TestMyPlatformContract(EndpointContract):
        @pytest.fixture
        def subject(self, my_emulator):
            endpoint = my_emulator.endpoint("churn", variants={"v1": 100})
            adapter = MyEndpoint(..., endpoint_url=my_emulator.url)
            return ContractSubject(adapter, MyMetrics(adapter), "v1", Candidate(name="v2"))

or, to open it the way ``mlrollout run`` does (the plan's provider, through its entry point),
``open_subject(plan, clock=..., store=..., baseline="v1")``.

The checks are what the engine relies on (see :class:`~mlrollout.contracts.EndpointAdapter`):
``describe`` reports the live weights; ``prepare`` adds the candidate at 0 % and is idempotent;
``set_traffic`` applies valid weights, is idempotent, and refuses an unknown variant, a weight out
of 0–100 or a split that does not sum to 100 with a :class:`~mlrollout.errors.ProviderError`
that changes nothing; ``finalize`` refuses to retire a variant that still serves, retires one
that does not, and is a no-op once it is gone; the ownership mark round-trips and never touches
traffic; the metrics source answers one window per variant and says "no data" (``None``), never
zero, for a variant that served nothing. The built-in ``local`` sandbox is the reference
implementation (``tests/core/sandbox/test_contract.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from mlrollout.contracts import (
    EndpointAdapter,
    EndpointState,
    MetricsQuery,
    MetricsSource,
    OwnerMark,
    ProviderContext,
)
from mlrollout.errors import ProviderError

if TYPE_CHECKING:
    from mlrollout.clock import Clock
    from mlrollout.plan.model import Candidate, Plan
    from mlrollout.state.base import StateStore

__all__ = ["ContractSubject", "EndpointContract", "open_subject"]


@dataclass
class ContractSubject:
    """One fresh endpoint for one check: ``baseline`` serves 100 %, ``candidate`` is not on it."""

    adapter: EndpointAdapter
    metrics: MetricsSource | None
    baseline: str
    candidate: Candidate
    #: Instant (the adapter clock's) up to which a metrics query may ask; None: ``time.time()``.
    now: float | None = None


def open_subject(
    plan: Plan, *, clock: Clock, store: StateStore, baseline: str, now: float | None = None
) -> ContractSubject:
    """A subject opened the way ``mlrollout run`` opens a provider: the plan's provider spec
    (found through its entry point) opens the adapter and the metrics source for ``plan``."""
    from mlrollout.plugins import provider_spec

    context = ProviderContext(plan=plan, clock=clock, store=store)
    adapter, metrics = provider_spec(plan.target.provider).open(context)
    return ContractSubject(adapter, metrics, baseline, plan.candidate, now)


def _served(state: EndpointState) -> dict[str, float]:
    return {name: weight for name, weight in state.weights().items() if weight > 0}


class EndpointContract:
    """The checks. Subclass it in a test module (named ``Test...``) and define ``subject``."""

    @pytest.fixture
    def subject(self) -> ContractSubject:  # pragma: no cover - each provider defines it
        raise NotImplementedError("define a `subject` fixture returning a ContractSubject")

    # ------------------------------------------------------------------------------ describe

    def test_describe_shows_the_baseline_serving_all(self, subject: ContractSubject) -> None:
        live = subject.adapter.describe()
        assert live.serving_all() == subject.baseline
        assert live.variant(subject.candidate.name) is None
        assert math.isclose(sum(live.weights().values()), 100.0, abs_tol=0.5)

    # ------------------------------------------------------------------------------- prepare

    def test_prepare_adds_the_candidate_at_zero_and_is_idempotent(
        self, subject: ContractSubject
    ) -> None:
        first = subject.adapter.prepare(subject.candidate, subject.baseline)
        candidate = first.variant(subject.candidate.name)
        assert candidate is not None and candidate.weight == 0
        assert _served(first) == {subject.baseline: 100.0}
        again = subject.adapter.prepare(subject.candidate, subject.baseline)
        assert again.weights() == first.weights()
        assert _served(subject.adapter.describe()) == {subject.baseline: 100.0}

    # ---------------------------------------------------------------------------- set_traffic

    def test_set_traffic_applies_the_split_and_is_idempotent(
        self, subject: ContractSubject
    ) -> None:
        base, cand = subject.baseline, subject.candidate.name
        subject.adapter.prepare(subject.candidate, base)
        applied = subject.adapter.set_traffic({base: 90.0, cand: 10.0})
        assert _served(applied) == {base: 90.0, cand: 10.0}
        again = subject.adapter.set_traffic({base: 90.0, cand: 10.0})
        assert _served(again) == {base: 90.0, cand: 10.0}
        assert _served(subject.adapter.describe()) == {base: 90.0, cand: 10.0}

    @pytest.mark.parametrize(
        "change",
        ["unknown variant", "over 100", "negative", "not a number", "sum under 100"],
    )
    def test_set_traffic_refuses_invalid_weights_and_changes_nothing(
        self, subject: ContractSubject, change: str
    ) -> None:
        base, cand = subject.baseline, subject.candidate.name
        subject.adapter.prepare(subject.candidate, base)
        before = subject.adapter.describe().weights()
        weights = {
            "unknown variant": {base: 90.0, "no-such-variant": 10.0},
            "over 100": {base: -10.0, cand: 110.0},
            "negative": {base: 110.0, cand: -10.0},
            "not a number": {base: math.nan, cand: 10.0},
            "sum under 100": {base: 50.0, cand: 10.0},
        }[change]
        with pytest.raises(ProviderError):
            subject.adapter.set_traffic(weights)
        assert subject.adapter.describe().weights() == before

    # ------------------------------------------------------------------------------ finalize

    def test_finalize_refuses_to_retire_a_variant_that_still_serves(
        self, subject: ContractSubject
    ) -> None:
        base, cand = subject.baseline, subject.candidate.name
        subject.adapter.prepare(subject.candidate, base)
        subject.adapter.set_traffic({base: 50.0, cand: 50.0})
        with pytest.raises(ProviderError):
            subject.adapter.finalize(cand, base)
        with pytest.raises(ProviderError):
            subject.adapter.finalize(base, base)
        assert _served(subject.adapter.describe()) == {base: 50.0, cand: 50.0}

    def test_finalize_retires_the_loser_and_is_a_no_op_once_it_is_gone(
        self, subject: ContractSubject
    ) -> None:
        base, cand = subject.baseline, subject.candidate.name
        subject.adapter.prepare(subject.candidate, base)
        subject.adapter.set_traffic({base: 0.0, cand: 100.0})
        done = subject.adapter.finalize(cand, base)
        assert done.variant(base) is None
        assert _served(done) == {cand: 100.0}
        again = subject.adapter.finalize(cand, base)
        assert again.variant(base) is None and _served(again) == {cand: 100.0}

    def test_a_rollback_retires_the_candidate(self, subject: ContractSubject) -> None:
        base, cand = subject.baseline, subject.candidate.name
        subject.adapter.prepare(subject.candidate, base)
        subject.adapter.set_traffic({base: 80.0, cand: 20.0})
        subject.adapter.set_traffic({base: 100.0, cand: 0.0})
        done = subject.adapter.finalize(base, cand)
        assert done.variant(cand) is None
        assert _served(done) == {base: 100.0}

    # ---------------------------------------------------------------------------- ownership

    def test_the_ownership_mark_round_trips_and_never_moves_traffic(
        self, subject: ContractSubject
    ) -> None:
        adapter = subject.adapter
        if not hasattr(adapter, "write_owner"):
            pytest.skip("this adapter marks no ownership (only the state store's lease)")
        base, cand = subject.baseline, subject.candidate.name
        adapter.prepare(subject.candidate, base)
        adapter.set_traffic({base: 90.0, cand: 10.0})
        mark = OwnerMark("contract-abc123", "kit@host pid 1", 1_900_000_000.0)
        adapter.write_owner(mark)
        adapter.write_owner(mark)  # idempotent
        read = adapter.read_owner()
        assert read is not None
        assert (read.rollout_id, int(read.expires_at)) == (mark.rollout_id, int(mark.expires_at))
        assert _served(adapter.describe()) == {base: 90.0, cand: 10.0}
        adapter.write_owner(None)
        assert adapter.read_owner() is None
        assert _served(adapter.describe()) == {base: 90.0, cand: 10.0}

    # ------------------------------------------------------------------------------ metrics

    def test_metrics_answer_one_window_per_variant_and_no_data_is_none(
        self, subject: ContractSubject
    ) -> None:
        if subject.metrics is None:
            pytest.skip("no metrics source for this subject")
        import time

        subject.adapter.prepare(subject.candidate, subject.baseline)
        end = subject.now if subject.now is not None else time.time()
        query = MetricsQuery(
            start=end - 600,
            end=end,
            variants=(subject.candidate.name, subject.baseline),
            gates=(),
            step=60.0,
        )
        windows = subject.metrics.query(query)
        assert set(windows) >= set(query.variants)
        fresh = windows[subject.candidate.name]
        # the candidate took no traffic: no data, never an error rate that would look healthy
        assert fresh.requests in (None, 0)
        assert fresh.error_rate is None
