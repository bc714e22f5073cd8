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
