"""SageMaker's own blue/green deployment driven from a plan (``strategy.native: true``), through
boto3 against the emulator: first the adapter's four native methods on their own, then whole
rollouts through the engine. Green keeps blue's variant name (``v1``) and runs the candidate's
model; the traffic generator makes each fleet behave as its model's profile and publishes both
under ``v1``, as SageMaker does."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from aws_plans import ANALYSIS_SETTINGS
from aws_traffic import BAD, GOOD
from mlrollout_aws import naming
from mlrollout_aws._aws import RetryPolicy, make_client
from mlrollout_aws.sagemaker import SageMakerEndpoint

from mlrollout.errors import ProviderRefused
from mlrollout.plan.loader import parse_plan
from mlrollout.plan.model import Candidate

RID = "churn-v2-native-0a1b2c"
CANDIDATE = Candidate(name="v2", model="churn-v2", instance_type="ml.m5.large")
NATIVE = (
    """\
version: 1
name: churn-v2-native
target: {{provider: sagemaker, endpoint: churn, region: us-east-1, endpoint_url: "{url}"}}
candidate: {{name: v2, model: churn-v2, instance_type: ml.m5.large}}
strategy:
  type: blue_green
  native: true
{strategy}
"""
    + ANALYSIS_SETTINGS
    + """\
    - {{name: errors, metric: error_rate, max: 5%}}
    - {{name: p99, metric: latency_p99, max: 300ms}}
"""
)
CANARY = """\
  preview: 10
  pre_promotion: 5m
  keep_previous: 10m
"""
ALL_AT_ONCE = """\
  post_promotion: 5m
  keep_previous: 5m
"""
LINEAR = """\
  switch: {step: 50, every: 3m}
  keep_previous: 2m
