"""``check_flags``: what ``plan validate`` refuses about segments and flags, at which key."""

from __future__ import annotations

from pathlib import Path

from flag_plans import PLAN, plan

from mlrollout.flags.checks import check_flags


def problems(p) -> dict[tuple, str]:
    return {problem.path: problem.message for problem in check_flags(p)}


def test_a_good_plan_has_no_problem() -> None:
    assert check_flags(plan()) == []
    assert check_flags(plan(segments=None)) == []


def test_segments_without_flags_are_refused() -> None:
    found = problems(plan(flags=None))
    assert list(found) == [("segments",)]
    assert "add flags: {provider: flagd" in found[("segments",)]


def test_duplicate_segment_names() -> None:
    segments = [*PLAN["segments"], {"name": "staff", "match": {"region": "us-east-1"}}]
    found = problems(plan(segments=segments))
    assert list(found) == [("segments", 2, "name")]
    assert "'staff' is named twice (also segments[0])" in found[("segments", 2, "name")]


def test_sandbox_segments_match_the_users_attributes_and_values() -> None:
    segments = [
        {"name": "staff", "match": {"usertype": "employee"}},
        {"name": "eu", "match": {"region": ["eu-west-1", "eu-north-1"]}},
    ]
    found = problems(plan(segments=segments))
    assert set(found) == {("segments", 0, "match", "usertype"), ("segments", 1, "match", "region")}
    assert "did you mean 'user_type'?" in found[("segments", 0, "match", "usertype")]
    assert "no sandbox user has region 'eu-north-1'" in found[("segments", 1, "match", "region")]


def test_sandbox_segments_need_users() -> None:
    sandbox = {**PLAN["sandbox"]}
    del sandbox["users"]
    found = problems(plan(sandbox=sandbox))
    assert list(found) == [("sandbox",)] and "add sandbox.users" in found[("sandbox",)]


def test_other_providers_are_not_judged_on_sandbox_users() -> None:
    target = {"provider": "sagemaker", "endpoint": "churn", "region": "us-east-1"}
    segments = [{"name": "x", "match": {"anything": "goes"}}]
    assert check_flags(plan(target=target, sandbox=None, segments=segments)) == []


def test_the_flag_file_is_a_path_or_a_uri_an_installed_plugin_writes(tmp_path: Path) -> None:
    def file_problem(location: str) -> str | None:
        return problems(plan(flags={**PLAN["flags"], "file": location})).get(("flags", "file"))

    assert file_problem(str(tmp_path / "churn.json")) is None
    assert file_problem((tmp_path / "churn.json").as_uri()) is None
    assert "names a directory" in (file_problem(str(tmp_path)) or "")
    assert "names a directory" in (file_problem("flags/") or "")
    gs = file_problem("gs://bucket/churn.json") or ""
    assert "no installed plugin writes gs:// objects" in gs and "providers/gcp" in gs
    odd = file_problem("ftp://host/churn.json") or ""
    assert "mlrollout.objects entry-point group" in odd


def test_native_blue_green_cannot_be_routed_by_a_flag() -> None:
    strategy = {"type": "blue_green", "native": True}
    found = problems(plan(strategy=strategy, segments=None))
    assert list(found) == [("strategy", "native")]
    assert "use native: false with flags" in found[("strategy", "native")]
    assert check_flags(plan(strategy={"type": "blue_green"}, segments=None)) == []
