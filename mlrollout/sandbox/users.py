"""The sandbox's simulated users: stable ids, attributes, and a sticky traffic assignment.

User ``i`` (``0 <= i < count``) is ``user-000042``-style. Everything about a user is a pure
function of ``(seed, i)``, and every share is computed exactly, in closed form — nothing here
loops over users:

- **Attributes.** The attribute combinations are numbered in mixed radix (the first attribute
  the least significant digit); user ``i`` has combination ``i mod P`` (``P`` the number of
  combinations), each digit rotated by a seed-derived offset. The combinations are therefore
  shared as evenly as possible (any two differ by at most one user), and the share of users
  matching ``{attribute: value or [values]}`` is counted digit by digit, in O(attributes).
- **Assignment.** Each user has a sticky point ``((i·A + B) mod count) / count`` in ``[0, 1)``,
  ``A`` coprime with ``count`` (both from the seed): a bijection of the users onto the
  ``count`` points ``j / count``. Ordered weights ``{variant: percent}`` give each variant a
  slice of ``[0, 1)`` (cumulative in order), and a user is served by the variant whose slice
  holds its point. The share of users in ``[lo, hi)`` is exact in O(1), and raising the last
  variant's weight (the candidate's) only moves users onto it, never off it.
- **Flags.** Under a feature flag the users are routed by the flag, not by the points: each
  user (its id as ``targetingKey``, its attributes) is evaluated by the real flagd evaluator,
  which is the one thing here that loops over users (once per flag version, cached by its
  digest by the caller: about 15 µs a user, 0.8 s for 50,000). Above :data:`FLAG_USERS` users a
  seeded sample of that many stands for them (the same one for every flag version, so a user's
  stickiness across versions is the sample's).
"""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from mlrollout.plan.model import SandboxUsers

Match = Mapping[str, str | Sequence[str]]
#: At most this many users are evaluated per flag version (a seeded sample above it).
FLAG_USERS = 100_000


def _hash(seed: int, what: str) -> int:
    digest = hashlib.blake2b(f"{seed}\x1fusers\x1f{what}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class UserBase:
    """The ``count`` users of ``sandbox.users`` under ``seed``."""

    def __init__(self, users: SandboxUsers, seed: int) -> None:
        self.count = n = users.count
        self.seed = seed
        self.attributes: dict[str, list[str]] = {k: list(v) for k, v in users.attributes.items()}
        self.radices = [len(values) for values in self.attributes.values()]
        self.combinations = math.prod(self.radices)
        self.offsets = [
            _hash(seed, f"attribute\x1f{name}") % r
            for name, r in zip(self.attributes, self.radices, strict=True)
        ]
        a = _hash(seed, "stride") % n if n > 1 else 1
        while math.gcd(a, n) != 1:  # the next coprime: a few steps at most on average
            a = (a + 1) % n
        self.stride, self.shift = a, _hash(seed, "shift") % n
        self._width = max(6, len(str(n - 1)))

    # -------------------------------------------------------------------------- one user

    def user_id(self, i: int) -> str:
        return f"user-{i:0{self._width}d}"

    def user(self, i: int) -> tuple[str, dict[str, str]]:
        """User ``i``'s id and attributes."""
        if not 0 <= i < self.count:
            raise IndexError(f"user {i} is not one of the {self.count} users")
        combo, attributes = i % self.combinations, {}
        for (name, values), r, off in zip(
            self.attributes.items(), self.radices, self.offsets, strict=True
        ):
            combo, digit = divmod(combo, r)
            attributes[name] = values[(digit + off) % r]
        return self.user_id(i), attributes

    def point(self, i: int) -> int:
        """User ``i``'s sticky assignment point, as ``j`` of ``j / count``."""
        return (i * self.stride + self.shift) % self.count

    # ---------------------------------------------------------------------------- shares

    def share(self, match: Match) -> float:
        """The exact share of users matching ``{attribute: value or [values]}`` (all of them for
        ``{}``; none for an attribute the users do not have)."""
        if any(name not in self.attributes for name in match):
            return 0.0
        allowed: list[set[int]] = []
        for (name, values), r, off in zip(
            self.attributes.items(), self.radices, self.offsets, strict=True
        ):
            wanted = match.get(name)
            if wanted is None:
                allowed.append(set(range(r)))
                continue
            chosen = {wanted} if isinstance(wanted, str) else set(wanted)
            allowed.append({(values.index(v) - off) % r for v in chosen if v in values})
        matching = math.prod(len(a) for a in allowed)  # per full cycle of combinations
        cycles, rest = divmod(self.count, self.combinations)
        return (cycles * matching + _count_below(rest, self.radices, allowed)) / self.count

    def _edge(self, x: float) -> int:
        """How many points ``j / count`` lie below ``x``."""
        y = x * self.count
        nearest = round(y)
        j = nearest if math.isclose(y, nearest, rel_tol=1e-12, abs_tol=1e-9) else math.ceil(y)
        return min(self.count, max(0, j))

    def assigned_share(self, lo: float, hi: float) -> float:
        """The exact share of users whose point lies in ``[lo, hi)``."""
        return max(0, self._edge(hi) - self._edge(lo)) / self.count

    def shares(self, weights: Mapping[str, float]) -> dict[str, float]:
        """Each variant's share of the users under ordered ``{variant: percent}`` weights."""
        out, cumulative = {}, 0.0
        for name, weight in weights.items():
            lo, cumulative = cumulative, cumulative + weight
            out[name] = self.assigned_share(lo / 100.0, cumulative / 100.0)
        return out

    def variant_of(self, i: int, weights: Mapping[str, float]) -> str:
        """The variant serving user ``i`` under ordered ``{variant: percent}`` weights (the
        last one if they add up to less than 100)."""
        if not weights:
            raise ValueError("no weights to assign a user by")
        j, cumulative = self.point(i), 0.0
        for name, weight in weights.items():
            cumulative += weight
            if j < self._edge(cumulative / 100.0):
                return name
        return next(reversed(list(weights)))

    # ----------------------------------------------------------------------------- flags

    def flag_sample(self, limit: int = FLAG_USERS) -> Sequence[int]:
        """The users a flag is evaluated for: all of them, or a seeded sample of ``limit``
        (in id order) when there are more."""
        if self.count <= limit:
            return range(self.count)
        rng = random.Random(_hash(self.seed, "flag sample"))
        return sorted(rng.sample(range(self.count), limit))

    def flag_shares(
        self,
        variant_of: Callable[[str, Mapping[str, str]], str],
        limit: int = FLAG_USERS,
    ) -> dict[str, float]:
        """Each variant's share of the users when ``variant_of(user id, attributes)`` names the
        variant serving each (a flag's evaluation), over :meth:`flag_sample`."""
        sample = self.flag_sample(limit)
        counts = Counter(variant_of(*self.user(i)) for i in sample)
        return {name: counts[name] / len(sample) for name in sorted(counts)}


def _count_below(limit: int, radices: Sequence[int], allowed: Sequence[set[int]]) -> int:
    """How many combination numbers below ``limit`` (less than the number of combinations) have
    every digit in its allowed set (``radices[0]`` the least significant digit)."""
    digits, rest = [], limit
    for r in radices:
        rest, d = divmod(rest, r)
        digits.append(d)
    below = [1]  # below[j]: allowed combinations of the digits under j
    for a in allowed:
        below.append(below[-1] * len(a))
    total = 0
    for j in reversed(range(len(radices))):
        total += sum(1 for d in allowed[j] if d < digits[j]) * below[j]
        if digits[j] not in allowed[j]:
            break
    return total
