"""The Blob Storage state store through ``azure-storage-blob`` against a real Azurite (npm package
``azurite``, started here on 127.0.0.1 on a free port, with its well-known development account):
the shared state-store contract, then what is Azure's own (the URLs, the connection string kept
secret, a missing container, a lost answer).

Azurite is looked up in the checkout's ``.peers/node_modules/.bin`` (``.ci/run`` installs it
there) and on ``PATH``; missing, these tests skip naming the package, or fail under
``MLROLLOUT_REQUIRE_PEERS=1``."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mlrollout_azure.blobstate import CONNECTION_STRING_ENV, BlobStateStore, open_blob_store

from mlrollout.errors import StateUnavailable
from mlrollout.retry import RetryPolicy
from mlrollout.state.open import open_store
from mlrollout.testing.peers import free_port, local_server, missing_peer
from mlrollout.testing.state_contract import (
    Corrupted,
    ObjectStoreContract,
    Wall,
    record,
)

ROOT = Path(__file__).resolve().parents[3]
ACCOUNT = "devstoreaccount1"
# Azurite's published development key (the same in every Azurite): not a secret.
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
CONTAINER = "rollouts"
FAST = RetryPolicy(base=0.001, cap=0.01)


def azurite_binary() -> str:
    local = ROOT / ".peers" / "node_modules" / ".bin" / "azurite-blob"
    found = str(local) if local.exists() else shutil.which("azurite-blob")
    if found is None:
        missing_peer(
            "azurite not installed: npm install --prefix .peers azurite@3.35.0 "
            "(npm package `azurite`; .ci/run does it)"
        )
    assert found is not None
    return found


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Azurite blob service; yields its connection string."""
    from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

    binary = azurite_binary()
    root = tmp_path_factory.mktemp("azurite")
    port = free_port()
    url = f"http://127.0.0.1:{port}/{ACCOUNT}"
    argv = [
        binary, "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(root),
        "--skipApiVersionCheck", "--disableTelemetry", "--silent",
    ]  # fmt: skip
    # ready: a signed "list containers" answers 200 (an unsigned request is refused)
    sas = generate_account_sas(
        ACCOUNT,
        DEV_KEY,
        ResourceTypes(service=True),
        AccountSasPermissions(list=True),
        expiry=datetime.now(UTC) + timedelta(hours=2),
    )
    with local_server(argv, f"{url}?comp=list&{sas}", log=root / "azurite.log"):
        yield (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={DEV_KEY};"
            f"BlobEndpoint={url};"
        )


@pytest.fixture
def service(azurite: str) -> Iterator[Any]:
    """The test's own client, and a fresh container for each test."""
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(azurite)
    container = client.get_container_client(CONTAINER)
    if container.exists():
        container.delete_container()
        container = client.get_container_client(CONTAINER)
    container.create_container()
    yield client
    client.close()


def make(
    service: Any, azurite: str, wall: Callable[[], float], prefix: str = "team/prod"
) -> BlobStateStore:
    del service  # only to have the container made first
    return BlobStateStore(
        ACCOUNT, CONTAINER, prefix, connection_string=azurite, wall=wall, retry=FAST
    )


class TestBlobStateContract(ObjectStoreContract):
    @pytest.fixture
    def make_store(self, service: Any, azurite: str, wall: Wall) -> Callable[[], BlobStateStore]:
        return lambda: make(service, azurite, wall)

    @pytest.fixture
    def corrupt_event(self, service: Any) -> Callable[[Any, str], Corrupted]:
        container = service.get_container_client(CONTAINER)

        def corrupt(store: Any, rollout_id: str) -> Corrupted:
            names = [b.name for b in container.list_blobs(name_starts_with=store.prefix)]
            name = next(n for n in names if rollout_id in n and "/events/" in n)
            blob = container.get_blob_client(name)
            broken = Corrupted(name[len(store.prefix) :], lambda: blob.download_blob().readall())
            blob.upload_blob(broken.garbage, overwrite=True)
            return broken

        return corrupt


# ---------------------------------------------------------------------------- Azure's own


def test_azurite_enforces_etag_conditions(service: Any, azurite: str) -> None:
    store = make(service, azurite, Wall())
    key = store.prefix + "probe.json"
    assert store._put_object(key, b"{}", if_match=None, if_none_match=True)
    assert not store._put_object(key, b"{}", if_match=None, if_none_match=True)  # 409
    found = store._get_object(key)
    assert found is not None
    assert store._put_object(key, b'{"a":1}', if_match=found[1], if_none_match=False)
    assert not store._put_object(key, b'{"b":2}', if_match=found[1], if_none_match=False)  # 412
    assert store._get_object(key) is not None
    assert store._get("team/prod/probe.json") == ({"a": 1}, store._get_object(key)[1])  # type: ignore[index]
    store.close()


def test_opened_from_both_urls_through_the_state_entry_points(
    service: Any, azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(service, azurite, Wall()).create_rollout(record())
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite)
    for url in (
        f"az://{ACCOUNT}/{CONTAINER}/team/prod",
        f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}/team/prod/",
    ):
        opened = open_store(url)
        assert isinstance(opened, BlobStateStore)
        assert opened.location == f"az://{ACCOUNT}/{CONTAINER}/team/prod/"
        assert opened.get_rollout("churn").id == "churn-abc123"
        opened.close()
    for bad, words in (
        ("https://example.com/c/p", "not a Blob Storage state location"),
        (f"az://{ACCOUNT}", "names an account and a container"),
        (f"az://{ACCOUNT}/c/p?sig=abc", "takes no query"),
    ):
        with pytest.raises(StateUnavailable, match=words):
            open_blob_store(bad)


