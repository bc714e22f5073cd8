"""Provider plugins are discovered through real entry points (a dist-info on sys.path)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mlrollout import plugins
from mlrollout.errors import PlanError, ProviderUnavailable
from mlrollout.plan.loader import parse_plan

if TYPE_CHECKING:
    from .conftest import PluginSite

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


@pytest.fixture
def site(plugin_site: PluginSite) -> PluginSite:
    plugin_site.module("fakecloud_spec", SPEC_MODULE)
    return plugin_site


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


def test_a_third_party_provider_is_found_and_checks_its_keys_and_limits(site: PluginSite) -> None:
    site.dist("fakecloud", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
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


def test_a_valid_plan_for_the_plugin_passes(site: PluginSite) -> None:
    site.dist("fakecloud", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
    loaded = parse_plan(PLAN.format(extra="  region: eu-west-1\n").replace("80", "100"), "p.yaml")
    assert loaded.plan.target.setting("region") == "eu-west-1"


def test_a_broken_plugin_gives_a_clear_error_not_a_crash(site: PluginSite) -> None:
    site.dist("brokencloud", "[mlrollout.endpoints]\nbroken = no_such_module:SPEC\n")
    with pytest.raises(ProviderUnavailable, match="'broken' from brokencloud failed to load"):
        plugins.provider_spec("broken")
    # the other providers are unaffected
    assert plugins.provider_spec("local").name == "local"


def test_two_distributions_claiming_one_name_are_rejected(site: PluginSite) -> None:
    site.dist("fakecloud", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
    site.dist("impostor", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
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
    monkeypatch.setitem(plugins.KNOWN_PROVIDERS, "zcloud", "zcloud")
    with pytest.raises(ProviderUnavailable) as caught:
        plugins.provider_spec("zcloud")
    assert "is not installed" in caught.value.message
    assert "mlrollout[zcloud]" in (caught.value.hint or "")


# ---------------------------------------------------- every problem in one pass (issue 11)


def test_the_plugins_checks_run_beside_the_models_errors(site: PluginSite) -> None:
    # a bad value (the model), a typo'd target key (the provider's keys) and a weight over the
    # plugin's limit (its own check_plan): all three at once
    site.dist("fakecloud", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
    text = PLAN.format(extra="  region: eu-west-1\n  regoin: eu-west-1\n").replace(
        "candidate: {name: v2}", "candidate: {name: v2, instance_count: 0}"
    )
    with pytest.raises(PlanError) as caught:
        parse_plan(text, "p.yaml")
    messages = [str(issue) for issue in caught.value.issues]
    assert any(m.startswith("p.yaml:7:3: target.regoin: unknown key 'regoin'") for m in messages)
    assert any(m.startswith("p.yaml:8:") and "instance_count" in m for m in messages), messages
    assert any(
        m.startswith("p.yaml:12:15: strategy.steps[0].weight: fakecloud canaries") for m in messages
    ), messages
    assert len(messages) == 3, messages


def test_a_plugin_check_that_needs_an_invalid_part_is_skipped(site: PluginSite) -> None:
    site.dist("fakecloud", "[mlrollout.endpoints]\nfakecloud = fakecloud_spec:SPEC\n")
    text = PLAN.format(extra="  regoin: eu-west-1\n").replace("- weight: 80", "- weight: 180")
    with pytest.raises(PlanError) as caught:  # the steps do not validate: no limit check on them
        parse_plan(text, "p.yaml")
    messages = [str(issue) for issue in caught.value.issues]
    assert any("weight is a percentage from 0 to 100" in m for m in messages), messages
    assert any("target.regoin: unknown key" in m for m in messages), messages
    assert any("needs target.region" in m for m in messages), messages
    assert not any("fakecloud canaries" in m for m in messages), messages


# ------------------------------------------------- a plugin that cannot start (issue 11)

NO_ADAPTER = """
from fakecloud_spec import Fake


class NeedsAdapter(Fake):
    def open(self, context):
        from fakecloud_adapter import FakeEndpoint  # the distribution shipped without it

        return FakeEndpoint(), None


