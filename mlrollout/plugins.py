"""Discovery of plugins through entry points (docs/plugins.md has a worked example of each).

Groups:

- ``mlrollout.endpoints``: a :class:`~mlrollout.contracts.ProviderSpec` per platform
  (``target.provider``);
- ``mlrollout.state``: a factory ``url -> StateStore`` per URL scheme (``--state SCHEME://...``);
- ``mlrollout.metrics``: a :class:`~mlrollout.contracts.MetricsSourceSpec` per metrics source
  (``analysis.source: {NAME: {...}}``);
- ``mlrollout.commands``: a ``typer.Typer`` per provider, mounted as
  ``mlrollout providers NAME ...`` (loaded only when that command runs or its help is shown).

Built-ins register through the same groups (see the core's pyproject). Discovery is lazy: nothing
is imported until a name is asked for; a plugin that fails to import, or two distributions
claiming one name, gives a clear :class:`~mlrollout.errors.ProviderUnavailable` when that name is
used, never a crash elsewhere. A plugin whose methods fail (its adapter module does not import,
its SDK is missing, a bug of its own) also gives :class:`~mlrollout.errors.ProviderUnavailable`
naming its distribution (exit 6), never an internal error of mlrollout (exit 70): see
:class:`PluginSpec` and :class:`PluginMetricsSpec`.
"""

from __future__ import annotations

import difflib
import functools
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from mlrollout.errors import MlrolloutError, ProviderUnavailable

ENDPOINTS_GROUP = "mlrollout.endpoints"
STATE_GROUP = "mlrollout.state"
METRICS_GROUP = "mlrollout.metrics"
COMMANDS_GROUP = "mlrollout.commands"
OBJECTS_GROUP = "mlrollout.objects"
CORE_DISTRIBUTION = "mlrollout"

#: Providers we publish ourselves → their cloud: the core's extra and the folder under
#: ``providers/`` that hold its distribution (see :func:`install_command`).
KNOWN_PROVIDERS = {"sagemaker": "aws", "vertex": "gcp", "azureml": "azure"}


def install_command(cloud: str) -> str:
    """The command that installs our provider distribution for ``cloud`` where mlrollout runs.

    From a source checkout (mlrollout imported from a folder with ``providers/CLOUD/pyproject.toml``
    beside it) the extra would look for the distribution on a package index: name the folder
    (relative to the working directory when it is below it). Elsewhere: the core's extra."""
    folder = Path(__file__).resolve().parent.parent / "providers" / cloud
    if not (folder / "pyproject.toml").is_file():
        return f"pip install 'mlrollout[{cloud}]'"
    try:
        shown = f"./{folder.relative_to(Path.cwd()).as_posix()}"
    except (ValueError, OSError):  # not below the working directory (or it is gone)
        shown = str(folder)
    return f"pip install {shlex.quote(shown)}"


# Built-ins, used when the package runs without installed metadata (e.g. from a source tree).
_BUILTIN = {
    ENDPOINTS_GROUP: {"local": "mlrollout.sandbox.provider:LocalProviderSpec"},
    STATE_GROUP: {"sqlite": "mlrollout.state.sqlite:open_sqlite_store"},
    METRICS_GROUP: {"prometheus": "mlrollout.metrics.prometheus_spec:SPEC"},
    COMMANDS_GROUP: {},
    OBJECTS_GROUP: {},
}


@dataclass(frozen=True)
class PluginRef:
    name: str
    value: str  # "module:attr"
    dist: str  # distribution that declares it


@cache
def _refs(group: str) -> dict[str, list[PluginRef]]:
    found: dict[str, list[PluginRef]] = {}
    for ep in metadata.entry_points(group=group):
        dist = ep.dist.name if ep.dist is not None else "?"
        ref = PluginRef(ep.name, ep.value, dist)
        if ref not in found.setdefault(ep.name, []):
            found[ep.name].append(ref)
    for name, value in _BUILTIN.get(group, {}).items():
        if name not in found:
            found[name] = [PluginRef(name, value, "mlrollout")]
    return found


def names(group: str) -> list[str]:
    return sorted(_refs(group))


def refs(group: str) -> dict[str, list[PluginRef]]:
    return dict(_refs(group))


def _load(ref: PluginRef) -> Any:
    module_name, _, attr = ref.value.partition(":")
    try:
        module = __import__(module_name, fromlist=["_"])
        obj: Any = module
        for part in attr.split(".") if attr else []:
            obj = getattr(obj, part)
    except Exception as exc:  # a broken plugin must not crash the CLI
        cloud = KNOWN_PROVIDERS.get(ref.name)
        how = f" ({install_command(cloud)})" if cloud else ""
        raise ProviderUnavailable(
            f"plugin {ref.name!r} from {ref.dist} failed to load ({ref.value}): "
            f"{type(exc).__name__}: {exc}",
            hint=f"reinstall or upgrade {ref.dist}{how}; "
            "`mlrollout providers` lists what is installed",
        ) from exc
    return obj


