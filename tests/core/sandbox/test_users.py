"""The sandbox's simulated users: exact shares, sticky and monotone assignment, stable ids."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from fractions import Fraction

import pytest

from mlrollout.plan.model import SandboxUsers
from mlrollout.sandbox.users import UserBase

ATTRIBUTES = {
    "region": ["eu-west-1", "us-east-1", "ap-south-1"],
    "user_type": ["employee", "customer"],
    "tier": ["free", "pro", "team", "enterprise"],
}


def base(
    count: int = 1000, seed: int = 7, attributes: dict[str, list[str]] = ATTRIBUTES
) -> UserBase:
    return UserBase(SandboxUsers(count=count, attributes=attributes), seed)


def test_ids_and_attributes() -> None:
    users = base(50_000)
    ident, attributes = users.user(42)
    assert ident == "user-000042" and set(attributes) == set(ATTRIBUTES)
    assert all(attributes[k] in ATTRIBUTES[k] for k in ATTRIBUTES)
    assert base(10_000_000).user(42)[0] == "user-0000042"
    with pytest.raises(IndexError):
        users.user(50_000)
    assert base(5, attributes={}).user(3) == ("user-000003", {})


@pytest.mark.parametrize("count", [1, 7, 23, 24, 25, 1000, 1013])
def test_shares_of_matching_users_are_exact(count: int) -> None:
    users = base(count, seed=count)
    everyone = [users.user(i)[1] for i in range(count)]  # the test may enumerate; the code never
    matches: list[dict[str, str | list[str]]] = [
        {},
        {"region": "eu-west-1"},
        {"region": ["eu-west-1", "ap-south-1"], "tier": "pro"},
        {"region": "us-east-1", "user_type": "customer", "tier": ["team", "free"]},
        {"tier": []},
        {"tier": "platinum"},
        {"planet": "mars"},
    ]
    for match in matches:
        want = sum(
            all(
                name in a and (a[name] == v if isinstance(v, str) else a[name] in v)
                for name, v in match.items()
            )
            for a in everyone
        )
        assert users.share(match) == pytest.approx(want / count, abs=1e-15), match
    # combinations are shared as evenly as possible
    combos = [tuple(a.values()) for a in everyone]
    sizes = [combos.count(c) for c in itertools.product(*ATTRIBUTES.values())]
    assert max(sizes) - min(sizes) <= 1


def test_assignment_points_are_a_bijection_and_slices_are_exact() -> None:
    for count in (1, 2, 10, 97, 1000):
        users = base(count, seed=3)
        assert sorted(users.point(i) for i in range(count)) == list(range(count))
        for lo, hi in ((0.0, 1.0), (0.0, 0.1), (0.9, 1.0), (0.25, 0.5), (0.3, 0.3)):
            a, b = Fraction(str(lo)), Fraction(str(hi))  # the decimals meant (as percents are)
            inside = sum(a <= Fraction(users.point(i), count) < b for i in range(count))
            assert users.assigned_share(lo, hi) == inside / count
    assert base(50_000).assigned_share(0.9, 1.0) == 0.1


def test_assignment_is_sticky_and_raising_the_candidate_only_moves_users_onto_it() -> None:
    users = base(2000, seed=11)
    previous: list[str] | None = None
    for weight in (0, 1, 5, 10, 25, 50, 75, 100):
        weights = {"v6": 100.0 - weight, "v7": float(weight)}
        now = [users.variant_of(i, weights) for i in range(2000)]
        assert now == [users.variant_of(i, weights) for i in range(2000)]  # sticky
        assert now.count("v7") / 2000 == users.shares(weights)["v7"]
        if previous is not None:
            assert all(b == "v7" for a, b in zip(previous, now, strict=True) if a == "v7")
        previous = now
    assert set(previous or []) == {"v7"}


def test_different_seeds_assign_differently() -> None:
    a, b = base(1000, seed=1), base(1000, seed=2)
    assert [a.point(i) for i in range(50)] != [b.point(i) for i in range(50)]
    assert a.share({"region": "eu-west-1"}) == b.share({"region": "eu-west-1"})


SCRIPT = """
import json
from mlrollout.plan.model import SandboxUsers
from mlrollout.sandbox.users import UserBase
users = UserBase(SandboxUsers(count=50000, attributes=json.loads(%r)), 7)
weights = {"v6": 90.0, "v7": 10.0}
print(json.dumps([[*users.user(i), users.variant_of(i, weights)] for i in range(0, 50000, 997)]))
"""


def test_users_are_the_same_in_another_process() -> None:
    users = base(50_000)
    here = [
        [*users.user(i), users.variant_of(i, {"v6": 90.0, "v7": 10.0})]
        for i in range(0, 50_000, 997)
    ]
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT % json.dumps(ATTRIBUTES)],
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "99", "PATH": "/usr/bin:/bin"},
    )
    assert json.loads(done.stdout) == json.loads(json.dumps(here))


def test_a_hundred_million_users_cost_nothing() -> None:
    users = base(100_000_000)
    assert users.share({"region": "eu-west-1", "tier": "pro"}) == pytest.approx(1 / 12, abs=1e-8)
    assert users.assigned_share(0.0, 0.1) == 0.1
    assert users.variant_of(99_999_999, {"v6": 50.0, "v7": 50.0}) in {"v6", "v7"}
