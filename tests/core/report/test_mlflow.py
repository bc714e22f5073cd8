"""Each rollout an MLflow run, and ``models:/`` candidates through the Model Registry, against a
real MLflow tracking server (``mlflow server``, SQLite backend, served artifacts, on 127.0.0.1:
the peer :func:`mlrollout.testing.peers.mlflow_server`), through the real client
(``mlflow-skinny``). Sandbox rollouts on virtual time: nothing sleeps."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlrollout.clock import VirtualClock
from mlrollout.engine.engine import RolloutState
from mlrollout.engine.events import LOOK_KINDS
from mlrollout.engine.runner import Runner, RunOutcome, plan_of
from mlrollout.errors import ProviderRefused, ProviderUnavailable
from mlrollout.plan.loader import parse_plan
from mlrollout.report.mlflow import (
    MlflowRecorder,
    mask_credentials,
    metric_name,
    recorder_from_plan,
    registry_reference,
    resolve_model,
    resolved_candidate,
)
from mlrollout.state.base import Event
from mlrollout.state.sqlite import SqliteStateStore
from mlrollout.testing.peers import free_port, mlflow_server

pytest.importorskip("mlflow", reason="the MLflow client: pip install 'mlrollout[mlflow]'")

ROOT = Path(__file__).resolve().parents[3]
START = 1_800_000_000.0
EXPERIMENT = "churn-rollouts"


def plan_text(uri: str, *, model: str = "models:/churn/2", bad: bool = True) -> str:
    """The sandbox canary of ``plans/local-canary-bad.yaml`` (v7 has 3x v6's error rate, rolled
    back) or, ``bad`` False, one whose candidate is as good (promoted), recorded to ``uri``."""
    text = (ROOT / "plans" / "local-canary-bad.yaml").read_text()
    text = text.replace("model: churn-model-v7", f'model: "{model}"')
    if not bad:
        text = text.replace("v7: {error_rate: 0.03", "v7: {error_rate: 0.01")
    return text + f'mlflow: {{tracking_uri: "{uri}", experiment: {EXPERIMENT}}}\n'


class Rollout:
    """A sandbox rollout driven by the real runner, which attaches the plan's MLflow recorder
    (one per process: :meth:`drive` makes a new runner, hence a new recorder, each time)."""

    def __init__(self, tmp_path: Path, text: str) -> None:
        self.store = SqliteStateStore(tmp_path / "state.db")
        self.record = Runner(self.store).create(parse_plan(text, "plan.yaml"))
        self.clock = VirtualClock(START)

    def drive(self, max_ticks: int | None = None) -> RunOutcome:
        # the runner attaches the plan's recorder itself, and closes it at the end of the drive
        return Runner(self.store).drive(self.record.id, clock=self.clock, max_ticks=max_ticks)

    def looks(self) -> list[int]:
        return [e.seq for e in self.store.events(self.record.id) if e.kind in LOOK_KINDS]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server)


@pytest.fixture(scope="module")
def churn(client: Any) -> dict[str, str]:
    """The registered model ``churn``: version 1 with an S3 source (alias ``champion``), version
    2 tagged with the sandbox's model name, version 3 a run's model (source ``runs:/...``)."""
    client.create_registered_model("churn")
    v1 = client.create_model_version("churn", "s3://models/churn/v1/model.tar.gz")
    v2 = client.create_model_version(
        "churn", "s3://models/churn/v2/model.tar.gz", tags={"mlrollout.local.model": "churn-v2"}
    )
    experiment = client.create_experiment("training")
    run = client.create_run(experiment)
    client.log_text(run.info.run_id, "weights", "model/MLmodel")
    v3 = client.create_model_version(
        "churn", f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    client.set_registered_model_alias("churn", "champion", v1.version)
    return {"v1": v1.version, "v2": v2.version, "v3": v3.version, "run": run.info.run_id}


def runs_of(client: Any, rollout_id: str) -> list[Any]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return list(
        client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`mlrollout.rollout_id` = '{rollout_id}'",
        )
    )


def artifact(client: Any, run_id: str, path: str, tmp_path: Path) -> str:
    local = client.download_artifacts(run_id, path, str(tmp_path))
    return Path(local).read_text()


# ------------------------------------------------------------------------------- the run


def test_a_rollout_is_one_run_with_its_looks_params_plan_report_and_outcome(
    tmp_path: Path,
    server: str,
    client: Any,
    churn: dict[str, str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    text = plan_text(server)
    rollout = Rollout(tmp_path, text)
    outcome = rollout.drive()
    assert outcome.phase.value == "rolled_back"
    assert "View run" not in capfd.readouterr().out  # stdout is mlrollout's (--output json)

    [run] = runs_of(client, rollout.record.id)
    run_id = run.info.run_id
    assert run.info.status == "FAILED"
    assert run.info.start_time == int(START * 1000)
    params = run.data.params
    assert params["strategy"] == "canary"
    assert params["provider"] == "local"
    assert params["endpoint"] == "churn-scoring"
    assert params["candidate"] == "v7"
    assert params["baseline"] == "v6"
    assert params["candidate.model"] == "models:/churn/2"
    assert params["candidate.registry_version"] == churn["v2"]
    tags = run.data.tags
    assert tags["mlrollout.outcome"] == "rolled_back"
    assert tags["mlrollout.phase"] == "rolled_back"
    assert tags["mlrollout.reason"] == outcome.state.reason
    assert tags["mlrollout.reason"].startswith("errors: candidate error rate")

    # one point per look, its step the look's seq in the journal, each side of each gate
    looks = rollout.looks()
    assert len(looks) >= 3
    for name in ("errors.candidate", "errors.baseline", "p99.candidate"):
        history = client.get_metric_history(run_id, name)
        assert [m.step for m in history] == looks, name
    last = rollout.store.events(rollout.record.id, after=looks[-1] - 1)[0]
    [errors] = [g for g in last.data["verdict"]["gates"] if g["gate"] == "errors"]
    final = client.get_metric_history(run_id, "errors.candidate")[-1]
    assert final.value == pytest.approx(errors["numbers"]["candidate"])
    assert final.timestamp == int(last.at * 1000)
    weights = client.get_metric_history(run_id, "weight.v7")
    assert [m.value for m in weights] == [0.0, 10.0, 0.0]  # prepared, 10 %, rolled back

    assert artifact(client, run_id, "plan.yaml", tmp_path) == text
    report = artifact(client, run_id, "report.md", tmp_path)
    assert rollout.record.id in report and "rolled back" in report.lower()

    # the registry version carries the outcome
    version = client.get_model_version("churn", churn["v2"])
    assert version.tags["mlrollout.outcome"] == "rolled_back"
    assert version.tags["mlrollout.rollout_id"] == rollout.record.id
    assert version.tags["mlrollout.endpoint"] == "churn-scoring"


def test_a_promoted_rollout_by_alias_tags_the_version_the_alias_named(
    tmp_path: Path, server: str, client: Any, churn: dict[str, str]
) -> None:
    rollout = Rollout(tmp_path, plan_text(server, model="models:/churn@champion", bad=False))
    outcome = rollout.drive()
    assert outcome.phase.value == "succeeded"
    [run] = runs_of(client, rollout.record.id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlrollout.outcome"] == "promoted"
    assert run.data.params["candidate.registry_version"] == churn["v1"]
    version = client.get_model_version("churn", churn["v1"])
    assert version.tags["mlrollout.outcome"] == "promoted"
    assert version.tags["mlrollout.rollout_id"] == rollout.record.id


def test_a_registry_candidate_without_an_mlflow_section_gets_its_outcome_and_no_run(
    tmp_path: Path,
    server: str,
    client: Any,
    churn: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    v4 = client.create_model_version("churn", "s3://models/churn/v4/model.tar.gz").version
    client.set_registered_model_alias("churn", "staging", v4)
    text = plan_text(server, model="models:/churn@staging").split("mlflow:")[0]
    rollout = Rollout(tmp_path, text)
    assert rollout.drive().phase.value == "rolled_back"
    version = client.get_model_version("churn", v4)
    assert version.tags["mlrollout.outcome"] == "rolled_back"
    assert version.tags["mlrollout.rollout_id"] == rollout.record.id
    experiment = client.get_experiment_by_name("mlrollout")
    if experiment is not None:  # another test may have made it; this rollout has no run in it
        found = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`mlrollout.rollout_id` = '{rollout.record.id}'",
        )
        assert not found


def test_a_resumed_rollout_continues_the_same_run_and_a_replay_logs_nothing_twice(
    tmp_path: Path, server: str, client: Any, churn: dict[str, str]
) -> None:
    rollout = Rollout(tmp_path, plan_text(server))
    first = rollout.drive(max_ticks=8)  # a runner that stops mid-analysis ("crashed")
    assert not first.phase.terminal
    seen = rollout.looks()
    assert seen
    [run] = runs_of(client, rollout.record.id)
    assert run.info.status == "RUNNING"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "errors.candidate")] == seen

    # another process resumes it (a new runner, a new recorder) and replays the last look
    assert rollout.drive().phase.value == "rolled_back"
    [again] = runs_of(client, rollout.record.id)
    assert again.info.run_id == run.info.run_id
    replay = MlflowRecorder(plan_of(rollout.record), rollout.record.id, "", server)
    events = rollout.store.events(rollout.record.id)
    for event in events:  # the whole journal again, as a listener would see it replayed
        if event.kind in LOOK_KINDS or event.kind.endswith(".applied"):
            replay(event, RolloutState(phase="progressing", baseline="v6", candidate="v7"))
    assert replay.close() == 0
    history = client.get_metric_history(run.info.run_id, "errors.candidate")
    assert [m.step for m in history] == rollout.looks()  # each look once, in order
    weights = client.get_metric_history(run.info.run_id, "weight.v7")
    assert [m.value for m in weights] == [0.0, 10.0, 0.0]  # each change once


def test_a_tracking_server_that_is_down_never_fails_or_slows_the_rollout(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rollout = Rollout(tmp_path, plan_text(down, model="churn-model-v7"))
    began = time.monotonic()
    outcome = rollout.drive()
    took = time.monotonic() - began
    assert outcome.phase.value == "rolled_back"
    assert outcome.exit_code == 1
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "MLflow tracking server" in line]
    assert warnings[0].startswith(f"warning: MLflow tracking server {down} failed (")
    assert "the rollout goes on" in warnings[0]
    assert sum("failed (" in line for line in warnings) == 1  # once, not per write
    assert took < 30, took  # connection refused: each write fails at once


def test_a_tracking_server_that_never_answers_holds_up_the_end_only_for_the_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """A server that accepts connections and never answers (a black hole): each write gives up
    after MLflow's HTTP timeout on the writer thread; the rollout decides as fast as ever and
    its end waits only for the bounded flush."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)  # never accepted: the client's reads time out
        uri = f"http://127.0.0.1:{hole.getsockname()[1]}"
        # the plan names no server (the runner attaches nothing): this recorder, with a flush
        # limit of one second, is the only one
        text = plan_text(uri, model="churn-model-v7").split("mlflow:")[0]
        rollout = Rollout(tmp_path, text)
        recorder = MlflowRecorder(
            plan_of(rollout.record), rollout.record.id, "", uri, flush_timeout=1.0
        )
        runner = Runner(rollout.store, listeners=[recorder])
        began = time.monotonic()
        outcome = runner.drive(rollout.record.id, clock=rollout.clock)
        decided = time.monotonic() - began
        lost = recorder.close()
        ended = time.monotonic() - began
    assert outcome.phase.value == "rolled_back"
    assert decided < 5, decided  # the writes wait on their own thread, not the rollout's
    assert ended < decided + 3, ended  # the flush gives up after its second
    assert lost >= 1
    err = capfd.readouterr().err
    assert f"warning: MLflow tracking server {uri}: {lost} of " in err


