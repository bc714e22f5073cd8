"""The sandbox's world over time: the plan's variants, traffic and metrics pipeline, as its
``sandbox.events`` change them while the rollout runs.

Times here are seconds since the rollout started (the instant the candidate was added to the
simulated endpoint). Each event sets some keys from its ``at`` on, until ``at + for`` (or for
good). At any instant a key has the value of the active event that set it last (the latest
``at``; on a tie, the one listed later), else the plan's own value. The world is therefore
piecewise constant between :attr:`World.change_points` (the traffic profile aside, which is
smooth and integrated exactly), and each change point where something differs is a
:class:`Fact` — what the journal records and the report shows.

Nothing here loops over requests or users: everything is a function of time, O(events).
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from mlrollout.plan.model import (
    SANDBOX_VARIANT_KEYS,
    RpsProfile,
    Sandbox,
    SandboxEvent,
    SandboxVariant,
)
from mlrollout.units import format_duration, format_latency, format_rate

DAY = 86400.0

#: Endpoint-wide keys an event may change, beside the variants' keys.
ENDPOINT_KEYS = ("rps", "metrics_delay")


@dataclass(frozen=True)
class Change:
    subject: str  # a variant's name, or "endpoint"
    key: str  # error_rate, latency_p99, custom.conversion, rps, metrics_delay, ...
    before: Any
    after: Any

    def text(self) -> str:
        return f"{self.key} {_show(self.key, self.before)} → {_show(self.key, self.after)}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "key": self.key,
            "from": _plain(self.before),
            "to": _plain(self.after),
        }


@dataclass(frozen=True)
class Fact:
    """Something that changed in the simulated world at ``at`` (seconds since the start), and
    the plan's events that caused it (indices into ``sandbox.events``)."""

    at: float
    changes: tuple[Change, ...]
    events: tuple[int, ...] = field(default=())
    ended: tuple[int, ...] = field(default=())  # events whose ``for`` ran out here

    def text(self) -> str:
        by_subject: dict[str, list[str]] = {}
        for change in self.changes:
            by_subject.setdefault(change.subject, []).append(change.text())
        parts = [
            (f"{subject}: " if subject != "endpoint" else "") + ", ".join(texts)
            for subject, texts in by_subject.items()
        ]
        causes = [f"event {i + 1} starts" for i in self.events]
        causes += [f"event {i + 1} ends" for i in self.ended]
        return "; ".join(parts) + (f" ({', '.join(causes)})" if causes else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": "sandbox",
            "offset": self.at,
            "text": self.text(),
            "changes": [c.to_dict() for c in self.changes],
            "events": [i + 1 for i in self.events],
            "ended": [i + 1 for i in self.ended],
        }


