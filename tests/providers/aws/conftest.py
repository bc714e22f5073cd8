"""Fixtures for the AWS provider tests: one emulator for the session (moto's server plus the
project's layer, see ``aws_emulator.py``), reset before each test, and a :class:`World` that builds
SageMaker endpoints, traffic and plans on it. boto3 talks to it over HTTP; nothing is mocked."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from aws_emulator import AwsEmulator
from aws_plans import PLAN
from aws_traffic import GOOD, SageMakerTraffic, TrafficClock

REGION = "us-east-1"


@pytest.fixture(scope="session")
def emulator() -> Iterator[AwsEmulator]:
    em = AwsEmulator().start()
    yield em
    em.stop()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials, no shared config, no instance metadata: nothing reaches real AWS."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


class World:
    """The emulated account of one test, on one virtual clock."""

    def __init__(self, emulator: AwsEmulator, tmp_path: Path) -> None:
        import boto3

        self.emulator = emulator
        self.tmp_path = tmp_path
        self.clock = TrafficClock()
        emulator.reset(self.clock)
        self.url = emulator.url
        self.sagemaker = boto3.client("sagemaker", region_name=REGION, endpoint_url=self.url)
        self.cloudwatch = boto3.client("cloudwatch", region_name=REGION, endpoint_url=self.url)
        from botocore.config import Config

        # the test's own writes (captured traffic) ride out the faults a test injects for
        # the code under test: with a fifth of all calls throttled, 3 attempts lose some
        patient = Config(retries={"mode": "standard", "max_attempts": 12})
        self.s3 = boto3.client("s3", region_name=REGION, endpoint_url=self.url, config=patient)

    def model(self, name: str) -> None:
        self.sagemaker.create_model(
            ModelName=name,
            ExecutionRoleArn="arn:aws:iam::123456789012:role/sagemaker",
            PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/m:latest"},
        )

    def endpoint(
        self,
        name: str = "churn",
        variants: tuple[tuple[str, str], ...] = (("v1", "churn-v1"),),
        *,
        instance_count: int = 2,
        candidate_models: tuple[str, ...] = ("churn-v2",),
    ) -> str:
        """An endpoint whose first variant takes all traffic, on a config mlrollout did not make."""
        for _, model in variants:
            self.model(model)
        for model in candidate_models:
            self.model(model)
        config = f"{name}-config-original"
        self.sagemaker.create_endpoint_config(
            EndpointConfigName=config,
            ProductionVariants=[
                {
                    "VariantName": variant,
                    "ModelName": model,
                    "InstanceType": "ml.m5.large",
                    "InitialInstanceCount": instance_count,
                    "InitialVariantWeight": 1.0 if i == 0 else 0.0,
                }
                for i, (variant, model) in enumerate(variants)
            ],
        )
        self.sagemaker.create_endpoint(EndpointName=name, EndpointConfigName=config)
        self.emulator.calls.clear()
        self.emulator.applied.clear()
        return config

    def traffic(
        self,
        endpoint: str = "churn",
        agreement: dict[str, float] | None = None,
        **profiles: dict[str, Any],
    ) -> SageMakerTraffic:
        traffic = SageMakerTraffic(
            self.emulator,
            self.cloudwatch,
            endpoint,
            profiles or {"v1": GOOD},
            rps=20.0,
            s3=self.s3,
            agreement=agreement,
        )
        traffic.note_weights(self.clock.now())
        self.clock.traffic.append(traffic)
        return traffic

    def plan(self, text: str = "", **fill: Any) -> Path:
        path = self.tmp_path / f"plan-{len(list(self.tmp_path.glob('plan-*.yaml')))}.yaml"
        path.write_text(textwrap.dedent(text or PLAN).format(url=self.url, **fill))
        return path

    def configs(self) -> list[str]:
        return sorted(
            c["EndpointConfigName"]
            for c in self.sagemaker.list_endpoint_configs(MaxResults=100)["EndpointConfigs"]
        )

    def live(self, name: str = "churn") -> dict[str, Any]:
        return self.sagemaker.describe_endpoint(EndpointName=name)


@pytest.fixture
def world(emulator: AwsEmulator, tmp_path: Path) -> World:
    return World(emulator, tmp_path)


@pytest.fixture
def new_world(emulator: AwsEmulator, tmp_path: Path) -> Callable[[str], World]:
    """Another world on the same emulator (resets it): ``new_world("second")``."""

    def make(name: str) -> World:
        (tmp_path / name).mkdir()
        return World(emulator, tmp_path / name)

    return make
