"""Discovery of provider plugins through entry points.

Groups: ``mlrollout.endpoints`` (a :class:`~mlrollout.contracts.ProviderSpec` per platform) and
``mlrollout.state`` (a factory ``url -> StateStore`` per URL scheme). Built-ins register through the
same groups (see the core's pyproject). Discovery is lazy: nothing is imported until a name is asked
for; a plugin that fails to import, or two distributions claiming one name, gives a clear
:class:`~mlrollout.errors.ProviderUnavailable` when that name is used, never a crash elsewhere.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from typing import Any

from mlrollout.errors import ProviderUnavailable

ENDPOINTS_GROUP = "mlrollout.endpoints"
STATE_GROUP = "mlrollout.state"

#: Providers we publish ourselves, for install hints when they are missing.
KNOWN_PROVIDERS = {
    "sagemaker": "pip install 'mlrollout[aws]'",
    "vertex": "pip install 'mlrollout[gcp]'",
    "azureml": "pip install 'mlrollout[azure]'",
}

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
        raise ProviderUnavailable(
            f"plugin {ref.name!r} from {ref.dist} failed to load ({ref.value}): "
            f"{type(exc).__name__}: {exc}",
            hint=f"reinstall or upgrade {ref.dist}; `mlrollout providers` lists what is installed",
        ) from exc
    return obj


def _one(group: str, name: str, what: str) -> PluginRef:
    found = _refs(group)
    if name not in found:
        hint = KNOWN_PROVIDERS.get(name) if group == ENDPOINTS_GROUP else None
        if hint:
            raise ProviderUnavailable(
                f"{what} {name!r} is not installed", hint=f"install it: {hint}"
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
    """The :class:`~mlrollout.contracts.ProviderSpec` registered as ``name``."""
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
    return spec


def state_factory(scheme: str) -> Any:
    return _load(_one(STATE_GROUP, scheme, "state backend"))
