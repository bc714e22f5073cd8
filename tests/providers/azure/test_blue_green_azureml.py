"""Blue-green on Azure ML through azure-ai-ml against the fake ARM: green is a new deployment at
its own instance count, traffic moves by the endpoint's traffic map, blue is deleted after
keep_previous; a green that fails its preview is deleted and blue keeps everything."""

from __future__ import annotations

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
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    assert world.live()["traffic"] == {"green": 100}
    assert world.deployments() == ["green"]
    assert world.fake.applied == [
        ("deployment.put", "churn", "green", "Succeeded"),
        ("traffic", "churn", {"blue": 90, "green": 10}),
        ("traffic", "churn", {"green": 100}),
        ("deployment.delete", "churn", "blue"),
    ]


def test_a_green_that_fails_its_preview_is_deleted(world):
    outcome = rollout(world, candidate=BAD, plan=blue_green())
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert world.live()["traffic"] == {"blue": 100}
    assert world.deployments() == ["blue"]