def test_without_a_tracking_server_the_rollout_goes_on_unrecorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    text = plan_text("x").replace('mlflow: {tracking_uri: "x", ', "mlflow: {")
    store = SqliteStateStore(tmp_path / "state.db")
    record = Runner(store).create(parse_plan(text, "plan.yaml"))
    assert recorder_from_plan(plan_of(record), record, store) is None
    assert "MLFLOW_TRACKING_URI is not set" in capsys.readouterr().err


# ------------------------------------------------------------------------------- registry


def test_models_uris_resolve_to_the_platforms_model_reference(
    server: str, churn: dict[str, str]
) -> None:
    plan = parse_plan(plan_text(server, model="models:/churn/2"), "plan.yaml").plan
    assert resolve_model("models:/churn/2", plan) == "churn-v2"  # mlrollout.local.model
    assert resolve_model("models:/churn@champion", plan) == "s3://models/churn/v1/model.tar.gz"
    # a run's model whose files only MLflow serves (mlflow-artifacts:): no platform loads that
    with pytest.raises(ProviderRefused) as served:
        resolve_model(f"models:/churn/{churn['v3']}", plan)
    assert "mlflow-artifacts:/" in served.value.message and "/model" in served.value.message
    assert served.value.hint and "mlrollout.local.model" in served.value.hint
    assert resolved_candidate(plan).candidate.model == "churn-v2"
    assert resolved_candidate(plan).candidate.name == "v7"
    plain = parse_plan(plan_text(server, model="churn-model-v7"), "plan.yaml").plan
    assert resolved_candidate(plain) is plain
    # a resumed rollout takes what its journal recorded, without asking the registry
    started = Event("r", 1, START, "started", {"baseline": "v6", "model": "churn-v2-built"})
    down = parse_plan(plan_text(f"http://127.0.0.1:{free_port()}"), "plan.yaml").plan
    assert resolved_candidate(down, [started]).candidate.model == "churn-v2-built"


