"""The sandbox's history as a :class:`~mlrollout.contracts.MetricsSource`: the simulated
endpoint over days and weeks, before and after a rollout, for ``mlrollout impact`` and
``mlrollout plan backtest``.

The world is a pure function of time (:mod:`mlrollout.sandbox.world`), so its past and its
future are both known at once: the history does not wait for a clock. In it the baseline (the
first variant of ``sandbox.variants``) serves everyone, always — the A/A history a backtest
replays gates on — while the daily cycle of an ``rps`` profile and the ``sandbox.events`` at
their known times change what it does (an event ``{at: 0s, variant: v1, custom: {conversion:
10.3%}}`` is a +3 % level shift of the conversion rate at the rollout's start: what ``impact``
must find). Times: ``origin`` is the instant of the world's zero (the rollout's first traffic
change); an instant ``t`` is world time ``t - origin``, and history reaches back
:data:`LEAD` before it.

Traffic comes from :class:`~mlrollout.sandbox.traffic.TrafficModel` with buckets of the
history's step (its counts per bucket are the model's: Poisson requests, binomial errors, bursts
scaled to the bucket, latency histograms), counted from ``origin - LEAD`` (the model counts
buckets from its origin on): the sandbox's events and daily peak are moved by ``LEAD`` to stay
at their instants. These are draws of their own (another grid than a rollout's), from the
plan's ``seed``, the endpoint's name and the step.

A control endpoint (``impact --control endpoint=NAME``): the same sandbox under another name —
other draws, the same traffic profile and endpoint-wide events (``rps``, ``metrics_delay``: what
the world does to every endpoint), none of the variant events (those were this endpoint's).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

from mlrollout.contracts import MetricsQuery, Window
from mlrollout.plan.model import RpsProfile, Sandbox
from mlrollout.sandbox.checks import custom_metric
from mlrollout.sandbox.endpoint import _window
from mlrollout.sandbox.traffic import Records, TrafficModel
from mlrollout.sandbox.world import DAY

#: How far before ``origin`` the history reaches: a year and a day.
LEAD = 366 * DAY


def shifted(sandbox: Sandbox, lead: float, *, seed: int, variant_events: bool = True) -> Sandbox:
    """``sandbox`` with its world moved ``lead`` seconds later (events' ``at``, the daily
    peaks) and another ``seed``; ``variant_events=False`` keeps only the endpoint-wide events."""

    def rps(value: float | RpsProfile) -> float | RpsProfile:
        if isinstance(value, RpsProfile):
            return value.model_copy(update={"peak_at": (value.peak_at + lead) % DAY})
        return value

    events = [
        e.model_copy(update={"at": e.at + lead, "rps": None if e.rps is None else rps(e.rps)})
        for e in sandbox.events
        if variant_events or e.variant is None
    ]
    return sandbox.model_copy(update={"rps": rps(sandbox.rps), "events": events, "seed": seed})


def _seed(seed: int, endpoint: str, step: float) -> int:
    text = f"{seed}\x1fhistory\x1f{endpoint}\x1f{step:g}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=7).digest(), "big")


class SandboxHistory:
    """The simulated endpoint's windows at any instant, past or future (no clock: the world is
    a pure function of time). One traffic model per step asked for; each window is whole
    buckets of that step."""

    reads_history = True

    def __init__(
        self,
        sandbox: Sandbox,
        origin: float,
        endpoint: str = "",
        *,
        control: bool = False,
        serving: Sequence[tuple[float, str]] = (),
    ) -> None:
        self.sandbox = sandbox
        self.origin = origin
        self.endpoint = endpoint
        self.control = control
        self.baseline = next(iter(sandbox.variants))
        #: Who serves everyone from when on (instants, in order): the baseline before the first;
        #: a promoted rollout's candidate after its end, say (``impact``).
        self.serving = sorted(serving)
        self._models: dict[float, TrafficModel] = {}

    def serving_at(self, t: float) -> str:
        """The variant serving everyone at instant ``t``."""
        serving = self.baseline
        for at, variant in self.serving:
            if at <= t:
                serving = variant
        return serving

    def model(self, step: float) -> TrafficModel:
        """The traffic model on a grid of ``step`` seconds (one per step, kept)."""
        found = self._models.get(step)
        if found is None:
            lead = math.ceil(LEAD / step) * step
            seed = _seed(self.sandbox.seed, self.endpoint + ("\x1fcontrol" * self.control), step)
            world = shifted(self.sandbox, lead, seed=seed, variant_events=not self.control)
            found = self._models[step] = TrafficModel(world, self.origin - lead, step)
        return found

    def query(self, query: MetricsQuery) -> dict[str, Window]:
        """Each variant's window over ``[start, end)``: the traffic of the variant serving
        everyone then (:meth:`serving_at`), nothing for the others (``requests == 0``), no data
        for a name the sandbox does not simulate."""
        model = self.model(query.step)
        ks = model.buckets(query.start, query.end)
        names = {
            gate.name: custom_metric(gate.name, gate.query)
            for gate in query.gates
            if gate.metric == "custom"
        }
        out: dict[str, Window] = {}
        for variant in query.variants:
            if variant not in self.sandbox.variants:
                out[variant] = Window()
                continue
            # Bucket by bucket (not TrafficModel.records, which keeps a running total per
            # window start for a rollout's growing windows: a history never asks twice).
            records = Records()
            for k in ks:
                served = self.serving_at(model.bucket_start(k))
                records.add(model._bucket(variant, k, 100.0 if variant == served else 0.0))
            out[variant] = _window(records, names)
        return out

    def query_history(self, query: MetricsQuery) -> list[dict[str, Window]]:
        """Every ``step`` window of the query at once (one per step from ``start``)."""
        count = math.floor((query.end - query.start) / query.step + 1e-9)
        return [
            self.query(
                MetricsQuery(
                    query.start + i * query.step,
                    query.start + (i + 1) * query.step,
                    query.variants,
                    query.gates,
                    query.step,
                )
            )
            for i in range(count)
        ]
