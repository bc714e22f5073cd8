"""Provider plugins are discovered through real entry points (a dist-info on sys.path)."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlrollout import plugins
from mlrollout.errors import PlanError, ProviderUnavailable
from mlrollout.plan.loader import parse_plan

SPEC_MODULE = """
from mlrollout.contracts import Capabilities, PlanProblem


class Fake:
    name = "fakecloud"
    target_keys = frozenset({"region", "profile"})
    required_keys = frozenset({"region"})
    capabilities = Capabilities(weights=True, shadow=False)
    strategies = frozenset({"canary"})
    install_hint = "pip install fakecloud"

    def check_plan(self, plan):
        problems = []
        for i, step in enumerate(plan.strategy.steps):
            if step.weight is not None and 50 < step.weight < 100:
                problems.append(PlanProblem(("strategy", "steps", i, "weight"),
                                            "fakecloud canaries are at most 50%"))
        return problems

    def describe_calls(self, plan):
        return {"set_traffic": ["Fake.SetWeights"]}

    def open(self, context):
        raise NotImplementedError


SPEC = Fake()
"""


def _dist(site: Path, name: str, entry_points: str) -> None:
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "fakecloud_spec.py").write_text(SPEC_MODULE)
    sys.path.insert(0, str(site))
    plugins._refs.cache_clear()
    yield site
    sys.path.remove(str(site))
    sys.modules.pop("fakecloud_spec", None)
    plugins._refs.cache_clear()


PLAN = """\
version: 1
name: p
target:
  provider: fakecloud
  endpoint: e
{extra}candidate: {{name: v2}}
strategy:
  type: canary
  steps:
    - weight: 80
"""


def test_a_third_party_provider_is_found_and_checks_its_keys_and_limits(site: Path) -> None:
    _dist(site, "fakecloud", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
    with pytest.raises(PlanError) as caught:
        parse_plan(PLAN.format(extra="  regoin: eu-west-1\n"), "p.yaml")
    messages = [str(issue) for issue in caught.value.issues]
    assert any(
        "p.yaml:6:3: target.regoin: unknown key 'regoin'" in m and "'region'" in m for m in messages
    ), messages
    assert any("needs target.region" in m for m in messages), messages
    assert any(
        "p.yaml:11:15: strategy.steps[0].weight: fakecloud canaries are at most 50%" in m
        for m in messages
    ), messages


def test_a_valid_plan_for_the_plugin_passes(site: Path) -> None:
    _dist(site, "fakecloud", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
    loaded = parse_plan(PLAN.format(extra="  region: eu-west-1\n").replace("80", "100"), "p.yaml")
    assert loaded.plan.target.setting("region") == "eu-west-1"


def test_a_broken_plugin_gives_a_clear_error_not_a_crash(site: Path) -> None:
    _dist(site, "brokencloud", "[mlrollout.endpoints]\nbroken = no_such_module:SPEC\n")
    with pytest.raises(ProviderUnavailable, match="'broken' from brokencloud failed to load"):
        plugins.provider_spec("broken")
    # the other providers are unaffected
    assert plugins.provider_spec("local").name == "local"


def test_two_distributions_claiming_one_name_are_rejected(site: Path) -> None:
    _dist(site, "fakecloud", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
    _dist(site, "impostor", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
    with pytest.raises(ProviderUnavailable, match="more than one distribution"):
        plugins.provider_spec("fakecloud")


def test_an_unknown_provider_gets_a_suggestion() -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        plugins.provider_spec("lokal")
    assert "did you mean 'local'" in (caught.value.hint or "")


def test_a_known_cloud_that_is_not_installed_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # one of our own clouds whose distribution is not installed here
    monkeypatch.setitem(plugins.KNOWN_PROVIDERS, "zcloud", "pip install 'mlrollout[zcloud]'")
    with pytest.raises(ProviderUnavailable) as caught:
        plugins.provider_spec("zcloud")
    assert "is not installed" in caught.value.message
    assert "mlrollout[zcloud]" in (caught.value.hint or "")