"""


def native_plan(world: Any, strategy: str = CANARY) -> Any:
    return parse_plan(NATIVE.format(url=world.url, strategy=strategy.rstrip("\n")), "p.yaml").plan


def adapter(world: Any, strategy: str = CANARY) -> SageMakerEndpoint:
    retry = RetryPolicy(attempts=8, sleep=world.clock.sleep)
    return SageMakerEndpoint(
        "churn",
        make_client("sagemaker", region="us-east-1", endpoint_url=world.url),
        world.clock,
        region="us-east-1",
        retry=retry,
        plan=native_plan(world, strategy),
        cloudwatch=make_client("cloudwatch", region="us-east-1", endpoint_url=world.url),
    )


def setup(world: Any, green: dict[str, Any]) -> str:
    original = world.endpoint()
    traffic = world.traffic(v1=GOOD, v2=green)
    traffic.models = {"churn-v1": "v1", "churn-v2": "v2"}
    return original


def ours(world: Any) -> list[str]:
    alarms = world.cloudwatch.describe_alarms(AlarmNamePrefix=naming.alarm_prefix(RID))
    return sorted(a["AlarmName"] for a in alarms["MetricAlarms"])


def follow(
    world: Any, endpoint: SageMakerEndpoint, until: set[str], limit: float = 7200
) -> list[str]:
    """native_status once a minute until it reports one of ``until``: the statuses seen."""
    seen: list[str] = []
    start = world.clock.now()
    while world.clock.now() - start < limit:
        status = endpoint.native_status(RID)
        if not seen or seen[-1] != status.status:
            seen.append(status.status)
        if status.status in until:
            return seen
        world.clock.sleep(60)
    raise AssertionError(f"still {seen[-1]} after {limit}s: {seen}")


def deployment_calls(world: Any) -> Counter[str]:
    return Counter(
        {
            op: n
            for (service, op), n in world.emulator.calls.items()
            if service in ("sagemaker", "monitoring") and op != "PutMetricData"
        }
    )


# --------------------------------------------------------------------------------- adapter


def test_start_creates_tagged_alarms_and_a_config_on_blues_variant_name_and_deploys(world):
    original = setup(world, GOOD)
    endpoint = adapter(world)
    status = endpoint.start_native(CANDIDATE, "v1", RID)
    assert status.status == "deploying"
    assert ours(world) == [
        f"mlrollout-{RID}-force-rollback",
        f"mlrollout-{RID}-g0-errors-max",
        f"mlrollout-{RID}-g1-p99-max",
    ]
    for alarm in world.cloudwatch.describe_alarms(AlarmNames=ours(world))["MetricAlarms"]:
        tags = world.cloudwatch.list_tags_for_resource(ResourceARN=alarm["AlarmArn"])["Tags"]
        assert {"Key": "mlrollout-rollout", "Value": RID} in tags
    p99 = world.cloudwatch.describe_alarms(AlarmNames=[f"mlrollout-{RID}-g1-p99-max"])
    [p99] = p99["MetricAlarms"]
    assert (p99["MetricName"], p99["ExtendedStatistic"], p99["Threshold"]) == (
        "ModelLatency",
        "p99",
        300_000.0,  # microseconds
    )
    live = world.live()
    config = naming.native_config_name("churn", RID)
    assert live["EndpointStatus"] == "Updating"
    assert live["EndpointConfigName"] == original  # blue still serves
    assert live["PendingDeploymentSummary"]["EndpointConfigName"] == config
    [variant] = world.sagemaker.describe_endpoint_config(EndpointConfigName=config)[
        "ProductionVariants"
    ]
    assert (variant["VariantName"], variant["ModelName"], variant["InitialInstanceCount"]) == (
        "v1",  # blue's name: SageMaker needs the same variant names
        "churn-v2",
        2,  # blue's count: the plan names none
    )
    policy = live["LastDeploymentConfig"]["BlueGreenUpdatePolicy"]
    assert policy["TrafficRoutingConfiguration"] == {
        "Type": "CANARY",
        "WaitIntervalInSeconds": 300,
        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
    }
    assert policy["TerminationWaitInSeconds"] == 600
    assert 600 <= policy["MaximumExecutionTimeoutInSeconds"] <= 28800
    alarms = live["LastDeploymentConfig"]["AutoRollbackConfiguration"]["Alarms"]
    assert sorted(a["AlarmName"] for a in alarms) == ours(world)


def test_green_takes_the_plans_instance_count_when_it_names_one(world):
    setup(world, GOOD)
    endpoint = adapter(world)
    endpoint.plan = native_plan(world).model_copy(
        update={"candidate": Candidate(**{**CANDIDATE.model_dump(), "instance_count": 3})}
    )
    three = Candidate(name="v2", model="churn-v2", instance_type="ml.m5.large", instance_count=3)
    status = endpoint.start_native(three, "v1", RID)
    config = naming.native_config_name("churn", RID)
    [variant] = world.sagemaker.describe_endpoint_config(EndpointConfigName=config)[
        "ProductionVariants"
    ]
    assert variant["InitialInstanceCount"] == 3
    assert status.blue_instances == 2


def test_a_healthy_canary_progresses_over_virtual_time_and_succeeds(world):
    setup(world, GOOD)
    endpoint = adapter(world)
    endpoint.start_native(CANDIDATE, "v1", RID)
    shares = []
    seen: list[str] = []
    while True:
        status = endpoint.native_status(RID)
        shares.append(status.green_percent)
        if not seen or seen[-1] != status.status:
            seen.append(status.status)
        if status.finished:
            break
        world.clock.sleep(60)
    assert seen == ["deploying", "baking", "succeeded"]
    assert 10.0 in shares and 100.0 in shares  # the canary, then all of it
    live = world.live()
    assert live["EndpointConfigName"] == naming.native_config_name("churn", RID)
    assert world.emulator.rollbacks == []
    # blue served on its share, green on its: the variant's metrics hold both fleets' requests
    endpoint.end_native(RID)
    assert ours(world) == []


def test_bad_green_traffic_fires_a_gate_alarm_and_sagemaker_rolls_back_by_itself(world):
    original = setup(world, BAD)
    endpoint = adapter(world, ALL_AT_ONCE)
    endpoint.start_native(CANDIDATE, "v1", RID)
    seen = follow(world, endpoint, {"rolled_back", "succeeded"})
    assert seen[-1] == "rolled_back"
    assert "rolling_back" in seen
    [rollback] = world.emulator.rollbacks
    assert rollback["alarms"] and all(
        a.startswith(f"mlrollout-{RID}-g") for a in rollback["alarms"]
    )
    live = world.live()
    assert live["EndpointStatus"] == "InService"
    assert live["EndpointConfigName"] == original
    assert "ALARM" in live["FailureReason"]
    endpoint.end_native(RID)
    assert ours(world) == []
    assert world.configs() == [original]


def test_a_forced_rollback_sets_our_alarm_and_sagemaker_rolls_back(world):
    original = setup(world, GOOD)
    endpoint = adapter(world)
    endpoint.start_native(CANDIDATE, "v1", RID)
    follow(world, endpoint, {"baking"})
    status = endpoint.roll_back_native(RID, "gate p99 failed")
    assert status.status == "rolling_back"
    [rollback] = world.emulator.rollbacks
    assert rollback["alarms"] == [naming.force_alarm_name(RID)]
    assert endpoint.roll_back_native(RID, "again").status == "rolling_back"  # idempotent
    assert world.emulator.count("SetAlarmState") == 1
    assert follow(world, endpoint, {"rolled_back"})[-1] == "rolled_back"
    assert world.live()["EndpointConfigName"] == original
    assert endpoint.roll_back_native(RID, "again").status == "rolled_back"
    endpoint.end_native(RID)
    assert ours(world) == [] and world.configs() == [original]


def test_rolling_back_after_success_is_refused_as_too_late(world):
    setup(world, GOOD)
    endpoint = adapter(world, LINEAR)
    endpoint.start_native(CANDIDATE, "v1", RID)
    assert follow(world, endpoint, {"succeeded", "rolled_back"})[-1] == "succeeded"
    with pytest.raises(ProviderRefused, match="too late") as info:
        endpoint.roll_back_native(RID, "abort")
    assert "previous model" in (info.value.hint or "")


@pytest.mark.parametrize("stage", ["deploying", "baking", "succeeded", "rolled_back"])
def test_a_replayed_start_never_deploys_twice(world, stage):
    setup(world, BAD if stage == "rolled_back" else GOOD)
    endpoint = adapter(world, ALL_AT_ONCE)
    endpoint.start_native(CANDIDATE, "v1", RID)
    follow(world, endpoint, {stage})
    # a new runner after a crash (a fresh adapter: nothing cached) replays the journalled start
    again = adapter(world, ALL_AT_ONCE).start_native(CANDIDATE, "v1", RID)
    assert again.status == stage
    assert world.emulator.count("UpdateEndpoint", applied=True) == 1
    assert world.emulator.count("CreateEndpointConfig", applied=True) == 1
    assert world.emulator.count("PutMetricAlarm", applied=True) == 3


def test_a_replay_after_the_rollback_was_cleaned_up_still_knows_it_ran(world):
    original = setup(world, BAD)
    endpoint = adapter(world, ALL_AT_ONCE)
    endpoint.start_native(CANDIDATE, "v1", RID)
    follow(world, endpoint, {"rolled_back"})
    endpoint.end_native(RID)  # alarms and config gone; LastDeploymentConfig still names ours
    assert adapter(world, ALL_AT_ONCE).start_native(CANDIDATE, "v1", RID).status == "rolled_back"
    assert world.emulator.count("UpdateEndpoint", applied=True) == 1
    assert world.configs() == [original]


def test_a_start_whose_update_response_was_lost_is_not_applied_twice(world):
    setup(world, GOOD)
    world.emulator.fault("500", operations={"UpdateEndpoint"}, times=1, after=True)
    status = adapter(world).start_native(CANDIDATE, "v1", RID)
    assert status.status == "deploying"
    assert world.emulator.count("UpdateEndpoint", applied=True) == 1


def test_end_leaves_nothing_of_ours_and_never_touches_other_alarms(world):
    original = setup(world, GOOD)
    world.cloudwatch.put_metric_alarm(  # the team's own alarm, with our prefix even
        AlarmName=f"mlrollout-{RID}-theirs",
        Namespace="AWS/SageMaker",
        MetricName="ModelLatency",
        Statistic="Average",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    world.cloudwatch.put_metric_alarm(
        AlarmName="team-latency",
        Namespace="AWS/SageMaker",
        MetricName="ModelLatency",
        Statistic="Average",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1.0,
        ComparisonOperator="GreaterThanThreshold",
    )
    endpoint = adapter(world)
    endpoint.start_native(CANDIDATE, "v1", RID)
    follow(world, endpoint, {"succeeded"})
    state = endpoint.end_native(RID)
    assert state.weights() == {"v1": 100.0}
    left = sorted(a["AlarmName"] for a in world.cloudwatch.describe_alarms()["MetricAlarms"])
    assert left == [f"mlrollout-{RID}-theirs", "team-latency"]
    live = world.live()
    assert [c for c in world.configs() if "-mlr-" in c] == [live["EndpointConfigName"]]
    assert original in world.configs()  # the team's config: never ours to delete
    endpoint.end_native(RID)  # again: nothing left to do, nothing else touched
    assert world.emulator.count("DeleteAlarms", applied=True) == 1


def test_a_refused_deployment_takes_back_what_it_made(world):
    original = setup(world, GOOD)
    world.emulator.fault("denied", operations={"UpdateEndpoint"}, times=1)
    with pytest.raises(ProviderRefused, match="UpdateEndpoint"):
        adapter(world).start_native(CANDIDATE, "v1", RID)
    assert ours(world) == []
    assert world.configs() == [original]
    assert world.live()["EndpointStatus"] == "InService"


def test_end_is_refused_while_the_deployment_runs(world):
    from mlrollout.errors import ProviderError

    setup(world, GOOD)
    endpoint = adapter(world)
    endpoint.start_native(CANDIDATE, "v1", RID)
    with pytest.raises(ProviderError, match="still runs"):
        endpoint.end_native(RID)
    assert len(ours(world)) == 3


def test_calls_of_the_adapter_per_phase(world, capsys):
    setup(world, GOOD)
    endpoint = adapter(world)
    world.emulator.calls.clear()
    endpoint.start_native(CANDIDATE, "v1", RID)
    start = deployment_calls(world)
    world.emulator.calls.clear()
    endpoint.native_status(RID)
    status = deployment_calls(world)
    follow(world, endpoint, {"succeeded"})
    world.emulator.calls.clear()
    endpoint.end_native(RID)
    end = deployment_calls(world)
    assert start == {
        "DescribeEndpoint": 2,  # before, and the status after
        "DescribeEndpointConfig": 4,  # our config? (twice: started mark, exists) live, mark
        "DescribeModel": 1,
        "DescribeAlarms": 1,
        "PutMetricAlarm": 3,
        "CreateEndpointConfig": 1,
        "UpdateEndpoint": 1,
        "AddTags": 1,
    }
    assert status == {"DescribeEndpoint": 1}
    assert end["DeleteAlarms"] == 1 and end["ListTagsForResource"] == 3
    with capsys.disabled():
        print(
            f"\nnative adapter calls: start {dict(start)}; status {dict(status)}; end {dict(end)}"
        )


# ------------------------------------------------------------------------- whole rollouts

#: Green failing loudly: one look of mlrollout's sees it, before two bad minutes fire an alarm.
TERRIBLE = {"error_rate": 0.5, "latency_p50": "40ms", "latency_p99": "120ms"}


def native_rollout(
    world: Any, green: dict[str, Any], strategy: str = CANARY, listeners=(), plan: str = NATIVE
):
    from test_rollouts_e2e import BUCKET, s3_store

    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan

    world.original = setup(world, green)
    world.s3.create_bucket(Bucket=BUCKET)
    runner = Runner(s3_store(world), holder="runner-a", listeners=list(listeners))
    record = runner.create(load_plan(str(world.plan(plan, strategy=strategy.rstrip("\n")))))
    return runner, record, runner.drive(record.id, clock=world.clock)


def every_alarm(world: Any) -> list[str]:
    return sorted(a["AlarmName"] for a in world.cloudwatch.describe_alarms()["MetricAlarms"])


def assert_back_on_the_original(world: Any) -> None:
    """SageMaker rolled back: the endpoint serves on its original config again, and neither an
    alarm nor a config of the rollout is left."""
    live = world.live()
    assert (live["EndpointStatus"], live["EndpointConfigName"]) == ("InService", world.original)
    assert every_alarm(world) == []
    assert world.configs() == [world.original]


def test_a_healthy_green_ends_with_exit_0_green_serving_and_our_alarms_gone(world):
    from test_rollouts_e2e import CallsPerStage

    from mlrollout.errors import ExitCode

    stages = CallsPerStage(world.emulator)
    _, record, outcome = native_rollout(world, GOOD, listeners=[stages])
    assert outcome.exit_code == ExitCode.OK, outcome.state.reason
    live = world.live()
    assert live["EndpointConfigName"] == naming.native_config_name("churn", record.id)
    [variant] = world.sagemaker.describe_endpoint_config(
        EndpointConfigName=live["EndpointConfigName"]
    )["ProductionVariants"]
    assert (variant["VariantName"], variant["ModelName"]) == ("v1", "churn-v2")
    assert [(v["VariantName"], v["CurrentWeight"]) for v in live["ProductionVariants"]] == [
        ("v1", 1.0)
    ]
    assert every_alarm(world) == []
    assert world.emulator.rollbacks == []
    assert [c for c in world.configs() if "-mlr-" in c] == [live["EndpointConfigName"]]
    assert world.emulator.count("UpdateEndpoint", applied=True) == 1
    assert world.emulator.count("SetAlarmState") == 0
    assert world.emulator.count("GetMetricData") == outcome.state.looks >= 1
    assert "native" in stages.events
    stages.report("native blue/green promoted")


def test_green_breaching_a_gate_makes_sagemaker_roll_back_on_our_alarm_exit_1(world):
    from test_rollouts_e2e import CallsPerStage

    from mlrollout.errors import ExitCode

    stages = CallsPerStage(world.emulator)
    _, record, outcome = native_rollout(world, BAD, ALL_AT_ONCE, listeners=[stages])
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    [rollback] = world.emulator.rollbacks  # SageMaker's own: RollingBack, then InService
    assert rollback["alarms"]
    assert all(a.startswith(naming.alarm_prefix(record.id)) for a in rollback["alarms"])
    assert_back_on_the_original(world)
    stages.report("native blue/green, SageMaker rolled back")


def test_sagemaker_rolling_back_on_its_own_alarm_ends_the_rollout_rolled_back(world):
    from mlrollout.errors import ExitCode

    # mlrollout's first look comes after the ingestion delay: CloudWatch's alarm is quicker
    late = NATIVE.replace("delay: 60s", "delay: 6m")
    _, record, outcome = native_rollout(world, BAD, ALL_AT_ONCE, plan=late)
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert outcome.state.reason.startswith("the platform rolled its deployment back")
    [rollback] = world.emulator.rollbacks
    gate_alarms = [a for a in rollback["alarms"] if a != naming.force_alarm_name(record.id)]
    assert gate_alarms and all(a.startswith(naming.alarm_prefix(record.id)) for a in gate_alarms)
    assert world.emulator.count("SetAlarmState") == 0  # SageMaker saw it alone
    assert world.live()["EndpointConfigName"] == world.original
    assert every_alarm(world) == []
    assert world.configs() == [world.original]


def test_a_failing_gate_forces_sagemakers_rollback_with_set_alarm_state_exit_1(world):
    from test_rollouts_e2e import CallsPerStage

    from mlrollout.errors import ExitCode

    stages = CallsPerStage(world.emulator)
    _, record, outcome = native_rollout(world, TERRIBLE, ALL_AT_ONCE, listeners=[stages])
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert "analysis.failed" in stages.events or "errors" in (outcome.state.reason or "")
    [rollback] = world.emulator.rollbacks
    assert rollback["alarms"] == [naming.force_alarm_name(record.id)]  # ours, set by mlrollout
    assert world.emulator.count("SetAlarmState", applied=True) == 1
    assert_back_on_the_original(world)
    stages.report("native blue/green, gate failed: forced rollback")


def test_an_abort_during_the_deployment_forces_the_rollback(world):
    from mlrollout.errors import ExitCode

    aborted: list[str] = []

    def abort_when_baking(event: Any, state: Any) -> None:
        if event.kind == "native" and event.data.get("status") == "baking" and not aborted:
            aborted.append(event.rollout_id)
            runners[0].command(event.rollout_id, "abort", by="oncall")

    runners: list[Any] = []

    class Late:  # the runner exists only once native_rollout made it
        def __call__(self, event: Any, state: Any) -> None:
            abort_when_baking(event, state)

    from test_rollouts_e2e import BUCKET, s3_store

    from mlrollout.engine.runner import Runner
    from mlrollout.plan.loader import load_plan

    world.original = setup(world, GOOD)
    world.s3.create_bucket(Bucket=BUCKET)
    runner = Runner(s3_store(world), holder="runner-a", listeners=[Late()])
    runners.append(runner)
    record = runner.create(load_plan(str(world.plan(NATIVE, strategy=CANARY.rstrip("\n")))))
    outcome = runner.drive(record.id, clock=world.clock)
    assert aborted, "the deployment never reported baking"
    assert outcome.exit_code == ExitCode.ROLLED_BACK
    assert outcome.state.reason == "aborted by oncall"
    [rollback] = world.emulator.rollbacks
    assert rollback["alarms"] == [naming.force_alarm_name(record.id)]
    assert world.live()["EndpointConfigName"] == world.original
    assert every_alarm(world) == []


# ------------------------------------------------------------------------ the emulator itself


def test_the_emulator_shifts_linear_steps_bakes_and_keeps_blue_for_the_termination_wait(world):
    setup(world, GOOD)
    endpoint = adapter(world, LINEAR)  # 50 % steps baked 3 min, blue kept 2 min
    start = world.clock.now()
    endpoint.start_native(CANDIDATE, "v1", RID)
    timeline: list[tuple[float, str, float]] = []
    while True:
        live = world.live()
        pending = live.get("PendingDeploymentSummary") or {}
        [variant] = pending.get("ProductionVariants") or [{"VariantStatus": [{"Status": "-"}]}]
        share = endpoint.native_status(RID).green_percent
        row = (variant["VariantStatus"][-1]["Status"], share)
        if not timeline or timeline[-1][1:] != row:
            timeline.append((world.clock.now() - start, *row))
        if live["EndpointStatus"] == "InService":
            break
        world.clock.sleep(10)
    phases = [(status, share) for _, status, share in timeline]
    assert phases == [("Creating", 0.0), ("Baking", 50.0), ("Baking", 100.0), ("-", 100.0)]
    done = timeline[-1][0]
    em = world.emulator
    assert done >= em.green_seconds + 2 * 180 + 120  # provisioning, two bakes, termination
    # during the deployment the traffic split had both fleets under the variant's name
    shares = {tuple(sorted(w)) for _, w in world.clock.traffic[0].history}
    assert ("v1", "v2") in shares


def test_the_emulators_alarms_follow_the_published_metrics(world):
    setup(world, BAD)
    endpoint = adapter(world, ALL_AT_ONCE)
    endpoint.start_native(CANDIDATE, "v1", RID)
    name = f"mlrollout-{RID}-g0-errors-max"
    states = []
    for _ in range(12):
        world.clock.sleep(60)
        [alarm] = world.cloudwatch.describe_alarms(AlarmNames=[name])["MetricAlarms"]
        states.append(alarm["StateValue"])
    assert "ALARM" in states  # on BAD's 8 % errors, without any SetAlarmState
    assert world.emulator.count("SetAlarmState") == 0
    [rollback] = world.emulator.rollbacks
    assert name in rollback["alarms"]