def test_the_connection_string_never_appears_in_errors(
    service: Any, azurite: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_key = "QUJD" * 22
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite.replace(DEV_KEY, wrong_key))
    store = open_store(f"az://{ACCOUNT}/{CONTAINER}/p")
    with pytest.raises(StateUnavailable) as denied:
        store.list_rollouts()
    store.close()
    monkeypatch.setenv(CONNECTION_STRING_ENV, "AccountName=x;AccountKey=" + wrong_key)
    with pytest.raises(StateUnavailable) as other_account:
        open_store(f"az://{ACCOUNT}/{CONTAINER}/p")
    monkeypatch.setenv(CONNECTION_STRING_ENV, "not a connection string " + wrong_key)
    with pytest.raises(StateUnavailable) as invalid:
        open_store(f"az://{ACCOUNT}/{CONTAINER}/p")
    for caught in (denied, other_account, invalid):
        text = f"{caught.value.message} {caught.value.hint} {caught.value!r}"
        assert wrong_key not in text and DEV_KEY not in text
        assert caught.value.__cause__ is None or wrong_key not in str(caught.value.__cause__)
    assert "denied (403 AuthorizationFailure)" in denied.value.message
    assert CONNECTION_STRING_ENV in other_account.value.message


def test_a_missing_container_is_state_unavailable(service: Any, azurite: str) -> None:
    store = BlobStateStore(ACCOUNT, "no-such-container", connection_string=azurite, retry=FAST)
    with pytest.raises(StateUnavailable, match="does not exist"):
        store.list_rollouts()
    with pytest.raises(StateUnavailable, match="does not exist"):
        store.get_value("a", "b")
    with pytest.raises(StateUnavailable, match="does not exist"):
        store.put_value("a", "b", {}, lease=None)
    store.close()


def test_a_lost_write_answer_is_not_applied_twice(service: Any, azurite: str) -> None:
    """The write reaches Azurite and is applied; its answer is dropped on the way back (a
    pipeline policy of the real client raises as a lost connection would)."""
    from azure.core.exceptions import ServiceResponseError
    from azure.core.pipeline.policies import SansIOHTTPPolicy
    from azure.storage.blob import BlobServiceClient

    lose: list[int] = [0]

    class LoseAnswers(SansIOHTTPPolicy):  # type: ignore[type-arg]
        def on_response(self, request: Any, response: Any) -> None:
            if lose[0] and request.http_request.method == "PUT":
                lose[0] -= 1
                raise ServiceResponseError("connection reset (test)")

    client = BlobServiceClient.from_connection_string(
        azurite, retry_total=0, per_call_policies=[LoseAnswers()]
    )
    store = BlobStateStore(ACCOUNT, CONTAINER, "p", service=client, retry=FAST)
    store.create_rollout(record())
    lose[0] = 2  # the event, then the record's commit
    store.append_event("churn-abc123", "a", {}, at=1.0, lease=None)
    lease = store.acquire_lease("azureml:e", "runner-a", ttl=60)
    lose[0] = 1
    assert store.renew_lease(lease, ttl=60).token == 1
    assert [e.kind for e in store.events("churn-abc123")] == ["a"]
    assert store.get_rollout("churn-abc123").last_seq == 1
    client.close()


def test_the_cli_reads_rollouts_from_blob_state(
    service: Any, azurite: str, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from mlrollout.cli.app import main

    make(service, azurite, Wall()).create_rollout(record("churn-aaa111", 1.0))
    monkeypatch.setenv(CONNECTION_STRING_ENV, azurite)
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "--state",
                f"az://{ACCOUNT}/{CONTAINER}/team/prod",
                "--debug",
                "list",
                "--output",
                "json",
            ]
        )
    assert exit_.value.code == 0
    out, err = capsys.readouterr()
    assert [r["id"] for r in json.loads(out)] == ["churn-aaa111"]
    assert DEV_KEY not in out + err


def test_the_role_definition_adds_the_state_containers_data_actions() -> None:
    from mlrollout_azure import roles

    from mlrollout.plan.loader import load_plan

    plan = load_plan(ROOT / "plans" / "azureml-canary.yaml").plan
    plain = roles.role_definition(plan)
    assert plain["DataActions"] == []
    for other in ("s3://b/p", "https://example.com/c/p", ".mlrollout", None):
        assert roles.role_definition(plan, other) == plain
    for state in (
        "az://teamstate/rollouts/prod",
        "https://teamstate.blob.core.windows.net/rollouts/prod",
    ):
        role = roles.role_definition(plan, state)
        assert role["Actions"] == plain["Actions"]
        assert role["DataActions"] == sorted(roles.STATE_DATA_ACTIONS)
        assert role["AssignableScopes"][0] == plain["AssignableScopes"][0]
        assert role["AssignableScopes"][-1].endswith(
            "/storageAccounts/teamstate/blobServices/default/containers/rollouts"
        )


def test_an_unreachable_service_is_state_unavailable(azurite: str) -> None:
    port = free_port()
    elsewhere = (
        azurite.split("BlobEndpoint=")[0] + f"BlobEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )
    store = BlobStateStore(
        ACCOUNT, CONTAINER, connection_string=elsewhere, retry=RetryPolicy(attempts=2, base=0.001)
    )
    with pytest.raises(StateUnavailable, match="could not reach Blob Storage") as caught:
        store.list_rollouts()
    assert DEV_KEY not in str(caught.value)
    store.close()