def test_a_registry_reference_that_does_not_resolve_is_a_clear_error(
    server: str, churn: dict[str, str]
) -> None:
    plan = parse_plan(plan_text(server), "plan.yaml").plan
    with pytest.raises(ProviderRefused) as missing:
        resolve_model("models:/churn/99", plan)
    assert "get_model_version('churn', '99')" in missing.value.message
    assert missing.value.hint and "version" in missing.value.hint
    with pytest.raises(ProviderRefused, match="get_model_version_by_alias"):
        resolve_model("models:/churn@nobody", plan)
    with pytest.raises(ProviderRefused) as malformed:
        registry_reference("models:/churn/latest/extra")
    assert malformed.value.hint == "write models:/NAME/VERSION or models:/NAME@ALIAS"
    down = parse_plan(plan_text(f"http://127.0.0.1:{free_port()}"), "plan.yaml").plan
    with pytest.raises(ProviderUnavailable) as unreachable:
        resolve_model("models:/churn/2", down)
    assert "did not answer" in unreachable.value.message
    assert unreachable.value.exit_code == 6


# ----------------------------------------------------------------------------- fast ones


def test_names_are_sanitised_and_credentials_masked() -> None:
    assert metric_name("p99/eu", "candidate") == "p99_eu.candidate"
    assert metric_name("error rate", "baseline") == "error rate.baseline"
    assert metric_name("..x") == "x"
    assert mask_credentials("uri: https://bob:pw@mlflow:5000/x") == "uri: https://***@mlflow:5000/x"
    assert registry_reference("models:/churn/7") == ("churn", "7", None)
    assert registry_reference("models:/churn@prod") == ("churn", None, "prod")
    assert registry_reference("churn-model-v7") is None


