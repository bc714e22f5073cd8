"""Blue-green on SageMaker, self-driven, through boto3 against the emulator: green is a new
production variant at its own full capacity (a new endpoint config + UpdateEndpoint), the switch
is UpdateEndpointWeightsAndCapacities, judging reads CloudWatch, and blue is retired by a config
without it after keep_previous; a failing green leaves blue alone, as it was."""

from __future__ import annotations

from aws_traffic import BAD, GOOD
from test_rollouts_e2e import CallsPerStage, mutations, rollout

from mlrollout.errors import ExitCode

BLUE_GREEN = """\
strategy:
  type: blue_green
  preview: 10
  pre_promotion: 5m
  switch: all_at_once
  post_promotion: 5m
  keep_previous: 10m
"""


def blue_green(world, candidate):
    """The canary plan of the other tests, green at two instances, this strategy instead."""
    path = world.plan()
    text = path.read_text().replace("instance_count: 1", "instance_count: 2")
    path.write_text(text[: text.index("strategy:")] + BLUE_GREEN + text[text.index("analysis:") :])
    world.plan = lambda: path  # type: ignore[method-assign]
    stages = CallsPerStage(world.emulator)
    return rollout(world, candidate=candidate, listeners=[stages]), stages


def test_a_healthy_green_takes_over_at_full_capacity_and_blue_is_retired_after_keep(world):
    outcome, stages = blue_green(world, GOOD)
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    live = world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v2", 1.0)
    ]
    config = world.sagemaker.describe_endpoint_config(EndpointConfigName=live["EndpointConfigName"])
    assert config["ProductionVariants"][0]["InitialInstanceCount"] == 2  # green's own capacity
    assert mutations(world) == {
        "CreateEndpointConfig": 2,  # blue + green; then green alone
        "UpdateEndpoint": 2,
        "UpdateEndpointWeightsAndCapacities": 2,  # the 10 % preview, the switch to 100 %
        "DeleteEndpointConfig": 1,
    }
    stages.report("blue-green promoted")


def test_a_green_that_fails_its_preview_leaves_blue_as_it_was(world):
    outcome, stages = blue_green(world, BAD)
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    live = world.live()
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v1", 1.0)
    ]
    assert live["EndpointConfigName"] == world.original
    assert world.configs() == [world.original]
    stages.report("blue-green rolled back")
