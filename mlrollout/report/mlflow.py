"""The plan's ``mlflow`` section: each rollout an MLflow run, and ``models:/`` candidates resolved
through the MLflow Model Registry, whose version then carries the rollout's outcome.

A rollout is one run in the plan's experiment (``mlflow.experiment``, default ``mlrollout``),
found again by its tag ``mlrollout.rollout_id``: a rollout resumed by another process continues
the same run, never a second one. What is written, and when:

- when the run is opened: the params (``rollout_id``, ``plan``, ``strategy``, ``provider``,
  ``endpoint``, ``candidate``, ``candidate.model``, the registry version a ``models:/``
  candidate resolved to) and the plan as the artifact ``plan.yaml`` (credentials in URLs
  masked; a valid plan carries none);
- at each look: every gate's numbers for each side as metrics ``{gate}.candidate``,
  ``{gate}.baseline`` (and ``.candidate_requests``, ``.baseline_requests``); at each applied
  traffic change, each variant's share (percent) as ``weight.{variant}``; each with the journal
  event's ``seq`` as the step and its instant as the timestamp. A replayed event writes the
  same (key, step, timestamp, value), which MLflow keeps once;
- on a phase change: the tag ``mlrollout.phase``; the ``baseline`` param once it is known;
- at the end: the tags ``mlrollout.phase``, ``mlrollout.outcome`` (``promoted``,
  ``evaluated``, ``rolled_back``, ``aborted``) and ``mlrollout.reason``, the Markdown report as
  the artifact ``report.md``, the run's status (``FINISHED``; ``FAILED`` when rolled back;
  ``KILLED`` when aborted) and, for a ``models:/`` candidate, the registry version's tags
  ``mlrollout.outcome``, ``mlrollout.rollout_id`` and ``mlrollout.endpoint``.

The tracking server is a side effect, never the rollout's business: the listener only queues
what to write; one daemon thread writes it (the webhooks'
:class:`~mlrollout.report.webhook.QueuedNotifier`: bounded queue, one warning on stderr for a
failing server, a bounded flush when the run ends). MLflow's own HTTP client is bounded through
its environment settings, set here unless the user set them: ``MLFLOW_HTTP_REQUEST_TIMEOUT``
(5 s), ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` (1) and ``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` (1),
instead of MLflow's 120 s and 7 retries (minutes per call). MLflow is never allowed to print
run URLs on stdout (``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT``): ``--output json`` owns it.

MLflow (``mlrollout[mlflow]``, the ``mlflow-skinny`` client) is imported only on the writer
thread and by :func:`resolve_model`, never for ``--help``, ``plan validate`` or a preview.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Unpack

from mlrollout.engine.events import LOOK_KINDS, EventKind
from mlrollout.engine.phases import Phase
from mlrollout.errors import ProviderRefused, ProviderUnavailable
from mlrollout.report.webhook import DeliveryOptions, HookSpec, QueuedNotifier

if TYPE_CHECKING:
    from mlrollout.engine.engine import RolloutState
    from mlrollout.plan.model import Plan
    from mlrollout.state.base import Event, RolloutRecord, StateStore

TRACKING_ENV = "MLFLOW_TRACKING_URI"
#: The run's tag that finds it again (a resumed rollout continues the same run).
RUN_TAG = "mlrollout.rollout_id"
PHASE_TAG = "mlrollout.phase"
OUTCOME_TAG = "mlrollout.outcome"
REASON_TAG = "mlrollout.reason"
ENDPOINT_TAG = "mlrollout.endpoint"
#: A model version's tag naming the platform's model for one provider (``{provider}``), then
#: for any: the resolution rule of :func:`resolve_model`.
PROVIDER_MODEL_TAG = "mlrollout.{provider}.model"
MODEL_TAG = "mlrollout.model"
#: The run's param with the registry version a ``models:/`` candidate resolved to.
VERSION_PARAM = "candidate.registry_version"

#: MLflow's HTTP settings when the user has not set them: bounded calls (seconds, count).
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
#: Wall-clock seconds the end of the run may take to write what is still queued (the report).
FLUSH_TIMEOUT = 15.0
#: What MLflow accepts in one value (a tag's value, a param's value).
MAX_TAG = 8000
MAX_PARAM = 6000
MAX_BATCH = 1000  # metrics in one log_batch
#: The numbers of a gate's verdict that become metrics, per look.
GATE_NUMBERS = ("candidate", "baseline", "candidate_requests", "baseline_requests")
#: The run's status by the phase it ended in.
RUN_STATUS = {
    Phase.SUCCEEDED.value: "FINISHED",
    Phase.ROLLED_BACK.value: "FAILED",
    Phase.ABORTED.value: "KILLED",
}

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\- ]+")
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@'\"]+@")
_REGISTRY = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))/?$")


def metric_name(*parts: str) -> str:
    """A metric (or param) name MLflow accepts everywhere: letters, digits, ``_ . - `` and
    spaces; anything else becomes ``_`` (``p99/eu`` → ``p99_eu``), no leading dot."""
    name = ".".join(_UNSAFE.sub("_", part) for part in parts)
    return name.lstrip(".") or "_"


def mask_credentials(text: str) -> str:
    """``text`` with the user and password of every URL in it masked (``https://***@host``)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def tracking_uri(plan: Plan) -> str | None:
    """The plan's ``mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else None."""
    given = plan.mlflow.tracking_uri if plan.mlflow is not None else None
    return given or os.environ.get(TRACKING_ENV) or None


def registry_reference(model: str | None) -> tuple[str, str | None, str | None] | None:
    """``(name, version, alias)`` of a ``models:/name/version`` or ``models:/name@alias``
    reference; None for anything else (the platform's own model reference)."""
    if not model or not model.startswith("models:/"):
        return None
    match = _REGISTRY.match(model)
    if match is None:
        raise ProviderRefused(
            f"candidate.model {model!r} is not a registry reference mlrollout can resolve",
            hint="write models:/NAME/VERSION or models:/NAME@ALIAS",
        )
    return match["name"], match["version"], match["alias"]


def event_metrics(event: Event) -> dict[str, float]:
    """The metrics of one journal event, from the event alone (so that a replay writes the
    same): a look's gate numbers per side, an applied change's traffic share per variant."""
    metrics: dict[str, float] = {}
    if event.kind in LOOK_KINDS:
        verdict: Mapping[str, Any] = event.data.get("verdict") or {}
        for gate in verdict.get("gates") or []:
            numbers: Mapping[str, Any] = gate.get("numbers") or {}
            for key in GATE_NUMBERS:
                value = numbers.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    metrics[metric_name(str(gate.get("gate", "gate")), key)] = float(value)
    elif event.kind == EventKind.STARTED or event.kind.endswith(".applied"):
        weights: Mapping[str, Any] = event.data.get("weights") or {}
        for variant, weight in weights.items():
            if isinstance(weight, int | float):
                metrics[metric_name("weight", str(variant))] = float(weight)
    return metrics


def outcome_of(state: RolloutState) -> str:
    """What the ``mlrollout.outcome`` tag says of a rollout that ended."""
    if state.phase == Phase.SUCCEEDED.value:
        return "evaluated" if state.evaluated else "promoted"
    return state.phase


def _bounded_http() -> None:
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def _client(uri: str) -> Any:
    _bounded_http()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _why(exc: Exception) -> str:
    """An MLflow error in one short line without credentials: the REST call and, for a
    connection that failed, only why (``experiments/get-by-name: Connection refused``)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    call = _CALL.search(text)
    errno = _ERRNO.search(text)
    if "timed out" in text.lower() or "timeout" in text.lower():
        text = "no answer in time (MLFLOW_HTTP_REQUEST_TIMEOUT)"
    elif errno is not None:
        text = errno["why"].strip()
    if call is not None:
        text = f"{call['call']}: {text}"
    text = mask_credentials(text)
    return text if len(text) <= 300 else text[:297] + "..."


_CALL = re.compile(r"/api/\d\.\d/mlflow(?:-artifacts)?/(?P<call>[\w/-]+)")
_ERRNO = re.compile(r"\[Errno -?\d+\] (?P<why>[^'\")\]]+)")


# ------------------------------------------------------------------------------- registry


def _registry_version(client: Any, name: str, version: str | None, alias: str | None) -> Any:
    if version is not None:
        return client.get_model_version(name, version)
    return client.get_model_version_by_alias(name, alias)


def resolve_model(uri: str, plan: Plan) -> str:
    """The platform's model reference a ``models:/name/version`` (or ``@alias``) names, read from
    the Model Registry of the plan's tracking server. The version's tag
    ``mlrollout.<provider>.model`` (``mlrollout.sagemaker.model``...) wins, then its tag
    ``mlrollout.model``, then where its files are: its ``source`` (``s3://...``), or for a
    source of MLflow's own (``runs:/``, ``models:/``) the run's (logged model's) artifact
    location — refused if only MLflow can read it (``mlflow-artifacts:``).

    A registry that cannot be reached or has no such version is an error before any change
    (exit 6), naming the call and the fix."""
    ref = registry_reference(uri)
    if ref is None:
        return uri
    where = tracking_uri(plan)
    if where is None:
        raise ProviderRefused(
            f"candidate.model {uri!r} is a Model Registry reference, but no tracking server is "
            "given",
            hint=f"set mlflow.tracking_uri in the plan or {TRACKING_ENV}",
        )
    if importlib.util.find_spec("mlflow") is None:
        raise ProviderRefused(
            f"candidate.model {uri!r} needs the MLflow client",
            hint='pip install "mlrollout[mlflow]"',
        )
    from mlflow.exceptions import MlflowException

    name, version, alias = ref
    client = _client(where)
    try:
        found = _registry_version(client, name, version, alias)
        tags: Mapping[str, str] = found.tags or {}
        provider_tag = PROVIDER_MODEL_TAG.format(provider=plan.target.provider)
        for tag in (provider_tag, MODEL_TAG):
            if tags.get(tag):
                return str(tags[tag])
        location = _location(client, str(found.source or ""))
        if not location.startswith(_MLFLOW_OWN):
            return location
    except MlflowException as exc:
        call = f"get_model_version({name!r}, {version!r})"
        if alias is not None:
            call = f"get_model_version_by_alias({name!r}, {alias!r})"
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise ProviderRefused(
                f"the Model Registry has no {uri!r}: {call} failed: {_why(exc)}",
                hint="check the model's name and version (or alias) in the registry",
            ) from exc
        raise ProviderUnavailable(
            f"the Model Registry did not answer for {uri!r}: {call} failed: {_why(exc)}",
            hint=f"check that the tracking server is up and reachable ({TRACKING_ENV})",
        ) from exc
    raise ProviderRefused(
        f"{uri!r} is version {found.version} of {name!r}, whose files are only in MLflow's own "
        f"artifact store ({location}): {plan.target.provider} cannot load a model from there",
        hint=f"tag the version with {provider_tag} (or {MODEL_TAG}) = the platform's model "
        "reference, or register it from a storage location the platform reads",
    )


#: Where only MLflow can read: not a model reference a platform can load.
_MLFLOW_OWN = ("models:/", "runs:/", "mlflow-artifacts:")


def _location(client: Any, source: str) -> str:
    """Where a version's files are: its ``source``, or for MLflow's own ``runs:/RUN/PATH`` and
    ``models:/MODEL_ID`` the run's or the logged model's artifact location."""
    if source.startswith("runs:/"):
        run_id, _, path = source.removeprefix("runs:/").partition("/")
        base = str(client.get_run(run_id).info.artifact_uri).rstrip("/")
        return f"{base}/{path}" if path else base
    if source.startswith("models:/") and "@" not in source:
        model_id = source.removeprefix("models:/").strip("/")
        if "/" not in model_id:
            return str(client.get_logged_model(model_id).artifact_location)
    return source


#: The journal events that record the platform's model a rollout started with (``model``).
RESOLVED_IN = frozenset(
    {EventKind.STARTED, EventKind.PREPARE_REQUESTED, EventKind.START_NATIVE_REQUESTED}
)


def resolved_candidate(plan: Plan, journal: Iterable[Event] = ()) -> Plan:
    """The plan with a ``models:/`` ``candidate.model`` replaced by the platform's model reference;
    the plan itself when its candidate names no registry model.

    The reference is the one the rollout's ``journal`` recorded (``data["model"]`` of its
    ``started`` or ``prepare.requested`` event) when there is one — a resumed rollout never asks
    the registry again: a rollback must not wait on MLflow, and an alias moved meanwhile must
    not change the candidate — else the registry's answer (:func:`resolve_model`)."""
    model = plan.candidate.model
    if registry_reference(model) is None:
        return plan
    assert model is not None
    recorded = next(
        (str(e.data["model"]) for e in journal if e.kind in RESOLVED_IN and e.data.get("model")),
        None,
    )
    reference = recorded if recorded is not None else resolve_model(model, plan)
    candidate = plan.candidate.model_copy(update={"model": reference})
    return plan.model_copy(update={"candidate": candidate})


# -------------------------------------------------------------------------------- the run


class MlflowRecorder(QueuedNotifier):
    """A listener that writes the rollout to its MLflow run (and, at the end, the outcome to the
    registry version of a ``models:/`` candidate).

    Calling it only turns the event into one JSON "write" and queues it; the writer thread does
    the MLflow calls (:meth:`_write`). ``report`` renders the Markdown report when the rollout
    ends (on the rollout's thread, where the state store is; a failure there only leaves the
    report out). ``runs`` False: only the registry version's tags, no run."""

    what = "MLflow tracking server"
    unit = "write"

    def __init__(
        self,
        plan: Plan,
        rollout_id: str,
        plan_text: str,
        uri: str,
        *,
        report: Callable[[], str] | None = None,
        runs: bool = True,
        client: Callable[[str], Any] = _client,
        **options: Unpack[DeliveryOptions],
    ) -> None:
        options.setdefault("flush_timeout", FLUSH_TIMEOUT)
        super().__init__(
            [HookSpec(uri, kind="mlflow")], rollout_id, plan.name, self._send, **options
        )
        _bounded_http()  # the environment, once, on the rollout's thread
        self.uri = uri
        self.experiment = plan.mlflow.experiment if plan.mlflow is not None else "mlrollout"
        self.plan_text = mask_credentials(plan_text)
        self.report = report
        self.runs = runs
        try:
            self.registry = registry_reference(plan.candidate.model)
        except ProviderRefused:  # never resolved, so never rolled out: nothing to tag
            self.registry = None
        self.endpoint = plan.target.endpoint
        self.params: dict[str, str] = {
            "rollout_id": rollout_id,
            "plan": plan.name,
            "strategy": plan.strategy.type,
            "provider": plan.target.provider,
            "endpoint": plan.target.endpoint,
            "candidate": plan.candidate.name,
        }
        if plan.candidate.model:
            self.params["candidate.model"] = plan.candidate.model
        self._make_client = client
        self._client: Any = None
        self._run: str | None = None
        self._version: str | None = None  # the registry version, once known
        self._phase: str | None = None  # the last phase sent
        self._baseline: str | None = None

    # ----------------------------------------------------------------- on the rollout's thread

    def __call__(self, event: Event, state: RolloutState) -> None:
        write: dict[str, Any] = {"at": int(event.at * 1000)}
        if self.runs:
            if metrics := event_metrics(event):
                write["metrics"] = metrics
                write["step"] = event.seq
            if state.phase != self._phase:
                write.setdefault("tags", {})[PHASE_TAG] = state.phase
            if state.baseline and state.baseline != self._baseline:
                write["params"] = {"baseline": state.baseline}
        elif self.registry is not None and self._phase is None:
            write["resolve"] = True  # no run keeps the version: read an alias now, not at the end
        ended = Phase(state.phase).terminal and event.kind != EventKind.FACT
        if ended:
            write["end"] = {
                "phase": state.phase,
                "status": RUN_STATUS.get(state.phase, "FINISHED"),
                "outcome": outcome_of(state),
                "reason": state.reason or "",
            }
            if self.runs and self.report is not None:
                try:
                    write["end"]["report"] = self.report()
                except Exception as exc:  # the report is a nicety: the outcome still goes
                    sys.stderr.write(
                        f"warning: the report for MLflow could not be rendered "
                        f"({type(exc).__name__}); the run gets the outcome without it\n"
                    )
        if len(write) == 1:
            return
        self._phase, self._baseline = state.phase, state.baseline or self._baseline
        body = json.dumps(write, default=str).encode()
        with self._cond:
            for hook in self._hooks:
                self._offer(hook, body, {})
            self._cond.notify_all()

    # ------------------------------------------------------------------ on the writer thread

    def _send(self, url: str, body: bytes, headers: dict[str, str], seconds: float) -> None:
        if self._client is None:
            self._client = self._make_client(self.uri)
        write: dict[str, Any] = json.loads(body)
        failed: Exception | None = None
        if write.get("resolve"):
            self._find_version()
        if self.runs:
            try:
                self._write(write)
            except Exception as exc:  # the registry's tags are still worth a try
                failed = exc
        if "end" in write and self.registry is not None:
            self._tag_version(write["end"]["outcome"])
        if failed is not None:
            raise failed

    def _open_run(self, at: int) -> str:
        """The rollout's run: found by its tag, else created with the params and the plan."""
        if self._run is not None:
            return self._run
        from mlflow.exceptions import MlflowException

        client = self._client
        experiment = client.get_experiment_by_name(self.experiment)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(self.experiment)
            except MlflowException:  # created meanwhile by another runner
                experiment = client.get_experiment_by_name(self.experiment)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
        quoted = self.rollout_id.replace("'", "\\'")
        found = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{RUN_TAG}` = '{quoted}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if found:
            run = found[0]
            self._version = self._version or run.data.params.get(VERSION_PARAM)
        else:
            run = client.create_run(
                experiment_id,
                start_time=at,
                tags={RUN_TAG: self.rollout_id, ENDPOINT_TAG: self.endpoint},
                run_name=self.rollout_id,
            )
        run_id = str(run.info.run_id)
        # Written again by each process that opens the run (same values: MLflow accepts them),
        # so a crash between creating the run and these leaves nothing out.
        from mlflow.entities import Param

        params = dict(self.params)
        if self.registry is not None:
            params[VERSION_PARAM] = self._find_version()
        client.log_batch(run_id, params=[Param(k, v[:MAX_PARAM]) for k, v in params.items()])
        client.log_text(run_id, self.plan_text, "plan.yaml")
        self._run = run_id
        return run_id

    def _find_version(self) -> str:
        if self._version is None:
            assert self.registry is not None
            name, version, alias = self.registry
            self._version = str(_registry_version(self._client, name, version, alias).version)
        return self._version

    def _write(self, write: dict[str, Any]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        client = self._client
        run_id = self._open_run(int(write["at"]))
        metrics = [
            Metric(metric_name(key), value, int(write["at"]), int(write["step"]))
            for key, value in (write.get("metrics") or {}).items()
        ]
        tags = dict(write.get("tags") or {})
        end = write.get("end")
        if end is not None:
            tags[PHASE_TAG] = end["phase"]
            tags[OUTCOME_TAG] = end["outcome"]
            tags[REASON_TAG] = str(end["reason"])[:MAX_TAG]
        params = [Param(k, str(v)[:MAX_PARAM]) for k, v in (write.get("params") or {}).items()]
        for start in range(0, max(len(metrics), 1), MAX_BATCH):
            chunk = metrics[start : start + MAX_BATCH]
            first = start == 0
            if chunk or (first and (tags or params)):
                client.log_batch(
                    run_id,
                    metrics=chunk,
                    params=params if first else [],
                    tags=[RunTag(k, str(v)) for k, v in tags.items()] if first else [],
                )
        if end is not None:
            if end.get("report") is not None:
                client.log_text(run_id, end["report"], "report.md")
            client.set_terminated(run_id, end["status"], end_time=int(write["at"]))

    def _tag_version(self, outcome: str) -> None:
        assert self.registry is not None
        name = self.registry[0]
        version = self._find_version()
        for key, value in (
            (OUTCOME_TAG, outcome),
            (RUN_TAG, self.rollout_id),
            (ENDPOINT_TAG, self.endpoint),
        ):
            self._client.set_model_version_tag(name, version, key, value)

    def _reason(self, exc: Exception) -> str:
        return _why(exc)


def recorder_from_plan(
    plan: Plan, record: RolloutRecord, store: StateStore
) -> MlflowRecorder | None:
    """The recorder of a plan with an ``mlflow`` section (a run per rollout), or with a
    ``models:/`` candidate (the registry version's tags only); None otherwise — and, with a
    warning, when no tracking server is given or the MLflow client is not installed (the rollout
    goes on unrecorded)."""
    try:
        registry = registry_reference(plan.candidate.model)
    except ProviderRefused:  # the candidate's resolution says what is wrong with it
        registry = None
    if plan.mlflow is None and registry is None:
        return None
    uri = tracking_uri(plan)
    if uri is None:
        sys.stderr.write(
            f"warning: mlflow: no tracking_uri in the plan and {TRACKING_ENV} is not set: this "
            "rollout is not recorded in MLflow; the rollout goes on\n"
        )
        return None
    if importlib.util.find_spec("mlflow") is None:
        sys.stderr.write(
            'warning: mlflow: the MLflow client is not installed (pip install "mlrollout[mlflow]"):'
            " this rollout is not recorded in MLflow; the rollout goes on\n"
        )
        return None

    def report() -> str:
        from mlrollout.plan.timeline import expand_steps
        from mlrollout.report.markdown import markdown_report

        return markdown_report(
            store.get_rollout(record.id), store.events(record.id), expand_steps(plan)
        )

    text = str(record.plan.get("yaml", ""))
    return MlflowRecorder(plan, record.id, text, uri, report=report, runs=plan.mlflow is not None)
