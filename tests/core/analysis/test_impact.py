"""The interrupted-time-series impact estimate (:mod:`mlrollout.analysis.impact`) on the
sandbox's history: a known +3 % level shift of a conversion rate under a x3 daily traffic cycle,
no shift, and a trend before the rollout."""

from __future__ import annotations

import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from mlrollout.analysis.impact import Impact, chart, estimate
from mlrollout.history import read_history
from mlrollout.plan.model import Gate, Sandbox
from mlrollout.sandbox.history import SandboxHistory

T0 = 1_800_000_000.0  # the rollout's first traffic change (the sandbox's world zero)
END = T0 + 1800  # its end
DAY = 86400.0
RATE = 0.10
CONVERSION = Gate(name="conversion", metric="custom", query={"metric": "conversion"})


def world(seed: int, events: list[dict[str, Any]] | None = None) -> Sandbox:
    return Sandbox.model_validate(
        {
            "seed": seed,
            "rps": {"base": 100, "daily_swing": 3},
            "variants": {"v1": {"custom": {"conversion": RATE}}, "v2": {}},
            "events": events or [],
        }
    )


def shift(relative: float) -> list[dict[str, Any]]:
    """The conversion rate moves by ``relative`` at the rollout's start."""
    return [{"at": "0s", "variant": "v1", "custom": {"conversion": RATE * (1 + relative)}}]


def impact(
    sandbox: Sandbox, *, days: float = 7, control: Sandbox | None = None, step: float = 3600
) -> Impact:
    source = SandboxHistory(sandbox, T0, "shop")
    read = dict(step=step, variants=["v1"], gates=[CONVERSION])
    pre = read_history(source, start=T0 - days * DAY, end=T0, **read)  # type: ignore[arg-type]
    post = read_history(source, start=END, end=END + days * DAY, **read)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    if control is not None:
        other = SandboxHistory(control, T0, "other", control=True)
        cpre = read_history(other, start=T0 - days * DAY, end=T0, **read)  # type: ignore[arg-type]
        cpost = read_history(other, start=END, end=END + days * DAY, **read)  # type: ignore[arg-type]
        kwargs = dict(
            control_before=cpre.values(CONVERSION),
            control_after=cpost.values(CONVERSION),
            control="endpoint=other",
        )
    return estimate(
        pre.values(CONVERSION),
        post.values(CONVERSION),
        change=(T0, END),
        metric="conversion",
        rate=True,
        step=step,
        **kwargs,
    )


def test_a_known_three_percent_shift_is_inside_the_interval() -> None:
    covered = significant = 0
    for seed in range(10):
        result = impact(world(seed, shift(0.03)))
        covered += result.effect.lower <= RATE * 0.03 <= result.effect.upper
        significant += result.significant and result.effect.absolute > 0
    assert covered >= 8  # 95 % intervals: fewer than 8 of 10 happens 1 % of the time
    assert significant == 10  # and the shift is far outside the noise at 100 req/s
    assert result.seasonality == "hour-of-day" and not result.trend  # none before it
    assert result.effect.relative is not None
    assert 0.02 < result.effect.relative < 0.04
    assert result.before == result.after == 168  # the rollout's half hour is left out


def test_with_no_shift_the_interval_covers_zero() -> None:
    covers = sum(impact(world(seed)).effect.covers_zero for seed in range(10))
    assert covers >= 8


def test_the_placebo_flags_a_trend_before_the_rollout() -> None:
    # The conversion rate creeps up 0.2 % every six hours over the week before the rollout.
    ramp = [
        {"at": f"{-7 * DAY + i * 21600:.0f}s", "variant": "v1",
         "custom": {"conversion": RATE * (1 + 0.002 * i)}}
        for i in range(28)
    ]  # fmt: skip
    trended = impact(world(0, ramp))
    assert trended.placebo is not None and trended.placebo.flagged
    assert trended.placebo.trend_per_day is not None and trended.placebo.trend_per_day > 0
    assert trended.placebo.trend_p_value is not None and trended.placebo.trend_p_value < 0.01
    assert trended.trend  # so the model fits one (auto), and says so
    assert any("the same linear trend" in a for a in trended.assumptions)
    stable = impact(world(0, shift(0.03)))
    assert stable.placebo is not None and not stable.placebo.flagged


def test_a_control_endpoint_makes_it_a_difference_in_differences() -> None:
    result = impact(world(1, shift(0.03)), control=world(1))
    assert result.control == "endpoint=other"
    assert result.effect.lower <= RATE * 0.03 <= result.effect.upper
    assert any("difference-in-differences" in a for a in result.assumptions)
    assert not any(a.startswith("observational") for a in result.assumptions)


def test_a_trend_can_be_forced_on_and_widens_the_interval() -> None:
    auto = impact(world(5, shift(0.03)))
    source = SandboxHistory(world(5, shift(0.03)), T0, "shop")
    read = dict(step=3600, variants=["v1"], gates=[CONVERSION])
    pre = read_history(source, start=T0 - 7 * DAY, end=T0, **read)  # type: ignore[arg-type]
    post = read_history(source, start=END, end=END + 7 * DAY, **read)  # type: ignore[arg-type]
    forced = estimate(
        pre.values(CONVERSION),
        post.values(CONVERSION),
        change=(T0, END),
        metric="conversion",
        rate=True,
        step=3600,
        trend=True,
    )
    assert not auto.trend and forced.trend
    width = forced.effect.upper - forced.effect.lower
    assert width > auto.effect.upper - auto.effect.lower


def test_a_short_history_drops_the_seasonality_and_says_so() -> None:
    result = impact(world(2, shift(0.03)), days=1)
    assert result.seasonality == "none"
    assert result.effect.lower <= RATE * 0.03 <= result.effect.upper
    assert any("no daily pattern" in a for a in result.assumptions)


def test_the_assumptions_are_said_in_words() -> None:
    text = " ".join(impact(world(3)).assumptions)
    assert "observational: a concurrent change elsewhere" in text
    assert "Newey-West" in text and "left out" in text


def test_the_result_is_json_ready_and_the_chart_is_one_svg() -> None:
    import json

    result = impact(world(4, shift(0.03)), days=3)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["significant"] is True and data["effect"]["lower"] > 0
    assert len(data["fitted"]) == result.before + result.after
    svg = chart(result)
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and "conversion" in svg
    assert re.search(r"effect \+0\.\d+pp \(\+[23]\.\d+%\)", svg), svg[:300]


def test_importing_the_module_does_not_import_statsmodels() -> None:
    code = (
        "import sys, mlrollout.analysis.impact, mlrollout.cli.impact_cmds\n"
        "print('statsmodels' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_two_hundred_seeds_cover_the_shift_and_zero_at_95_percent() -> None:
    effects = [impact(world(s, shift(0.03))).effect for s in range(200)]
    shifted = sum(e.lower <= RATE * 0.03 <= e.upper for e in effects)
    zero = sum(impact(world(s)).effect.covers_zero for s in range(200))
    assert shifted >= 190 and zero >= 190
