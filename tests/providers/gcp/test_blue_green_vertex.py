"""Blue-green on Vertex AI through the real client against the fake: green is a new deployed
model with its own replicas (DeployModel), the split moves by traffic_split, blue is undeployed
after keep_previous; a green that fails its preview is undeployed and blue keeps everything."""

from __future__ import annotations

from gcp_world import BAD, GOOD, PLAN, applied, rollout

from mlrollout.errors import ExitCode

BLUE_GREEN = """\
    strategy:
      type: blue_green
      preview: 10
      pre_promotion: 5m
      post_promotion: 5m
      keep_previous: 10m
"""


def plan(world):
    """The canary plan of the other tests, with this strategy instead."""
    head, tail = PLAN[: PLAN.index("    strategy:")], PLAN[PLAN.index("    analysis:") :]
    return world.plan(head + BLUE_GREEN + tail)


def test_a_healthy_green_takes_all_traffic_and_blue_is_undeployed_after_keep(world):
    outcome = rollout(world, candidate=GOOD, plan=plan(world))
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    assert world.live() == {"v2": 100.0}
    assert [what for what, _ in applied(world)] == [
        "DeployModel",
        "UpdateEndpoint",  # the 10 % preview
        "UpdateEndpoint",  # the switch
        "UndeployModel",  # blue, after keep_previous
    ]
    preview, switch = applied(world)[1][1]["split"], applied(world)[2][1]["split"]
    assert preview["1001"] == 90 and sorted(preview.values()) == [10, 90]
    green = next(k for k, v in preview.items() if v == 10)
    assert {k: v for k, v in switch.items() if v} == {green: 100}  # blue at 0 %, still deployed


def test_a_green_that_fails_its_preview_is_undeployed(world):
    outcome = rollout(world, candidate=BAD, plan=plan(world))
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert world.live() == {"v1": 100.0}
    assert [what for what, _ in applied(world)] == [
        "DeployModel",
        "UpdateEndpoint",
        "UpdateEndpoint",
        "UndeployModel",
    ]


def test_green_without_a_capacity_gets_blues_replicas_and_machine_type(world):
    """Green at full capacity: blue runs 3 replicas of n1-highmem-8; a plan naming neither
    instance_count nor instance_type deploys green with 3 (min = max) of the same machine, and
    the adapter reports each fleet's replica count (``status`` shows capacity from it)."""
    from mlrollout_gcp.spec import VertexProviderSpec

    from mlrollout.contracts import ProviderContext
    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan
    from mlrollout.state.sqlite import SqliteStateStore

    world.endpoint(replicas=3, machine="n1-highmem-8")
    world.traffic(v1=GOOD, v2=GOOD)
    text = plan(world).read_text().replace("  instance_type: n1-standard-4\n", "")
    text = text.replace("  instance_count: 1\n", "")
    path = world.tmp_path / "no-capacity.yaml"
    path.write_text(text)
    loaded = load_plan(str(path))
    assert "instance_count" not in loaded.plan.candidate.model_fields_set
    endpoint, _ = VertexProviderSpec.open(
        ProviderContext(plan=loaded.plan, clock=world.clock, store=None)  # type: ignore[arg-type]
    )
    state = endpoint.prepare(loaded.plan.candidate, "v1")
    assert [(v.name, v.instance_type, v.instance_count) for v in state.variants] == [
        ("v1", "n1-highmem-8", 3),
        ("v2", "n1-highmem-8", 3),
    ]
    [(_, body, _)] = [b for b in world.vertex.bodies if b[0] == "DeployModel"]
    assert body["deployedModel"]["dedicatedResources"] == {
        "machineSpec": {"machineType": "n1-highmem-8"},
        "minReplicaCount": 3,
        "maxReplicaCount": 3,
    }
    store = SqliteStateStore(world.tmp_path / "state.db")
    runner = Runner(store, holder="runner-a")
    record = runner.create(loaded)
    outcome = runner.drive(record.id, clock=world.clock)
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    assert world.live() == {"v2": 100.0}
    assert outcome.state.capacity == {"v2": 3}