class World:
    """The effective sandbox at any time since the rollout started."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.events: tuple[SandboxEvent, ...] = tuple(sandbox.events)
        points = {e.at for e in self.events} | {e.until for e in self.events}
        #: Sorted instants where some key may change value.
        self.change_points: tuple[float, ...] = tuple(sorted(p for p in points if math.isfinite(p)))
        self._behaviour: dict[tuple[str, int], SandboxVariant] = {}
        self._facts: list[Fact] | None = None

    # ------------------------------------------------------------------------------ lookup

    def _piece(self, t: float) -> int:
        """Index of the constant piece holding ``t``: 0 before the first change point."""
        return bisect.bisect_right(self.change_points, t)

    def _piece_time(self, piece: int) -> float:
        """An instant inside piece ``piece`` (its start; before any change, -inf)."""
        return self.change_points[piece - 1] if piece > 0 else -math.inf

    def _active(self, t: float) -> list[tuple[float, int, SandboxEvent]]:
        """The events in effect at ``t``, in the order they take effect (later wins)."""
        return sorted((e.at, i, e) for i, e in enumerate(self.events) if e.at <= t < e.until)

    def _value(self, t: float, key: str, variant: str | None = None) -> Any:
        """The effective value of an endpoint key (variant None) or a variant key at ``t``."""
        if variant is None:
            value: Any = getattr(self.sandbox, key)
        else:
            value = getattr(self.sandbox.variants[variant], key)
            if key == "custom":
                value = dict(value)
        for _, _, event in self._active(t):
            if variant is not None and event.variant != variant:
                continue
            new = getattr(event, key)
            if new is None:
                continue
            if key == "custom":
                value.update(new)
            else:
                value = new
        return value

    def behaviour(self, variant: str, t: float) -> SandboxVariant:
        """How ``variant`` behaves at ``t`` (the plan's values with the events applied)."""
        piece = self._piece(t)
        cached = self._behaviour.get((variant, piece))
        if cached is None:
            base = self.sandbox.variants[variant]
            at = self._piece_time(piece)
            if not any(e.variant == variant for e in self.events):
                cached = base
            else:
                update = {k: self._value(at, k, variant) for k in SANDBOX_VARIANT_KEYS}
                cached = base.model_copy(update=update)
            self._behaviour[(variant, piece)] = cached
        return cached

    def rps(self, t: float) -> float | RpsProfile:
        """The traffic setting in effect at ``t``: a rate, or a daily profile."""
        return self._value(self._piece_time(self._piece(t)), "rps")  # type: ignore[no-any-return]

    def rate(self, t: float) -> float:
        """Requests per second across variants at the instant ``t``."""
        setting = self.rps(t)
        if isinstance(setting, RpsProfile):
            return _profile_rate(setting, t)
        return float(setting)

    def requests(self, start: float, end: float) -> float:
        """Expected requests across variants over ``[start, end)``: the rate integrated exactly
        (a daily profile in closed form), split at the change points inside."""
        if end <= start:
            return 0.0
        total, t = 0.0, start
        for point in self.change_points[self._piece(start) :]:
            if point >= end:
                break
            total += _integral(self.rps(t), t, point)
            t = point
        return total + _integral(self.rps(t), t, end)

    def metrics_delay(self, t: float) -> float:
        return float(self._value(self._piece_time(self._piece(t)), "metrics_delay"))

    def visible_until(self, now: float) -> float:
        """Metrics of instants before this have been published by ``now``. Published data stays
        published: when the delay grows, the visible edge stops (no window ever shrinks) until
        time catches up; when it shrinks, the backlog appears at once."""
        edge = -math.inf
        bounds = (-math.inf, *self.change_points, math.inf)
        for lo, hi in itertools.pairwise(bounds):
            if lo > now:
                break
            delay = self.metrics_delay(lo)
            edge = max(edge, min(hi, now) - delay)
        return edge

    # ------------------------------------------------------------------------------- facts

    def facts(self) -> list[Fact]:
        """Every change point where some effective value differs, in time order."""
        if self._facts is not None:
            return self._facts
        out: list[Fact] = []
        for i, point in enumerate(self.change_points):
            before_t = self.change_points[i - 1] if i > 0 else -math.inf
            changes = self._diff(before_t, point)
            starts = tuple(j for j, e in enumerate(self.events) if e.at == point)
            ends = tuple(j for j, e in enumerate(self.events) if e.until == point)
            if changes:
                out.append(Fact(point, tuple(changes), starts, ends))
        self._facts = out
        return out

    def facts_until(self, t: float) -> list[Fact]:
        """The facts that have happened by ``t`` (their instant is at or before it)."""
        return [f for f in self.facts() if f.at <= t]

    def _diff(self, before: float, after: float) -> list[Change]:
        changes: list[Change] = []
        for key in ENDPOINT_KEYS:
            old, new = self._value(before, key), self._value(after, key)
            if old != new:
                changes.append(Change("endpoint", key, old, new))
        for variant in self.sandbox.variants:
            if not any(e.variant == variant for e in self.events):
                continue
            for key in SANDBOX_VARIANT_KEYS:
                old, new = self._value(before, key, variant), self._value(after, key, variant)
                if key == "custom":
                    for name in sorted(set(old) | set(new)):
                        if old.get(name) != new.get(name):
                            changes.append(
                                Change(variant, f"custom.{name}", old.get(name), new.get(name))
                            )
                elif old != new:
                    changes.append(Change(variant, key, old, new))
        return changes


def _profile_rate(profile: RpsProfile, t: float) -> float:
    swing = (profile.daily_swing - 1.0) / (profile.daily_swing + 1.0)
    return profile.base * (1.0 + swing * math.cos(2 * math.pi * (t - profile.peak_at) / DAY))


def _integral(setting: float | RpsProfile, start: float, end: float) -> float:
    if not isinstance(setting, RpsProfile):
        return float(setting) * (end - start)
    swing = (setting.daily_swing - 1.0) / (setting.daily_swing + 1.0)
    phase = 2 * math.pi / DAY
    wave = math.sin(phase * (end - setting.peak_at)) - math.sin(phase * (start - setting.peak_at))
    return setting.base * ((end - start) + swing * wave / phase)


def _show(key: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, RpsProfile):
        return f"{value.base:g} req/s average (x{value.daily_swing:g} daily swing)"
    if key == "rps":
        return f"{value:g} req/s"
    if key == "metrics_delay":
        return format_duration(value)
    if key == "error_bursts":
        return f"negative-binomial shape {value:g} per 10s"
    if key.startswith("latency"):
        return format_latency(value)
    return format_rate(value)


def _plain(value: Any) -> Any:
    if isinstance(value, RpsProfile):
        return value.model_dump()
    return value


def mean_rps(sandbox: Sandbox) -> float:
    """The plan's traffic as one number: the rate, or a daily profile's average."""
    rps = sandbox.rps
    return rps.base if isinstance(rps, RpsProfile) else float(rps)


def summary(sandbox: Sandbox) -> dict[str, Any]:
    """The simulated world as ``plan preview`` shows it: traffic, the metrics pipeline's delay,
    what the events change and when, and the users."""
    users = sandbox.users
    return {
        "rps": _show("rps", sandbox.rps),
        "metrics_delay": format_duration(sandbox.metrics_delay),
        "changes": [
            {
                "offset": f.at,
                "at": f"+{format_duration(f.at)}" if f.at >= 0 else "before start",
                "text": f.text(),
            }
            for f in World(sandbox).facts()
        ],
        "users": None
        if users is None
        else {
            "count": users.count,
            "attributes": {k: list(v) for k, v in users.attributes.items()},
        },
    }