class Crashes(Fake):
    def open(self, context):
        raise RuntimeError("the plugin's own bug")


class SaysWhy(Fake):
    def open(self, context):
        from mlrollout.errors import ProviderAuthError

        raise ProviderAuthError("no credentials for fakecloud")


NO_ADAPTER_SPEC = NeedsAdapter()
CRASHES_SPEC = Crashes()
SAYS_WHY_SPEC = SaysWhy()
"""


@pytest.fixture
def broken_open(site: PluginSite) -> PluginSite:
    site.module("fakecloud_open", NO_ADAPTER)
    return site


def _register(site: PluginSite, attr: str) -> None:
    site.dist("mlrollout-fakecloud", f"[mlrollout.endpoints]\nfakecloud = fakecloud_open:{attr}\n")


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    from mlrollout.cli.app import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    code = exited.value.code
    return (code if isinstance(code, int) else 0), capsys.readouterr().err


def test_a_plugin_whose_adapter_does_not_import_is_the_plugins_failure(
    broken_open: PluginSite, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _register(broken_open, "NO_ADAPTER_SPEC")
    plan = tmp_path / "p.yaml"
    plan.write_text(PLAN.format(extra="  region: eu-west-1\n").replace("80", "100"))
    code, err = _main(capsys, "--state", str(tmp_path / "state"), "run", str(plan), "--yes")
    assert code == 6, err
    assert "internal error" not in err and "bug in mlrollout" not in err, err
    assert "mlrollout-fakecloud" in err and "fakecloud_adapter" in err, err
    assert "hint: " in err and "pip install fakecloud" in err, err  # the plugin's install hint


def test_any_failure_inside_a_plugins_open_names_its_distribution(broken_open: PluginSite) -> None:
    _register(broken_open, "CRASHES_SPEC")
    spec = plugins.provider_spec("fakecloud")
    with pytest.raises(ProviderUnavailable) as caught:
        spec.open(None)
    assert caught.value.exit_code == 6
    assert "mlrollout-fakecloud" in caught.value.message
    assert "RuntimeError: the plugin's own bug" in caught.value.message
    assert isinstance(caught.value.__cause__, RuntimeError)  # --debug shows where


def test_a_plugins_own_error_passes_unchanged(broken_open: PluginSite) -> None:
    from mlrollout.errors import ProviderAuthError

    _register(broken_open, "SAYS_WHY_SPEC")
    spec = plugins.provider_spec("fakecloud")
    with pytest.raises(ProviderAuthError, match="no credentials for fakecloud"):
        spec.open(None)
    # its declarations pass through the core's wrapper unchanged
    assert spec.name == "fakecloud" and spec.strategies == frozenset({"canary"})
    assert spec.plugin is sys.modules["fakecloud_open"].SAYS_WHY_SPEC


# ------------------------------------------------------------ install hints (issue 11)


def test_the_install_command_from_a_checkout_names_the_providers_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checkout = tmp_path / "checkout"
    (checkout / "mlrollout").mkdir(parents=True)
    (checkout / "providers" / "gcp").mkdir(parents=True)
    (checkout / "providers" / "gcp" / "pyproject.toml").write_text("[project]\n")
    monkeypatch.setattr(plugins, "__file__", str(checkout / "mlrollout" / "plugins.py"))
    monkeypatch.chdir(checkout)
    assert plugins.install_command("gcp") == "pip install ./providers/gcp"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # not below the checkout: its absolute path
    assert plugins.install_command("gcp") == f"pip install {checkout / 'providers' / 'gcp'}"
    # a cloud whose folder is not there, or an installed wheel: the extra
    assert plugins.install_command("aws") == "pip install 'mlrollout[aws]'"
    monkeypatch.setattr(plugins, "__file__", str(tmp_path / "site" / "mlrollout" / "plugins.py"))
    assert plugins.install_command("gcp") == "pip install 'mlrollout[gcp]'"