def _one(group: str, name: str, what: str) -> PluginRef:
    found = _refs(group)
    if name not in found:
        cloud = KNOWN_PROVIDERS.get(name) if group == ENDPOINTS_GROUP else None
        if cloud:
            raise ProviderUnavailable(
                f"{what} {name!r} is not installed", hint=f"install it: {install_command(cloud)}"
            )
        close = difflib.get_close_matches(name, list(found), n=1)
        suggestion = f"did you mean {close[0]!r}? " if close else ""
        raise ProviderUnavailable(
            f"unknown {what} {name!r}",
            hint=f"{suggestion}installed: {', '.join(sorted(found)) or 'none'}",
        )
    candidates = found[name]
    if len(candidates) > 1:
        dists = ", ".join(sorted(r.dist for r in candidates))
        raise ProviderUnavailable(
            f"{what} {name!r} is registered by more than one distribution ({dists})",
            hint="uninstall all but one of them",
        )
    return candidates[0]


def _spec(ref: PluginRef, protocol: type, what: str, hint: str) -> Any:
    """The object ``ref`` names (an instance of it if it is a class), if it has the attributes
    of ``protocol`` (a runtime-checkable Protocol)."""
    spec = _load(ref)
    if isinstance(spec, type):
        spec = spec()
    if not isinstance(spec, protocol):
        raise ProviderUnavailable(
            f"plugin {ref.name!r} from {ref.dist} is not {what} ({ref.value})", hint=hint
        )
    return spec


def provider_spec(name: str) -> Any:
    """The :class:`~mlrollout.contracts.ProviderSpec` registered as ``name``: the core's own
    (``local``) as it is, a plugin's behind a :class:`PluginSpec`."""
    from mlrollout.contracts import ProviderSpec

    ref = _one(ENDPOINTS_GROUP, name, "provider")
    spec = _spec(
        ref,
        ProviderSpec,
        "a provider spec",
        "a provider entry point names an object with the ProviderSpec attributes",
    )
    if ref.dist == CORE_DISTRIBUTION:
        return spec  # a failure in the core's own provider is a bug of mlrollout (exit 70)
    return PluginSpec(spec, ref)


#: The optional methods of a provider spec (see :class:`~mlrollout.contracts.ProviderSpec`).
_OPTIONAL_METHODS = frozenset({"lease_key", "clock", "open_capture", "open_feedback", "open_flags"})


class PluginSpec:
    """A plugin's provider spec as the core uses it: its declarations pass through unchanged;
    an exception from its methods that is not an :class:`~mlrollout.errors.MlrolloutError`
    (``open()`` whose adapter module or SDK does not import, a bug in the plugin) becomes
    :class:`~mlrollout.errors.ProviderUnavailable` naming the distribution and how to
    reinstall it (exit 6). ``plugin`` is the spec object the entry point names."""

    def __init__(self, plugin: Any, ref: PluginRef) -> None:
        self.plugin = plugin
        self.ref = ref

    def __repr__(self) -> str:
        return f"PluginSpec({self.plugin!r}, from {self.ref.dist})"

    @property
    def install_hint(self) -> str:
        """How to (re)install the plugin: for our own providers, what works where mlrollout
        runs (see :func:`install_command`); else what the plugin says, or its distribution."""
        cloud = KNOWN_PROVIDERS.get(self.ref.name)
        if cloud and self.ref.dist == f"mlrollout-{cloud}":
            return install_command(cloud)
        declared = getattr(self.plugin, "install_hint", None)
        return (
            declared if isinstance(declared, str) and declared else f"pip install {self.ref.dist}"
        )

    def __getattr__(self, name: str) -> Any:  # only for what is not set on the proxy itself
        if name in ("plugin", "ref"):  # not set yet (a copy being made)
            raise AttributeError(name)
        value = getattr(self.plugin, name)
        if name in _OPTIONAL_METHODS and callable(value):  # guarded as the required ones are
            return functools.partial(self._call, name)
        return value

    def check_plan(self, plan: Any) -> Any:
        return self._call("check_plan", plan)

    def describe_calls(self, plan: Any) -> Any:
        return self._call("describe_calls", plan)

    def open(self, context: Any) -> Any:
        return self._call("open", context)

    def _call(self, method: str, *args: Any) -> Any:
        what = f"provider {self.ref.name!r} (from the distribution {self.ref.dist})"
        return _guarded_call(self.plugin, method, args, what, self.ref, self.install_hint)


