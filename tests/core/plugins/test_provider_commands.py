"""Providers add ``mlrollout providers NAME ...`` commands through ``mlrollout.commands`` (a real
dist-info on sys.path); the core names none of them and loads none for ``--help``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mlrollout import plugins

if TYPE_CHECKING:
    from .conftest import Cli, PluginSite

REPO = Path(__file__).resolve().parents[3]

CLI_MODULE = """
from typing import Annotated

import typer

app = typer.Typer(help="Tools of the kube provider.", no_args_is_help=True)


@app.command("hello")
def hello(ctx: typer.Context, who: Annotated[str, typer.Argument()]) -> None:
    \"\"\"Say hello (and which state store is in use).\"\"\"
    from mlrollout.cli.common import settings

    typer.echo(f"hello {who} from {settings(ctx).state}")


@app.command("fail")
def fail() -> None:
    from mlrollout.errors import ProviderAuthError

    raise ProviderAuthError("kube says no")


NOT_A_GROUP = object()
"""


@pytest.fixture
def site(plugin_site: PluginSite) -> PluginSite:
    plugin_site.module("kube_cli", CLI_MODULE)
    return plugin_site


@pytest.fixture
def kube(site: PluginSite) -> PluginSite:
    site.dist("mlrollout-kube", "[mlrollout.commands]\nkube = kube_cli:app\n")
    return site


def test_a_plugin_adds_its_commands_under_providers(kube: PluginSite, cli: Cli) -> None:
    code, out, err = cli("providers", "kube", "hello", "world")
    assert code == 0, err
    assert out == "hello world from .mlrollout\n"
    # the global options after the command, as the core's commands take them
    code, out, err = cli("providers", "kube", "hello", "you", "--debug")
    assert code == 0, err
    code, out, err = cli("providers", "kube", "hello", "x", "--state", "elsewhere")
    assert code == 2, out + err  # `hello` is not a command of the store


def test_the_plugins_errors_keep_their_exit_codes(kube: PluginSite, cli: Cli) -> None:
    code, _, err = cli("providers", "kube", "fail")
    assert code == 6 and "error: kube says no" in err, err


def test_help_lists_the_plugins_and_root_help_loads_none(kube: PluginSite, cli: Cli) -> None:
    code, out, _ = cli("--help")
    assert code == 0 and "providers" in out
    assert "kube_cli" not in sys.modules  # `mlrollout --help` imported no provider's commands
    code, out, _ = cli("providers", "--help")
    assert code == 0 and "kube" in out and "Tools of the kube provider." in out
    code, out, _ = cli("providers", "kube", "--help")
    assert code == 0 and "hello" in out and "fail" in out


def test_providers_lists_the_command_groups(kube: PluginSite, cli: Cli) -> None:
    code, out, _ = cli("providers")
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("commands  kube"))
    assert "mlrollout-kube" in line and "mlrollout providers kube --help" in line
    assert "kube_cli" not in sys.modules  # listed from the metadata only


def test_a_broken_command_plugin_is_the_plugins_failure(site: PluginSite, cli: Cli) -> None:
    site.dist("mlrollout-broken", "[mlrollout.commands]\nbroken = no_such_module:app\n")
    site.dist("mlrollout-odd", "[mlrollout.commands]\nodd = kube_cli:NOT_A_GROUP\n")
    code, _, err = cli("providers", "broken", "x")
    assert code == 6 and "mlrollout-broken" in err and "internal error" not in err, err
    code, _, err = cli("providers", "odd", "x")
    assert code == 6 and "is not a command group" in err, err
    code, out, _ = cli("providers", "--help")  # help still shows, naming the problem
    assert code == 0 and "broken" in out and "(unavailable:" in out, out


def test_an_unknown_group_is_a_usage_error_and_a_missing_cloud_names_its_install(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, err = cli("providers", "nope", "x")
    assert code == 2 and "No such command 'nope'" in err, err
    monkeypatch.setitem(plugins.KNOWN_PROVIDERS, "zmodel", "zcloud")
    code, _, err = cli("providers", "zcloud", "role", "p.yaml")
    assert code == 6, err
    assert "the zcloud provider (mlrollout-zcloud) is not installed" in err
    assert "mlrollout[zcloud]" in err


def test_the_core_names_no_providers_commands() -> None:
    core = (REPO / "mlrollout" / "cli" / "rollout_cmds.py").read_text()
    for name in ("mlrollout_aws", "mlrollout_gcp", "mlrollout_azure", "iam-policy"):
        assert name not in core, name
