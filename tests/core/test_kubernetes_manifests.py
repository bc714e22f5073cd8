"""`deploy/kubernetes/` (issue 21, part 4): every manifest is schema-valid (``kubernetes-validate``,
strict: an unknown or misspelt field fails), every command line in them parses with mlrollout's
own CLI parser (a renamed option fails here, not in a cluster at 3 a.m.), and the pods are what
the README promises: non-root, read-only root filesystem, resource requests, a grace period that
lets the watcher finish its ticks and hand its leases back. No cluster needed."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml

from mlrollout.cli.app import app
from mlrollout.engine.runner import LEASE_TTL
from mlrollout.testing.peers import missing_peer

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "kubernetes"
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
#: The oldest Kubernetes minor still in the clouds' standard support, and the newest schema.
VERSIONS = ("1.30", "1.37")


def documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def by_kind(kind: str) -> dict[str, Any]:
    [doc] = [d for _, d in documents() if d["kind"] == kind]
    return doc


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def validator() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        missing_peer("kubernetes-validate not installed: pip install kubernetes-validate")
    return kubernetes_validate


def parse_cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """``argv`` (without the program name) parsed by the CLI's own parser, as `mlrollout` would
    before running anything: the command's name and its parameters. A usage error raises."""
    group = typer.main.get_command(app)
    ctx = group.make_context("mlrollout", list(argv))
    protected = getattr(ctx, "_protected_args", None) or getattr(ctx, "protected_args", [])
    name, *rest = [*protected, *ctx.args]
    command = group.get_command(ctx, name)  # type: ignore[attr-defined]
    if command is None:
        raise ValueError(f"no command {name!r}")
    sub = command.make_context(name, rest, parent=ctx)
    return name, {**ctx.params, **sub.params}


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFESTS]
    assert {d["kind"] for _, d in documents()} == {"ServiceAccount", "CronJob", "Deployment"}


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_schema_valid_strictly(version: str) -> None:
    kv = validator()
    for name, doc in documents():
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as exc:  # names the field
            pytest.fail(f"{name} ({doc['kind']}) is not valid for Kubernetes {version}: {exc}")


def test_the_schema_check_catches_a_misspelt_field() -> None:
    kv = validator()
    doc = copy.deepcopy(by_kind("Deployment"))
    spec = pod_spec(doc)
    spec["terminationGracePeriodSecond"] = spec.pop("terminationGracePeriodSeconds")
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, VERSIONS[-1], strict=True)


def test_the_cronjob_runs_one_reconcile_pass_every_minute_on_object_storage() -> None:
    cron = by_kind("CronJob")
    assert cron["spec"]["schedule"] == "* * * * *"
    [container] = pod_spec(cron)["containers"]
    name, params = parse_cli(container["args"])
    assert name == "reconcile" and params["watch"] is False
    assert params["state"].split("://")[0] in ("s3", "gs", "az")


def test_the_deployment_watches_with_four_workers() -> None:
    deployment = by_kind("Deployment")
    [container] = pod_spec(deployment)["containers"]
    name, params = parse_cli(container["args"])
    assert name == "reconcile"
    assert params["watch"] is True and params["workers"] == 4
    assert params["state"].split("://")[0] in ("s3", "gs", "az")


def test_the_cli_parser_refuses_what_a_manifest_must_not_say() -> None:
    from typer._click.exceptions import UsageError

    args = by_kind("Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    with pytest.raises(UsageError):
        parse_cli([a.replace("--workers", "--worker") for a in args])
    with pytest.raises(UsageError):
        parse_cli([a.replace("4", "0") if a == "4" else a for a in args])  # --workers min 1


@pytest.mark.parametrize("kind", ["CronJob", "Deployment"])
def test_the_pods_are_locked_down_and_shut_down_gracefully(kind: str) -> None:
    spec = pod_spec(by_kind(kind))
    assert spec["serviceAccountName"] == by_kind("ServiceAccount")["metadata"]["name"]
    assert spec["automountServiceAccountToken"] is False  # mlrollout never calls the k8s API
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    # longer than Kubernetes' default 30 s: the tick in flight is finished, the lease handed back
    assert LEASE_TTL <= spec["terminationGracePeriodSeconds"] <= 3 * LEASE_TTL
    [container] = spec["containers"]
    ctx = container["securityContext"]
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    # the only writable place: a scratch volume for HOME (SDK caches)
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    [mount] = container["volumeMounts"]
    assert env["HOME"] == mount["mountPath"]
    assert {v["name"] for v in spec["volumes"]} == {mount["name"]}


def test_the_readme_notes_each_clouds_workload_identity() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for words in (
        "IRSA",
        "eks.amazonaws.com/role-arn",
        "Workload Identity",
        "iam.gke.io",
        "azure.workload.identity/client-id",
        "terminationGracePeriodSeconds",
    ):
        assert words in readme, words
    annotations = by_kind("ServiceAccount")["metadata"]["annotations"]
    assert "eks.amazonaws.com/role-arn" in annotations