def _guarded_call(
    plugin: Any, method: str, args: tuple[Any, ...], what: str, ref: PluginRef, install: str
) -> Any:
    """``plugin.method(*args)``; an exception that is not an
    :class:`~mlrollout.errors.MlrolloutError` becomes :class:`~mlrollout.errors.ProviderUnavailable`
    naming ``what`` (the plugin and its distribution) and how to reinstall it."""
    try:
        return getattr(plugin, method)(*args)
    except MlrolloutError:
        raise  # the plugin said what went wrong, with its own exit code
    except Exception as exc:
        if isinstance(exc, ImportError):  # ModuleNotFoundError too: code or SDK missing
            missing = f" ({exc.name} is missing)" if exc.name else ""
            raise ProviderUnavailable(
                f"{what} cannot start: {type(exc).__name__}: {exc}",
                hint=f"{ref.dist} is installed incompletely{missing}; reinstall it: {install}",
            ) from exc
        raise ProviderUnavailable(
            f"{what} failed in {method}(): {type(exc).__name__}: {exc}",
            hint=f"a problem of {ref.dist}, not of mlrollout: upgrade or reinstall it "
            f"({install}), or report it to its authors (--debug shows the traceback)",
        ) from exc


def state_factory(scheme: str) -> Any:
    return _load(_one(STATE_GROUP, scheme, "state backend"))


def object_factory(scheme: str) -> Any:
    """The ``open(location, endpoint_url)`` of the ``mlrollout.objects`` plugin for ``scheme``
    (see :mod:`mlrollout.objects`)."""
    return _load(_one(OBJECTS_GROUP, scheme, "object storage"))


# ----------------------------------------------------------------------------- metrics sources


def metrics_source_spec(name: str) -> PluginMetricsSpec:
    """The :class:`~mlrollout.contracts.MetricsSourceSpec` registered as ``name`` in
    ``mlrollout.metrics``, behind a :class:`PluginMetricsSpec`. An unknown name raises
    :class:`~mlrollout.errors.ProviderUnavailable` with a did-you-mean and the installed names."""
    from mlrollout.contracts import MetricsSourceSpec

    ref = _one(METRICS_GROUP, name, "metrics source")
    spec = _spec(
        ref,
        MetricsSourceSpec,
        "a metrics source spec",
        "a mlrollout.metrics entry point names an object with a name, check_config(config) "
        "and open(config, context)",
    )
    return PluginMetricsSpec(spec, ref)


class PluginMetricsSpec:
    """A metrics-source plugin as the core uses it. An exception from ``check_config`` or
    ``open`` that is not an :class:`~mlrollout.errors.MlrolloutError` becomes
    :class:`~mlrollout.errors.ProviderUnavailable` naming the distribution (exit 6). The source
    ``open`` returns is wrapped too: a query that raises anything else becomes a
    :class:`~mlrollout.errors.ProviderError`, which the analysis records as an error
    measurement (it never crashes a rollout)."""

    def __init__(self, plugin: Any, ref: PluginRef) -> None:
        self.plugin = plugin
        self.ref = ref

    @property
    def name(self) -> str:
        return self.ref.name

    @property
    def install_hint(self) -> str:
        declared = getattr(self.plugin, "install_hint", None)
        return (
            declared if isinstance(declared, str) and declared else f"pip install {self.ref.dist}"
        )

    def __repr__(self) -> str:
        return f"PluginMetricsSpec({self.plugin!r}, from {self.ref.dist})"

    def check_config(self, config: Mapping[str, Any]) -> Any:
        return self._call("check_config", config)

    def open(self, config: Mapping[str, Any], context: Any) -> GuardedMetricsSource:
        return GuardedMetricsSource(self._call("open", config, context), self)

    def _call(self, method: str, *args: Any) -> Any:
        what = f"metrics source {self.ref.name!r} (from the distribution {self.ref.dist})"
        return _guarded_call(self.plugin, method, args, what, self.ref, self.install_hint)


class GuardedMetricsSource:
    """A plugin's :class:`~mlrollout.contracts.MetricsSource`: its failures are data."""

    def __init__(self, source: Any, spec: PluginMetricsSpec) -> None:
        self.source = source
        self.spec = spec

    def query(self, query: Any) -> Any:
        from mlrollout.errors import ProviderError

        try:
            return self.source.query(query)
        except MlrolloutError:
            raise
        except Exception as exc:
            ref = self.spec.ref
            raise ProviderError(
                f"metrics source {ref.name!r} (from {ref.dist}) failed: "
                f"{type(exc).__name__}: {exc}",
                hint=f"a problem of {ref.dist} or of what it reads",
            ) from exc


# --------------------------------------------------------------------------- provider commands


def provider_commands(name: str) -> Any:
    """The command group registered as ``name`` in ``mlrollout.commands`` (mounted as
    ``mlrollout providers NAME``): a ``typer.Typer``."""
    import typer

    ref = _one(COMMANDS_GROUP, name, "provider command group")
    found = _load(ref)
    if not isinstance(found, typer.Typer):
        raise ProviderUnavailable(
            f"plugin {name!r} from {ref.dist} is not a command group ({ref.value})",
            hint="a mlrollout.commands entry point names a typer.Typer",
        )
    return found
