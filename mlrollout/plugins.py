"""Discovery of provider plugins through entry points.

Groups: ``mlrollout.endpoints`` (a :class:`~mlrollout.contracts.ProviderSpec` per platform) and
``mlrollout.state`` (a factory ``url -> StateStore`` per URL scheme). Built-ins register through the
same groups (see the core's pyproject). Discovery is lazy: nothing is imported until a name is asked
for; a plugin that fails to import, or two distributions claiming one name, gives a clear
:class:`~mlrollout.errors.ProviderUnavailable` when that name is used, never a crash elsewhere.
A plugin's spec whose methods fail (its adapter module does not import, its SDK is missing, a bug
of its own) also gives :class:`~mlrollout.errors.ProviderUnavailable` naming its distribution
(exit 6), never an internal error of mlrollout (exit 70): see :class:`PluginSpec`.
"""

from __future__ import annotations

import difflib
import shlex
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from mlrollout.errors import MlrolloutError, ProviderUnavailable

ENDPOINTS_GROUP = "mlrollout.endpoints"
STATE_GROUP = "mlrollout.state"
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
    for name, value in _BUILTIN[group].items():
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


def provider_spec(name: str) -> Any:
    """The :class:`~mlrollout.contracts.ProviderSpec` registered as ``name``: the core's own
    (``local``) as it is, a plugin's behind a :class:`PluginSpec`."""
    from mlrollout.contracts import ProviderSpec

    ref = _one(ENDPOINTS_GROUP, name, "provider")
    spec = _load(ref)
    if isinstance(spec, type):
        spec = spec()
    if not isinstance(spec, ProviderSpec):
        raise ProviderUnavailable(
            f"plugin {name!r} from {ref.dist} is not a provider spec ({ref.value})",
            hint="a provider entry point names an object with the ProviderSpec attributes",
        )
    if ref.dist == CORE_DISTRIBUTION:
        return spec  # a failure in the core's own provider is a bug of mlrollout (exit 70)
    return PluginSpec(spec, ref)


class PluginSpec:
    """A plugin's provider spec as the core uses it: its declarations pass through unchanged;
    an exception from its methods that is not an :class:`~mlrollout.errors.MlrolloutError`
    (``open()`` whose adapter module or SDK does not import, a bug in the plugin) becomes
    :class:`~mlrollout.errors.ProviderUnavailable` naming the distribution and how to
    reinstall it (exit 6). ``plugin`` is the spec object the entry point names."""

    def __init__(self, plugin: Any, ref: PluginRef) -> None:
        self.plugin = plugin
        self.ref = ref

    def __getattr__(self, name: str) -> Any:  # only for what is not set on the proxy itself
        if name in ("plugin", "ref"):  # not set yet (a copy being made)
            raise AttributeError(name)
        return getattr(self.plugin, name)

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

    def check_plan(self, plan: Any) -> Any:
        return self._call("check_plan", plan)

    def describe_calls(self, plan: Any) -> Any:
        return self._call("describe_calls", plan)

    def open(self, context: Any) -> Any:
        return self._call("open", context)

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self.plugin, method)(*args)
        except MlrolloutError:
            raise  # the plugin said what went wrong, with its own exit code
        except Exception as exc:
            ref = self.ref
            what = f"provider {ref.name!r} (from the distribution {ref.dist})"
            if isinstance(exc, ImportError):  # ModuleNotFoundError too: code or SDK missing
                missing = f" ({exc.name} is missing)" if exc.name else ""
                raise ProviderUnavailable(
                    f"{what} cannot start: {type(exc).__name__}: {exc}",
                    hint=f"{ref.dist} is installed incompletely{missing}; reinstall it: "
                    f"{self.install_hint}",
                ) from exc
            raise ProviderUnavailable(
                f"{what} failed in {method}(): {type(exc).__name__}: {exc}",
                hint=f"a problem of {ref.dist}, not of mlrollout: upgrade or reinstall it "
                f"({self.install_hint}), or report it to its authors "
                "(--debug shows the traceback)",
            ) from exc


def state_factory(scheme: str) -> Any:
    return _load(_one(STATE_GROUP, scheme, "state backend"))
