"""The ``prometheus`` metrics source's spec: ``analysis.source: {prometheus: {...}}``.

Importing it imports nothing beyond the standard library's ``re`` and ``urllib.parse``
(``plan validate`` loads it); the live source, :mod:`mlrollout.metrics.prometheus`, loads in
:meth:`PrometheusSpec.open`. Settings (docs/plan-format.md, "Prometheus"):

- ``url`` (required): ``http(s)://HOST:PORT[/prefix]`` of the Prometheus HTTP API, without
  credentials;
- ``queries`` (required): PromQL templates ``requests`` (required), ``errors``, ``latency``
  (``le`` buckets), with ``{window}`` (the look's window, ``600s``) and either ``{variant}``
  (one call per variant) or a grouping by the variant label (one call for all variants);
- ``token_env`` (bearer token) or ``username_env`` + ``password_env`` (basic auth): the names of
  environment variables, never the secrets themselves;
- ``ca_file`` (a PEM bundle to trust besides the system's), ``timeout`` (``10s``),
  ``variant_label`` (``variant``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from mlrollout.contracts import PlanProblem

if TYPE_CHECKING:
    from mlrollout.contracts import MetricsSource, ProviderContext

KEYS = (
    "url",
    "queries",
    "token_env",
    "username_env",
    "password_env",
    "ca_file",
    "timeout",
    "variant_label",
)
QUERY_KEYS = ("requests", "errors", "latency")
PLACEHOLDERS = ("variant", "window")
DEFAULT_TIMEOUT = 10.0

_PLACEHOLDER_RE = re.compile(r"\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}")
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_BY_RE = re.compile(r"\bby\s*\(([^)]*)\)")
_SECRET_WORDS = ("token", "password", "passwd", "secret", "bearer", "credential", "api_key")
_CREDENTIAL_PARAMS = ("token", "key", "secret", "password", "auth", "sig", "signature")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)\s*$")


def template_placeholders(template: str) -> set[str]:
    """The ``{name}`` placeholders of a PromQL template (label matchers never match: they hold
    ``=``)."""
    return {m.group(1) for m in _PLACEHOLDER_RE.finditer(template)}


def groups_by(template: str, label: str) -> bool:
    """Whether the template aggregates ``by (... label ...)`` (so one call splits by it)."""
    return any(
        label in (part.strip() for part in m.group(1).split(",")) for m in _BY_RE.finditer(template)
    )


def parse_timeout(value: object) -> float:
    """Seconds from ``10s``, ``500ms``, ``1m`` or a positive number of seconds."""
    if isinstance(value, bool):
        raise ValueError(f"a timeout is a duration such as 10s or 500ms, not {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.match(value)):
        seconds = float(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[match.group(2)]
    else:
        raise ValueError(f"a timeout is a duration such as 10s or 500ms, not {value!r}")
    if not 0 < seconds <= 300:
        raise ValueError(f"a timeout is more than 0 and at most 5m, not {value!r}")
    return seconds


def template_problems(
    template: object, path: tuple[str | int, ...], what: str, label: str
) -> list[PlanProblem]:
    """The problems of one PromQL template (a source query or a custom gate's)."""
    if not isinstance(template, str) or not template.strip():
        return [PlanProblem(path, f"{what} is a PromQL string, not {template!r}")]
    problems = []
    found = template_placeholders(template)
    for name in sorted(found - set(PLACEHOLDERS)):
        close = difflib.get_close_matches(name, PLACEHOLDERS, n=1)
        hint = f"did you mean {{{close[0]}}}? " if close else ""
        problems.append(
            PlanProblem(
                path,
                f"unknown placeholder {{{name}}} in {what}; {hint}the placeholders are "
                "{variant} and {window}",
            )
        )
    if "window" not in found:
        problems.append(
            PlanProblem(
                path,
                f"{what} needs {{window}} in its range, e.g. increase(x[{{window}}]): it is "
                "filled with each look's window (600s)",
            )
        )
    if "variant" not in found and not groups_by(template, label):
        problems.append(
            PlanProblem(
                path,
                f'{what} neither selects {label}="{{variant}}" nor groups by ({label}): every '
                "variant would get the same numbers",
            )
        )
    return problems


def url_problem(url: object) -> str | None:
    """Why ``url`` is not a Prometheus URL mlrollout accepts (no credentials in it), or None."""
    from urllib.parse import parse_qsl, urlsplit

    if not isinstance(url, str) or not url.strip():
        return f"the prometheus source needs url: http(s)://HOST:PORT, not {url!r}"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        return f"not a URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "the url is http://HOST:PORT or https://HOST:PORT (the Prometheus HTTP API)"
    if parts.username is not None or parts.password is not None:
        return (
            "this URL carries credentials (user:password@), and a plan is recorded and shown: "
            "use token_env, or username_env and password_env (environment variable names)"
        )
    for name, _ in parse_qsl(parts.query, keep_blank_values=True):
        if any(word in name.lower() for word in _CREDENTIAL_PARAMS):
            return (
                f"this URL carries a credential in its query string ({name[:32]}=...): use "
                "token_env, or username_env and password_env"
            )
    if parts.fragment:
        return "the url has a #fragment: remove it"
    return None


class PrometheusSpec:
    """``analysis.source: {prometheus: {url, queries, ...}}`` (a
    :class:`~mlrollout.contracts.MetricsSourceSpec`)."""

    name = "prometheus"
    install_hint = "built in (pip install mlrollout)"

    def check_config(self, config: Mapping[str, Any]) -> list[PlanProblem]:
        problems: list[PlanProblem] = []
        for key in sorted(set(config) - set(KEYS), key=str):
            if any(word in str(key).lower() for word in _SECRET_WORDS):
                message = (
                    f"credentials do not belong in a plan (it is recorded and shown): instead of "
                    f"{key!r} give token_env, or username_env and password_env (the names of "
                    "environment variables)"
                )
            else:
                close = difflib.get_close_matches(str(key), KEYS, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                message = f"unknown key {key!r}; {hint}allowed: {', '.join(KEYS)}"
            problems.append(PlanProblem((key,), message))
        if "url" not in config:
            problems.append(PlanProblem((), "the prometheus source needs url: http(s)://HOST:PORT"))
        elif (why := url_problem(config["url"])) is not None:
            problems.append(PlanProblem(("url",), why))
        label = config.get("variant_label", "variant")
        if not isinstance(label, str) or not _LABEL_RE.match(label):
            problems.append(
                PlanProblem(("variant_label",), f"not a Prometheus label name: {label!r}")
            )
            label = "variant"
        problems += self._query_problems(config, label)
        problems += self._auth_problems(config)
        if "ca_file" in config and (
            not isinstance(config["ca_file"], str) or not config["ca_file"].strip()
        ):
            problems.append(
                PlanProblem(("ca_file",), "ca_file is the path of a PEM file of CA certificates")
            )
        if "timeout" in config:
            try:
                parse_timeout(config["timeout"])
            except ValueError as exc:
                problems.append(PlanProblem(("timeout",), str(exc)))
        return problems

    @staticmethod
    def _query_problems(config: Mapping[str, Any], label: str) -> list[PlanProblem]:
        queries = config.get("queries")
        if queries is None:
            return [
                PlanProblem(
                    (),
                    "the prometheus source needs queries: {requests: PROMQL, errors: PROMQL, "
                    "latency: PROMQL}",
                )
            ]
        if not isinstance(queries, Mapping):
            return [PlanProblem(("queries",), "queries is a mapping of requests, errors, latency")]
        problems = []
        for key in sorted(set(queries) - set(QUERY_KEYS), key=str):
            close = difflib.get_close_matches(str(key), QUERY_KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                PlanProblem(
                    ("queries", key),
                    f"unknown query {key!r}; {hint}allowed: {', '.join(QUERY_KEYS)} (a custom "
                    "gate gives its own: query: {promql: ...})",
                )
            )
        if "requests" not in queries:
            problems.append(
                PlanProblem(
                    ("queries",), "queries needs requests (every gate and min_requests use it)"
                )
            )
        for key in QUERY_KEYS:
            if key in queries:
                problems += template_problems(
                    queries[key], ("queries", key), f"the {key} query", label
                )
        return problems

    @staticmethod
    def _auth_problems(config: Mapping[str, Any]) -> list[PlanProblem]:
        problems = []
        for key in ("token_env", "username_env", "password_env"):
            value = config.get(key)
            if key in config and (not isinstance(value, str) or not _ENV_RE.match(value)):
                problems.append(
                    PlanProblem(
                        (key,),
                        f"{key} names an environment variable (such as PROM_TOKEN), not {value!r}",
                    )
                )
        if "token_env" in config and ("username_env" in config or "password_env" in config):
            problems.append(
                PlanProblem(
                    ("token_env",),
                    "give either token_env (bearer) or username_env and password_env (basic auth)",
                )
            )
        elif ("username_env" in config) != ("password_env" in config):
            missing = "password_env" if "username_env" in config else "username_env"
            problems.append(PlanProblem((), f"basic auth needs {missing} too"))
        return problems

    def open(self, config: Mapping[str, Any], context: ProviderContext) -> MetricsSource:
        from mlrollout.metrics.prometheus import PrometheusSource

        return PrometheusSource.from_config(config)


#: The object the ``prometheus`` entry point loads.
SPEC = PrometheusSpec()
