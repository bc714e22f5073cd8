"""The sandbox routes its users by the flag file through the real flagd evaluator: the variants'
request shares are the users' shares under each flag version, not the platform's split."""

from __future__ import annotations

from pathlib import Path

import pytest
from flag_plans import PLAN, plan

from mlrollout.clock import VirtualClock
from mlrollout.contracts import MetricsQuery, ProviderContext
from mlrollout.flags import FlagEvaluator, flag_definition, flag_writer
from mlrollout.plan.model import Candidate
from mlrollout.sandbox import traffic
from mlrollout.sandbox.endpoint import LocalEndpoint, LocalMetrics
from mlrollout.sandbox.provider import LocalProviderSpec
from mlrollout.sandbox.traffic import TrafficModel
from mlrollout.state.sqlite import open_sqlite_store

pytestmark = pytest.mark.usefixtures("flagd")

T0 = 1_700_000_000.0
HALF = [{"name": "staff", "match": {"user_type": "employee"}, "weight": 50}]  # half the users


def rollout(tmp_path: Path, **changes):
    p = plan(flags={**PLAN["flags"], "file": str(tmp_path / "churn.json")}, **changes)
    clock = VirtualClock(T0)
    context = ProviderContext(p, clock, open_sqlite_store(str(tmp_path / "state")))
    endpoint, metrics = LocalProviderSpec.open(context)
    assert isinstance(endpoint, LocalEndpoint) and isinstance(metrics, LocalMetrics)
    endpoint.describe()
    endpoint.prepare(Candidate(name="v7"), "v6")
    return p, clock, context, endpoint, metrics


def requests(metrics: LocalMetrics, start: float, end: float) -> dict[str, int]:
    query = MetricsQuery(start=start, end=end, variants=("v6", "v7"), gates=(), step=60)
    return {v: w.requests for v, w in metrics.query(query).items()}


def share(counts: dict[str, int]) -> float:
    return counts["v7"] / (counts["v6"] + counts["v7"])


def test_a_fixed_half_of_half_the_users_gives_the_candidate_a_quarter(tmp_path: Path) -> None:
    p, clock, context, endpoint, metrics = rollout(tmp_path, segments=HALF)
    writer = flag_writer(p, context)
    writer.write(
        flag_definition(p, {"v7": 0}, baseline="v6", candidate="v7", everyone=False)
    )  # step weight 0
    assert endpoint.describe().weights() == {"v6": 100.0, "v7": 0.0}  # the platform's split
    clock.advance(1800)
    got = requests(metrics, T0, T0 + 1800)
    assert got["v6"] + got["v7"] > 150_000  # 100 rps for 30 minutes
    assert share(got) == pytest.approx(0.25, abs=0.02)  # 4000 users: the sample is the noise


def test_before_the_first_flag_the_platform_routes_and_after_it_the_flag(tmp_path: Path) -> None:
    p, clock, context, endpoint, metrics = rollout(tmp_path, segments=None)
    endpoint.set_traffic({"v6": 90.0, "v7": 10.0})
    clock.advance(600)
    flag_writer(p, context).write(flag_definition(p, {"v7": 60}, baseline="v6", candidate="v7"))
    clock.advance(600)
    assert share(requests(metrics, T0, T0 + 600)) == pytest.approx(0.10, abs=0.02)
    assert share(requests(metrics, T0 + 600, T0 + 1200)) == pytest.approx(0.60, abs=0.03)


def test_a_rollback_flag_sends_everyone_to_the_baseline(tmp_path: Path) -> None:
    p, clock, context, _endpoint, metrics = rollout(tmp_path)
    writer = flag_writer(p, context)
    writer.write(flag_definition(p, {"v7": 25}, baseline="v6", candidate="v7"))
    clock.advance(600)
    writer.write(flag_definition(p, {"v6": 100}, baseline="v6", candidate="v7"))  # for everyone
    clock.advance(600)
    # staff (half the users) all on v7, eu customers (a quarter) at 25 %: 56 % of the users
    assert share(requests(metrics, T0, T0 + 600)) == pytest.approx(0.5625, abs=0.03)
    assert requests(metrics, T0 + 600, T0 + 1200)["v7"] == 0


def test_the_shares_are_the_evaluators_and_are_cached_by_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(traffic, "_FLAG_SHARES", {})  # this process has seen the version already
    p, _clock, context, _endpoint, _metrics = rollout(tmp_path, segments=HALF)
    doc = flag_definition(p, {"v7": 0}, baseline="v6", candidate="v7", everyone=False)
    digest = flag_writer(p, context).write(doc)
    assert p.sandbox is not None
    model = TrafficModel(p.sandbox, T0)
    loads: list[str] = []

    def load() -> dict:
        loads.append(digest)
        return doc

    shares = model.flag_shares(digest, "churn-model", load)
    users = model.flag_users()
    evaluator = FlagEvaluator(doc)
    on = sum(evaluator.variant("churn-model", *users.user(i)) == "v7" for i in range(users.count))
    assert shares["v7"] == pytest.approx(100.0 * on / users.count)
    assert TrafficModel(p.sandbox, T0).flag_shares(digest, "churn-model", load) == shares
    assert len(loads) == 1  # evaluated once for this version in this process


def test_without_users_the_flag_routes_anonymous_ones(tmp_path: Path) -> None:
    sandbox = {**PLAN["sandbox"]}
    del sandbox["users"]
    p, clock, context, _endpoint, metrics = rollout(tmp_path, segments=None, sandbox=sandbox)
    flag_writer(p, context).write(flag_definition(p, {"v7": 30}, baseline="v6", candidate="v7"))
    clock.advance(900)
    assert share(requests(metrics, T0, T0 + 900)) == pytest.approx(0.30, abs=0.03)


def test_a_later_rollout_is_not_routed_by_an_earlier_ones_flag(tmp_path: Path) -> None:
    sandbox = {**PLAN["sandbox"], "variants": {**PLAN["sandbox"]["variants"], "v8": {}}}
    p, clock, context, endpoint, metrics = rollout(tmp_path, sandbox=sandbox)
    writer = flag_writer(p, context)
    writer.write(flag_definition(p, {"v7": 100}, baseline="v6", candidate="v7"))
    endpoint.set_traffic({"v7": 100.0})
    endpoint.finalize("v7", "v6")
    clock.advance(600)
    endpoint.prepare(Candidate(name="v8"), "v7")  # the next rollout, without flags
    endpoint.set_traffic({"v7": 80.0, "v8": 20.0})
    clock.advance(600)
    query = MetricsQuery(start=T0 + 600, end=T0 + 1200, variants=("v7", "v8"), gates=(), step=60)
    got = {v: w.requests for v, w in metrics.query(query).items()}
    assert got["v8"] / (got["v7"] + got["v8"]) == pytest.approx(0.20, abs=0.03)
