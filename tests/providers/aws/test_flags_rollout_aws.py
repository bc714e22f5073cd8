"""A SageMaker canary routed by a feature flag, end to end on the emulator: each step's split is
written to the flag object in (moto's) S3 before the step counts as applied, the simulated
application routes every request by that object through the real flagd evaluator (TargetVariant),
the endpoint's own weights stay on the baseline, and a bad candidate is rolled back with the flag
naming the baseline for everyone before the variant is removed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aws_plans import PLAN
from aws_traffic import BAD, GOOD

from mlrollout.engine.events import EventKind
from mlrollout.engine.runner import Runner
from mlrollout.errors import ExitCode
from mlrollout.plan.loader import load_plan

pytest.importorskip(
    "openfeature.contrib.tools.flagd.core",
    reason="the flagd evaluator is missing: pip install 'mlrollout[flagd]'",
)

from mlrollout.flags import FlagEvaluator

BUCKET, KEY = "app-flags", "flags/churn.json"
USERS = [f"user-{i:04d}" for i in range(1000)]
FLAGGED = PLAN + f"flags: {{{{provider: flagd, key: churn-model, file: s3://{BUCKET}/{KEY}}}}}\n"


class Application:
    """The application's side: before each request it evaluates the flag (sticky per user) and
    sends the request to the variant named (``TargetVariant``); here, the share of its users the
    current flag object gives each variant."""

    def __init__(self, s3: Any) -> None:
        self.s3 = s3
        self.reads = 0

    def __call__(self) -> dict[str, float] | None:
        try:
            body = self.s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read()
        except self.s3.exceptions.NoSuchKey:
            return None  # no flag yet: the endpoint's own split routes
        self.reads += 1
        evaluator = FlagEvaluator(json.loads(body))
        shares: dict[str, float] = {}
        for user in USERS:
            variant = evaluator.variant("churn-model", user, {})
            shares[variant] = shares.get(variant, 0.0) + 100.0 / len(USERS)
        return shares


def test_a_flag_routed_canary_writes_the_flag_in_lockstep_and_a_rollback_restores_it(world):
    world.s3.create_bucket(Bucket=BUCKET)
    world.original = world.endpoint()
    app = Application(world.s3)
    traffic = world.traffic(v1=GOOD, v2=BAD)
    traffic.routes = app
    seen: list[tuple[str, dict[str, Any] | None]] = []

    def lockstep(event: Any, state: Any) -> None:
        if event.kind == EventKind.SET_FLAG_APPLIED:  # the object is there before the record
            body = world.s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read()
            seen.append((event.data["sha256"], json.loads(body)))
        if event.kind == EventKind.SET_TRAFFIC_APPLIED:
            seen.append(("traffic", None))

    store_bucket = "rollout-state"
    world.s3.create_bucket(Bucket=store_bucket)
    from mlrollout_aws._aws import RetryPolicy
    from mlrollout_aws.s3state import S3StateStore

    store = S3StateStore(
        store_bucket, "state", region="us-east-1", endpoint_url=world.url,
        retry=RetryPolicy(base=0.001, cap=0.01),
    )  # fmt: skip
    runner = Runner(store, holder="runner-a", listeners=[lockstep])
    record = runner.create(load_plan(str(world.plan(FLAGGED))))
    outcome = runner.drive(record.id, clock=world.clock)

    assert outcome.exit_code == ExitCode.ROLLED_BACK, outcome.state.reason
    # the endpoint's own weights never moved onto the candidate: the flag routed its requests
    weights_calls = [e for e in store.events(record.id) if e.kind == EventKind.SET_TRAFFIC_APPLIED]
    assert all(e.data["weights"].get("v2", 0.0) == 0.0 for e in weights_calls)
    assert any(w.get("v2", 0.0) > 0 for _, w in traffic.history)  # yet v2 served users
    flags = [doc for sha, doc in seen if doc is not None]
    assert len(flags) >= 2
    first = flags[0]["flags"]["churn-model"]
    assert "fractional" in json.dumps(first["targeting"])  # the first step: a 10 % split
    last = flags[-1]["flags"]["churn-model"]
    assert last["defaultVariant"] == "v1" and "targeting" not in last  # everyone: the baseline
    # the flag was restored before the candidate variant was removed from the endpoint
    kinds = [e.kind for e in store.events(record.id)]
    restored = max(i for i, k in enumerate(kinds) if k == EventKind.SET_FLAG_APPLIED)
    finalized = kinds.index(EventKind.FINALIZE_APPLIED)
    assert restored < finalized
    variants = {v["VariantName"] for v in world.live()["ProductionVariants"]}
    assert variants == {"v1"}
    assert app.reads > 0