def test_a_file_store_gets_the_same_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same recorder against MLflow's local file store (no server; in maintenance mode in
    MLflow 3, allowed by MLFLOW_ALLOW_FILE_STORE): ``tracking_uri: file:///...``."""
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    rollout = Rollout(tmp_path, plan_text(uri, model="churn-model-v7"))
    assert rollout.drive().phase.value == "rolled_back"
    store = MlflowClient(tracking_uri=uri)
    [run] = runs_of(store, rollout.record.id)
    assert run.data.tags["mlrollout.outcome"] == "rolled_back"
    history = store.get_metric_history(run.info.run_id, "errors.candidate")
    assert [m.step for m in history] == rollout.looks()


def test_importing_the_recorder_imports_no_mlflow() -> None:
    code = "import sys, mlrollout.report.mlflow; print('mlflow' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def test_a_missing_server_peer_skips_naming_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlrollout.testing import peers

    monkeypatch.setattr(peers, "PEERS", tmp_path / "none")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MLROLLOUT_REQUIRE_PEERS", raising=False)
    with pytest.raises(pytest.skip.Exception, match="pip install mlflow"), mlflow_server(tmp_path):
        pass
    monkeypatch.setenv("MLROLLOUT_REQUIRE_PEERS", "1")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_PEERS=1"), mlflow_server(tmp_path):
        pass
