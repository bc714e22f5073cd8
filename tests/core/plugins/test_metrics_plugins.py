"""Metrics sources plug in through ``mlrollout.metrics`` (a real dist-info on sys.path), apart
from the endpoint's provider: ``analysis.source: {NAME: {...}}`` is checked by the plugin's
``check_config`` and its windows drive the rollout's decisions."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mlrollout import plugins
from mlrollout.errors import PlanError, ProviderError, ProviderUnavailable
from mlrollout.plan.loader import parse_plan

from .conftest import SOURCE_PLAN

if TYPE_CHECKING:
    from .conftest import Cli, PluginSite

SOURCE_MODULE = """
from mlrollout.contracts import PlanProblem, Window

QUERIES = []


class FakePromSource:
    def __init__(self, config, context):
        self.config = config
        self.context = context

    def query(self, query):
        QUERIES.append(query)
        if self.config.get("explode"):
            raise RuntimeError("the plugin's own bug")
        seconds = query.end - query.start
        windows = {}
        for variant in query.variants:
            requests = int(50 * seconds)
            candidate = variant == self.context.plan.candidate.name
            rate = self.config["candidate_error_rate"] if candidate else 0.001
            windows[variant] = Window(requests=requests, errors=round(requests * rate))
        return windows


class FakeProm:
    name = "fakeprom"
    install_hint = "pip install fakeprom"

    def check_config(self, config):
        problems = []
        if "candidate_error_rate" not in config:
            problems.append(PlanProblem((), "fakeprom needs candidate_error_rate"))
        elif not 0 <= config["candidate_error_rate"] <= 1:
            problems.append(PlanProblem(("candidate_error_rate",), "a rate is from 0 to 1"))
        return problems

    def open(self, config, context):
        return FakePromSource(config, context)


class Prometheus(FakeProm):
    name = "prometheus"

    def check_config(self, config):
        return [] if "url" in config else [PlanProblem(("url",), "prometheus needs a url")]


class Crashes(FakeProm):
    def check_config(self, config):
        raise KeyError("oops")


