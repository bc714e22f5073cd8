"""Blue-green on Azure ML through azure-ai-ml against the fake ARM: green is a new deployment at
its own instance count, traffic moves by the endpoint's traffic map, blue is deleted after
keep_previous; a green that fails its preview is deleted and blue keeps everything."""

from __future__ import annotations

from collections import Counter

from azure_world import BAD, GOOD, PLAN, rollout

from mlrollout.errors import ExitCode

BLUE_GREEN = """strategy:
  type: blue_green
  preview: 10
  pre_promotion: 10m
  post_promotion: 10m
  keep_previous: 10m
"""


def blue_green() -> str:
    """The canary plan of the other tests, with this strategy instead."""
    return PLAN[: PLAN.index("strategy:")] + BLUE_GREEN + PLAN[PLAN.index("analysis:") :]


def test_a_healthy_green_takes_all_traffic_and_blue_is_deleted_after_keep(world):
    outcome = rollout(world, candidate=GOOD, plan=blue_green())
    world.assert_ended(outcome, ExitCode.OK, "green")
    assert world.fake.applied == [
        ("deployment.put", "churn", "green", "Succeeded"),
        ("traffic", "churn", {"blue": 90, "green": 10}),
        ("traffic", "churn", {"green": 100}),
        ("deployment.delete", "churn", "blue"),
    ]


def test_a_green_that_fails_its_preview_is_deleted(world):
    outcome = rollout(world, candidate=BAD, plan=blue_green())
    world.assert_ended(outcome, ExitCode.ROLLED_BACK, "blue")


def test_green_without_an_instance_count_gets_blues_capacity(world):
    """Green at full capacity: blue runs 3 instances, the plan names no instance_count (nor a
    type), so green is deployed with 3 of blue's type, and the adapter reports them."""
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan
    from mlrollout.state.sqlite import open_sqlite_store

    world.endpoint(candidate=GOOD, capacity=3)
    text = blue_green().replace("  instance_type: Standard_DS3_v2\n  instance_count: 1\n", "")
    assert "instance_count" not in text
    store = open_sqlite_store(str(world.tmp_path / "state"))
    runner = Runner(store, holder="runner-a")
    record = runner.create(load_plan(str(world.plan(text))))
    outcome = runner.drive(record.id, clock=world.clock)
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    green = world.ws.deployments["churn"]["green"]
    assert (green["capacity"], green["instanceType"]) == (3, "Standard_DS3_v2")
    assert outcome.state.capacity == {"green": 3}  # blue retired after keep_previous


MIRRORED = """strategy:
  type: blue_green
  preview: 0
  pre_promotion: 10m
  post_promotion: 10m
  keep_previous: 10m
"""


def mirrored() -> str:
    """Blue-green judged before the switch on mirror_traffic only (preview: 0)."""
    return PLAN[: PLAN.index("strategy:")] + MIRRORED + PLAN[PLAN.index("analysis:") :]


class CallsPerStage:
    """A listener: the fake's ARM and metrics requests since the previous journal event, by the
    event's kind (operation polls left out: their number follows the poller's pace). Kept here,
    not imported from test_rollouts_e2e: other providers' test folders have a module of that
    name too."""

    def __init__(self, fake) -> None:
        self.fake = fake
        self.seen = 0
        self.by_kind: dict[str, Counter[str]] = {}

    def __call__(self, event, state) -> None:
        new = self.fake.requests[self.seen :]
        self.seen += len(new)
        calls = Counter(
            f"{method} {_what(path)}"
            for method, path, status in new
            if status < 400 and not path.startswith("/fake/operations/")
        )
        self.by_kind.setdefault(event.kind, Counter()).update(calls)


def _what(path: str) -> str:
    if path.endswith("metrics:getBatch"):
        return "metrics"
    parts = path.split("/onlineEndpoints/", 1)
    if len(parts) == 1:
        return (
            "model" if "/models/" in path else "datastore" if "/datastores" in path else "workspace"
        )
    tail = parts[1].split("/")
    if len(tail) == 1:
        return "endpoint"
    return "deployment" if len(tail) == 3 else "deployments"


def mirror_run(world, candidate):
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan
    from mlrollout.state.sqlite import open_sqlite_store

    world.endpoint(candidate=candidate, rps=40)
    store = open_sqlite_store(str(world.tmp_path / "state"))
    stages = CallsPerStage(world.fake)
    runner = Runner(store, holder="runner-a", listeners=[stages])
    record = runner.create(load_plan(str(world.plan(mirrored()))))
    outcome = runner.drive(record.id, clock=world.clock)
    print(f"\nAzure ML calls per stage (mirrored blue-green, {outcome.phase.value}):")
    for kind, calls in stages.by_kind.items():
        if calls:
            print(f"  {kind:22} {dict(sorted(calls.items()))}")
    # Each mirror change is one PUT of the endpoint (its mirror_traffic), nothing else written.
    mirror_writes = stages.by_kind["set_shadow.applied"]
    assert mirror_writes["PUT endpoint"] == 2 and mirror_writes["PUT deployment"] == 0
    return outcome, store.events(record.id)


def test_a_healthy_green_judged_on_a_50_percent_mirror_is_switched_to(world):
    outcome, events = mirror_run(world, GOOD)
    world.assert_ended(outcome, ExitCode.OK, "green")
    assert world.fake.applied == [
        ("deployment.put", "churn", "green", "Succeeded"),
        ("mirror", "churn", {"green": 50}),  # Azure ML's largest mirror, during pre-promotion
        ("mirror", "churn", {}),  # removed before the switch
        ("traffic", "churn", {"green": 100}),
        ("deployment.delete", "churn", "blue"),
    ]
    [(started, _), (stopped, _)] = world.fake.mirror_history["churn"]
    looks = [e for e in events if e.kind == "look" and started < e.at <= stopped]
    assert looks  # green judged on its mirrored copy, against blue's live requests
    errors = next(g for g in looks[-1].data["verdict"]["gates"] if g["gate"] == "errors")
    assert errors["numbers"]["candidate_requests"] > 200
    assert errors["numbers"]["candidate_requests"] / errors["numbers"]["baseline_requests"] > 0.35
    # green's only live traffic is the switch: before it, no user was served by green
    assert [w for _, w in world.fake.history["churn"] if w.get("green")] == [{"green": 100.0}]


def test_a_bad_green_fails_on_its_mirror_without_serving_a_user(world):
    outcome, events = mirror_run(world, BAD)
    world.assert_ended(outcome, ExitCode.ROLLED_BACK, "blue")
    assert world.fake.applied == [
        ("deployment.put", "churn", "green", "Succeeded"),
        ("mirror", "churn", {"green": 50}),
        ("mirror", "churn", {}),  # the mirror stops first, then green is deleted
        ("deployment.delete", "churn", "green"),
    ]
    assert all(not w.get("green") for _, w in world.fake.history["churn"])
    weights = [e.data.get("weights", {}) for e in events if e.kind.endswith(".applied")]
    assert all(w.get("green", 0.0) == 0.0 for w in weights)
