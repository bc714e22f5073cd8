"""A provider supplies its own lease key and its own clock (optional ``lease_key`` and ``clock``
on its spec); without them the keys recorded so far and real time stay as they were."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mlrollout import plugins
from mlrollout.clock import ScaledClock, SystemClock, VirtualClock
from mlrollout.contracts import ProviderSpec, default_lease_key, endpoint_key
from mlrollout.engine.runner import clock_for, plan_endpoint_key
from mlrollout.errors import ProviderUnavailable
from mlrollout.plan.loader import parse_plan

if TYPE_CHECKING:
    from .conftest import PluginSite

REPO = Path(__file__).resolve().parents[3]

SPEC_MODULE = """
from mlrollout.clock import VirtualClock
from mlrollout.contracts import Capabilities

CLOCKS = []


class Kube:
    name = "kube"
    target_keys = frozenset({"namespace"})
    required_keys = frozenset({"namespace"})
    capabilities = Capabilities()
    strategies = frozenset({"canary"})
    install_hint = "pip install kube"

    def check_plan(self, plan):
        return []

    def describe_calls(self, plan):
        return {}

    def open(self, context):
        raise NotImplementedError

    def lease_key(self, plan):
        return f"kube:{plan.target.setting('namespace')}/{plan.target.endpoint}"

    def clock(self, plan, resume_at, idle_since, wall):
        CLOCKS.append((resume_at, idle_since, wall))
        return VirtualClock(resume_at or 1000.0)


class Plain(Kube):
    lease_key = None  # declared, but not a method: the default is used
    clock = None


class BadKey(Kube):
    def lease_key(self, plan):
        raise RuntimeError("no key today")


class EmptyKey(Kube):
    def lease_key(self, plan):
        return ""


KUBE = Kube()
PLAIN = Plain()
BAD_KEY = BadKey()
EMPTY_KEY = EmptyKey()
"""


@pytest.fixture
def site(plugin_site: PluginSite) -> PluginSite:
    plugin_site.module("kube_spec", SPEC_MODULE)
    return plugin_site


def _register(site: PluginSite, attr: str) -> None:
    site.dist("mlrollout-kube", f"[mlrollout.endpoints]\nkube = kube_spec:{attr}\n")


KUBE_PLAN = """\
version: 1
name: k
target: {{provider: kube, endpoint: churn, namespace: {namespace}}}
candidate: {{name: v2}}
strategy: {{type: canary, steps: [{{weight: 100}}]}}
"""


def kube_plan(namespace: str):  # type: ignore[no-untyped-def]
    return parse_plan(KUBE_PLAN.format(namespace=namespace), "k.yaml").plan


def example(name: str):  # type: ignore[no-untyped-def]
    return parse_plan((REPO / "plans" / name).read_text(), name).plan


# --------------------------------------------------------------------------------- lease key


def test_a_provider_keys_its_leases_itself(site: PluginSite) -> None:
    _register(site, "KUBE")
    # two namespaces are two endpoints (the default key knows no namespace)
    assert plan_endpoint_key(kube_plan("team-a")) == "kube:team-a/churn"
    assert plan_endpoint_key(kube_plan("team-b")) == "kube:team-b/churn"
    assert default_lease_key(kube_plan("team-a")) == default_lease_key(kube_plan("team-b"))


def test_two_namespaces_can_each_run_a_rollout(site: PluginSite, tmp_path: Path) -> None:
    from mlrollout.engine.runner import Runner
    from mlrollout.state.sqlite import open_sqlite_store

    _register(site, "KUBE")
    runner = Runner(open_sqlite_store(str(tmp_path / "state")))
    for namespace in ("team-a", "team-b"):  # the store refuses a second active one per key
        record = runner.create(parse_plan(KUBE_PLAN.format(namespace=namespace), "k.yaml"))
        assert record.endpoint_key == f"kube:{namespace}/churn"


def test_without_a_lease_key_the_recorded_keys_stay_the_same(site: PluginSite) -> None:
    _register(site, "PLAIN")
    assert plan_endpoint_key(kube_plan("team-a")) == "kube:churn"
    # our providers declare none: their keys are the ones existing state holds
    expected = {
        "local-canary-good.yaml": "local:churn-scoring",
        "sagemaker-canary.yaml": "sagemaker:us-east-1/churn-scoring",
        "vertex-canary.yaml": "vertex:my-ml-project/us-central1/churn-scoring",
    }
    for name, key in expected.items():
        plan = example(name)
        assert plan_endpoint_key(plan) == key, name
        settings = plan.target.settings()
        assert key == endpoint_key(plan.target.provider, settings, plan.target.endpoint)
    azure = example("azureml-canary.yaml")
    assert plan_endpoint_key(azure).startswith("azureml:00000000-0000-0000-0000-000000000000/")


def test_a_failing_lease_key_is_the_plugins_failure(site: PluginSite) -> None:
    _register(site, "BAD_KEY")
    with pytest.raises(ProviderUnavailable) as caught:
        plan_endpoint_key(kube_plan("team-a"))
    assert "mlrollout-kube" in caught.value.message and "lease_key()" in caught.value.message


def test_an_empty_lease_key_is_refused(site: PluginSite) -> None:
    _register(site, "EMPTY_KEY")
    with pytest.raises(ProviderUnavailable, match="gave no lease key"):
        plan_endpoint_key(kube_plan("team-a"))


# ------------------------------------------------------------------------------------ clock


def test_a_provider_supplies_its_clock(site: PluginSite) -> None:
    _register(site, "KUBE")
    clock = clock_for(kube_plan("a"), 5000.0, idle_since=4000.0, wall=9000.0)
    assert isinstance(clock, VirtualClock) and clock.now() == 5000.0
    assert sys.modules["kube_spec"].CLOCKS[-1] == (5000.0, 4000.0, 9000.0)
    clock_for(kube_plan("a"), None)  # no wall given: now
    resume_at, idle_since, wall = sys.modules["kube_spec"].CLOCKS[-1]
    assert resume_at is None and idle_since is None and isinstance(wall, float)


def test_without_a_clock_a_provider_runs_on_real_time(site: PluginSite) -> None:
    _register(site, "PLAIN")
    assert isinstance(clock_for(kube_plan("a"), 5000.0), SystemClock)
    assert isinstance(clock_for(example("sagemaker-canary.yaml"), 5000.0), SystemClock)


def test_the_sandbox_clock_is_the_local_providers() -> None:
    spec = plugins.provider_spec("local")
    assert isinstance(spec, ProviderSpec) and callable(spec.clock)
    plan = example("local-canary-good.yaml")  # speed: max
    fresh = clock_for(plan, None, wall=1000.0)
    assert isinstance(fresh, VirtualClock) and fresh.now() == 1000.0
    resumed = clock_for(plan, 5000.0, idle_since=4000.0, wall=9000.0)
    assert isinstance(resumed, VirtualClock) and resumed.now() == 5000.0  # idle time ignored
    scaled = plan.model_copy(update={"sandbox": plan.sandbox.model_copy(update={"speed": 60.0})})
    clock = clock_for(scaled, 5000.0, idle_since=4000.0, wall=4010.0)
    assert isinstance(clock, ScaledClock) and clock.factor == 60.0
    assert clock.now() == pytest.approx(5000.0 + 10 * 60.0, abs=60.0)  # idle time, sped up
    unstarted = clock_for(scaled, None, idle_since=4000.0, wall=4010.0)
    assert unstarted.now() == pytest.approx(4010.0, abs=60.0)