SPEC = FakeProm()
PROMETHEUS = Prometheus()
CRASHES = Crashes()
"""


@pytest.fixture
def site(plugin_site: PluginSite) -> PluginSite:
    plugin_site.module("fakeprom_source", SOURCE_MODULE)
    return plugin_site


@pytest.fixture
def fakeprom(site: PluginSite) -> PluginSite:
    site.dist("mlrollout-fakeprom", "[mlrollout.metrics]\nfakeprom = fakeprom_source:SPEC\n")
    return site


def issues(source: str) -> list[str]:
    try:
        parse_plan(SOURCE_PLAN.format(source=source), "p.yaml")
    except PlanError as exc:
        return [str(issue) for issue in exc.issues]
    return []


# ------------------------------------------------------------------------------ validation


def test_an_unknown_source_is_refused_with_a_suggestion_and_the_installed_names(
    fakeprom: PluginSite,
) -> None:
    [message] = issues("{fakeprm: {candidate_error_rate: 0.5}}")
    assert message.startswith("p.yaml:9:12: analysis.source.fakeprm: metrics source 'fakeprm'")
    assert (
        "did you mean 'fakeprom'?" in message and "installed metrics sources: fakeprom" in message
    )


def test_a_source_that_no_plugin_provides_is_refused(fakeprom: PluginSite) -> None:
    [message] = issues("{datadog: {url: 'https://api.datadoghq.com'}}")
    assert "analysis.source.datadog" in message and "is not installed" in message, message
    assert "installed metrics sources: fakeprom, prometheus" in message, message
    assert "source: default" in message


def test_prometheus_is_built_in(site: PluginSite) -> None:
    assert "prometheus" in plugins.names(plugins.METRICS_GROUP)
    assert plugins.metrics_source_spec("prometheus").ref.dist == "mlrollout"
    found = issues("{prometheus: {uri: 'http://prometheus:9090'}}")
    assert any("prometheus.uri: unknown key 'uri'; did you mean 'url'?" in m for m in found)
    assert any("analysis.source.prometheus: the prometheus source needs url" in m for m in found)


def test_a_third_party_source_is_used_when_one_is_installed(site: PluginSite) -> None:
    site.dist("mlrollout-vm", "[mlrollout.metrics]\nvictoria = fakeprom_source:PROMETHEUS\n")
    assert issues("{victoria: {url: 'http://victoria:8428'}}") == []
    [message] = issues("{victoria: {uri: 'http://victoria:8428'}}")
    assert "analysis.source.victoria.url: prometheus needs a url" in message, message


def test_a_second_distribution_claiming_prometheus_is_refused(site: PluginSite) -> None:
    site.dist("mlrollout-prom", "[mlrollout.metrics]\nprometheus = fakeprom_source:PROMETHEUS\n")
    [message] = issues("{prometheus: {url: 'http://prometheus:9090'}}")
    assert "registered by more than one distribution (mlrollout, mlrollout-prom)" in message


def test_a_registered_source_checks_its_own_config(fakeprom: PluginSite) -> None:
    assert issues("{fakeprom: {candidate_error_rate: 0.5}}") == []
    [message] = issues("{fakeprom: {candidate_error_rate: 7}}")
    assert message.startswith(
        "p.yaml:9:45: analysis.source.fakeprom.candidate_error_rate: a rate is from 0 to 1"
    ), message
    [message] = issues("{fakeprom: {}}")
    assert "analysis.source.fakeprom: fakeprom needs candidate_error_rate" in message, message


def test_a_source_is_default_or_one_name_with_its_settings() -> None:
    [message] = issues("prometheus")
    assert "a metrics source is `default` or {NAME: {settings}}" in message, message
    [message] = issues("{a: {}, b: {}}")
    assert "one name with its settings" in message, message
    assert issues("default") == []


def test_a_source_plugin_that_crashes_in_its_check_names_its_distribution(
    site: PluginSite,
) -> None:
    site.dist("mlrollout-crashes", "[mlrollout.metrics]\nfakeprom = fakeprom_source:CRASHES\n")
    spec = plugins.metrics_source_spec("fakeprom")
    with pytest.raises(ProviderUnavailable) as caught:
        spec.check_config({})
    assert caught.value.exit_code == 6
    assert "mlrollout-crashes" in caught.value.message and "check_config" in caught.value.message


def test_an_unknown_source_name_from_the_registry_has_a_suggestion(fakeprom: PluginSite) -> None:
    with pytest.raises(ProviderUnavailable) as caught:
        plugins.metrics_source_spec("fakepron")
    assert "did you mean 'fakeprom'" in (caught.value.hint or "")


# ------------------------------------------------------------------------ driving a rollout


def _run(tmp_path: Path, cli: Cli, source: str) -> int:
    plan = tmp_path / "plan.yaml"
    plan.write_text(SOURCE_PLAN.format(source=source))
    code, _, _ = cli("--state", tmp_path / "state", "run", plan, "--yes")
    return code


def _reason(tmp_path: Path) -> str:
    from mlrollout.state.sqlite import open_sqlite_store

    [record] = open_sqlite_store(str(tmp_path / "state")).list_rollouts()
    return str(record.snapshot.get("reason"))


def test_the_sandbox_alone_promotes_its_healthy_candidate(tmp_path: Path, cli: Cli) -> None:
    assert _run(tmp_path, cli, "default") == 0


def test_a_plugin_source_decides_a_sandbox_rollout(
    fakeprom: PluginSite, tmp_path: Path, cli: Cli
) -> None:
    # the sandbox simulates a healthy candidate; the plugin reports 30 % errors for it
    code = _run(tmp_path, cli, "{fakeprom: {candidate_error_rate: 0.3}}")
    assert code == 1  # rolled back by analysis
    assert "errors" in _reason(tmp_path), _reason(tmp_path)
    queries = sys.modules["fakeprom_source"].QUERIES
    assert queries and all(set(q.variants) == {"v1", "v2"} for q in queries)


def test_a_plugin_source_that_reports_health_promotes(
    fakeprom: PluginSite, tmp_path: Path, cli: Cli
) -> None:
    assert _run(tmp_path, cli, "{fakeprom: {candidate_error_rate: 0.001}}") == 0
    assert sys.modules["fakeprom_source"].QUERIES


def test_a_failing_plugin_query_is_an_error_measurement_not_a_crash(fakeprom: PluginSite) -> None:
    spec = plugins.metrics_source_spec("fakeprom")
    source = spec.open({"explode": True}, None)
    with pytest.raises(ProviderError, match=r"metrics source 'fakeprom'.*RuntimeError"):
        source.query(None)


def test_providers_lists_the_metrics_sources(fakeprom: PluginSite, cli: Cli) -> None:
    import json

    code, out, _ = cli("providers", "-o", "json")
    assert code == 0
    rows = json.loads(out)
    assert {"kind": "metrics", "name": "fakeprom", "from": "mlrollout-fakeprom"} in rows


def test_preview_names_the_plugin_source_instead_of_the_providers_metrics(
    fakeprom: PluginSite, tmp_path: Path
) -> None:
    from mlrollout.plan.loader import load_plan
    from mlrollout.plan.preview import build_preview

    plan = tmp_path / "plan.yaml"
    plan.write_text(SOURCE_PLAN.format(source="{fakeprom: {candidate_error_rate: 0.3}}"))
    preview = build_preview(load_plan(str(plan)))
    looks = [c for step in preview["steps"] for c in step["api_calls"] if "queries" in c]
    assert looks and all(
        c.startswith("metrics source 'fakeprom': its queries at each look") for c in looks
    )
    assert not any(
        "sandbox: synthesize" in c for step in preview["steps"] for c in step["api_calls"]
    )
