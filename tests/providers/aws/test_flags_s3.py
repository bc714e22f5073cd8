"""The flag file on S3 (``s3://`` in ``mlrollout.objects``) through boto3 against moto's server:
written whole in lockstep, read back, replayed harmlessly, restored on rollback; errors that
name the object and the fix."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from mlrollout_aws.objects import S3Files, open_s3_files

from mlrollout.clock import VirtualClock
from mlrollout.contracts import ProviderContext
from mlrollout.errors import ProviderError
from mlrollout.flags import ObjectFlagWriter, flag_definition, flag_json, flag_writer
from mlrollout.flags.checks import check_flags
from mlrollout.objects import open_objects
from mlrollout.plan.model import Plan
from mlrollout.state.sqlite import open_sqlite_store

BUCKET = "flags"
KEY = "rollouts/churn.json"


def plan(url: str, file: str = f"s3://{BUCKET}/{KEY}") -> Plan:
    data: dict[str, Any] = {
        "version": 1,
        "name": "churn v7 by segment",
        "target": {
            "provider": "sagemaker",
            "endpoint": "churn",
            "region": "us-east-1",
            "endpoint_url": url,
        },
        "candidate": {"name": "v7", "model": "churn-v7"},
        "strategy": {"type": "canary", "steps": [{"weight": 5}, {"analyze": "10m"}]},
        "segments": [{"name": "staff", "match": {"user_type": "employee"}, "weight": 100}],
        "flags": {"provider": "flagd", "key": "churn-model", "file": file},
    }
    return Plan.model_validate(data)


def step(p: Plan, weight: float, **kw: Any) -> dict[str, Any]:
    return flag_definition(p, {"v7": weight}, baseline="v6", candidate="v7", **kw)


def stored(world) -> tuple[bytes, str]:
    got = world.s3.get_object(Bucket=BUCKET, Key=KEY)
    return got["Body"].read(), got["ContentType"]


def test_the_flag_file_is_written_to_s3_in_lockstep_and_restored_on_rollback(world, tmp_path):
    world.s3.create_bucket(Bucket=BUCKET)
    p = plan(world.url)
    context = ProviderContext(p, VirtualClock(0.0), open_sqlite_store(str(tmp_path / "s")))
    writer = flag_writer(p, context)  # the plan's endpoint_url: the emulator
    assert writer.location == f"s3://{BUCKET}/{KEY}"
    assert writer.read() is None
    for weight in (5, 25, 50):
        sha = writer.write(step(p, weight))
        body, content_type = stored(world)
        assert body == flag_json(step(p, weight)) and content_type == "application/json"
        assert sha == hashlib.sha256(body).hexdigest()
        assert writer.read() == step(p, weight)
    assert writer.write(step(p, 50)) == sha  # a replay after a crash: the same object
    writer.write(step(p, 0))  # the rollback: everyone on the baseline
    restored = json.loads(stored(world)[0])["flags"]["churn-model"]
    assert restored["defaultVariant"] == "v6" and "targeting" not in restored


def test_url_options_and_listing(world) -> None:
    world.s3.create_bucket(Bucket=BUCKET)
    files = open_objects(f"s3://{BUCKET}/rollouts/?region=us-east-1&endpoint_url={world.url}")
    assert isinstance(files, S3Files) and files.location == f"s3://{BUCKET}/rollouts/"
    files.write(b"{}", "churn.json")
    files.write(b"[]", "old/shop.json")
    world.s3.put_object(Bucket=BUCKET, Key="rollouts-elsewhere.json", Body=b"{}")
    assert [i.key for i in files.list()] == ["churn.json", "old/shop.json"]
    assert [i.key for i in files.list("old/")] == ["old/shop.json"]
    assert files.read("churn.json") == b"{}" and files.read("missing.json") is None
    one = open_s3_files(f"s3://{BUCKET}/rollouts/churn.json", world.url)
    assert [(i.key, i.size) for i in one.list()] == [("", 2)]
    with pytest.raises(ProviderError, match="names a prefix"):
        files.write(b"{}")


def test_a_missing_bucket_names_the_object_and_the_fix(world) -> None:
    p = plan(world.url, file=f"s3://nowhere/{KEY}")
    writer = ObjectFlagWriter(open_objects(p.flags.file, endpoint_url=world.url))  # type: ignore[union-attr]
    with pytest.raises(
        ProviderError, match=f"cannot write the flag file s3://nowhere/{KEY}"
    ) as err:
        writer.write(step(p, 5))
    assert "bucket 'nowhere' does not exist" in err.value.message
    assert "create the bucket" in (err.value.hint or "")
    with pytest.raises(ProviderError, match="unknown option 'token'"):
        open_s3_files(f"s3://{BUCKET}/{KEY}?token=x", None)


def test_validate_accepts_s3_with_the_plugin_installed(world) -> None:
    assert check_flags(plan(world.url)) == []
