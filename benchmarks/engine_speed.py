"""How fast the core is: sandbox rollouts end to end, and CLI start-up.

Prints a table and a JSON line. Run: .venv/bin/python benchmarks/engine_speed.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlrollout.engine.events import LOOK_KINDS
from mlrollout.engine.runner import Runner
from mlrollout.plan.loader import load_plan
from mlrollout.state.sqlite import SqliteStateStore

ROOT = Path(__file__).resolve().parents[1]
PLANS = ["local-canary-bad.yaml", "local-canary-good.yaml", "local-linear.yaml"]
REPEAT = 5


def rollout_once(plan: Path, folder: Path) -> tuple[float, float, int, int]:
    store = SqliteStateStore(folder / "state.db")
    loaded = load_plan(str(plan))
    started = time.perf_counter()
    runner = Runner(store)
    record = runner.create(loaded)
    runner.drive(record.id)
    wall = time.perf_counter() - started
    events = store.events(record.id)
    looks = sum(1 for e in events if e.kind in LOOK_KINDS)
    store.close()
    return wall, events[-1].at - events[0].at, len(events), looks


def command_time(args: list[str], repeat: int = 7) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    rows = []
    for name in PLANS:
        samples = []
        for _ in range(REPEAT):
            with tempfile.TemporaryDirectory() as tmp:
                samples.append(rollout_once(ROOT / "plans" / name, Path(tmp)))
        wall = statistics.median(s[0] for s in samples)
        _, simulated, events, looks = samples[0]
        rows.append(
            {
                "plan": name,
                "wall_ms": round(wall * 1000, 1),
                "simulated_minutes": round(simulated / 60, 1),
                "events": events,
                "looks": looks,
                "ms_per_look": round(wall * 1000 / max(1, looks), 2),
            }
        )
    exe = str(Path(sys.executable).with_name("mlrollout"))
    startup = {
        "mlrollout --help": command_time([exe, "--help"]),
        "python -c 'import typer'": command_time([sys.executable, "-c", "import typer"]),
        "python -c 'pass'": command_time([sys.executable, "-c", "pass"]),
        "plan validate": command_time([exe, "plan", "validate", str(ROOT / "plans" / PLANS[0])]),
    }
    with tempfile.TemporaryDirectory() as tmp:
        startup["mlrollout demo"] = command_time([exe, "--state", tmp, "demo"], repeat=3)
    print(f"{'plan':26} {'wall ms':>8} {'sim min':>8} {'events':>7} {'looks':>6} {'ms/look':>8}")
    for r in rows:
        print(
            f"{r['plan']:26} {r['wall_ms']:8} {r['simulated_minutes']:8} {r['events']:7} "
            f"{r['looks']:6} {r['ms_per_look']:8}"
        )
    print()
    for label, seconds in startup.items():
        print(f"{label:28} {seconds * 1000:7.0f} ms (median)")
    print(
        json.dumps(
            {"rollouts": rows, "startup_ms": {k: round(v * 1000, 1) for k, v in startup.items()}}
        )
    )


if __name__ == "__main__":
    main()
