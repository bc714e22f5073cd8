"""Capture at scale: reading, pairing and judging captured records in one look.

Writes JSON-lines capture (both variants answer every request; each record's body is
``{"predictions": [p]}`` read at ``$.predictions[0]``; a partner arrives within a few records, as
an application logging both answers does; 0.1 % broken lines), then, in a fresh process per
size, times one look: :class:`~mlrollout.capture.jsonl.JsonlCapture` reads and pairs the files
and a :class:`~mlrollout.analysis.GateSet` judges ``agreement`` and ``prediction_drift`` on the
summary. Prints the seconds of the look and the process's peak RSS, which must stay flat in the
number of records (only counts, bins and the ids not paired yet are kept).

    python benchmarks/capture.py                  # 100,000 and 1,000,000 records
    python benchmarks/capture.py --records 200000 # one size

Targets (issue 16): 100,000 records in at most 1 s; 1,000,000 under 300 MB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

T0 = 1_700_000_000.0


def write(folder: Path, records: int, seed: int = 1) -> None:
    """``records`` records (half per variant) in two files, partners close together."""
    rng = random.Random(seed)
    pairs = records // 2
    with (folder / "a.jsonl").open("w") as a, (folder / "b.jsonl").open("w") as b:
        lines: list[str] = []
        for i in range(pairs):
            base = round(rng.random(), 3)
            cand = base if rng.random() < 0.98 else round(rng.random(), 3)
            t = T0 + i * 0.01
            for variant, value in (("v6", base), ("v7", cand)):
                if rng.random() < 0.001:
                    lines.append('{"variant": "' + variant + '", "output": {"predic\n')
                    continue
                record = {
                    "inference_id": f"req-{i:08d}",
                    "variant": variant,
                    "output": {"predictions": [value]},
                    "time": t,
                }
                lines.append(json.dumps(record) + "\n")
            if len(lines) >= 4096:
                rng.shuffle(lines)  # partners a few records apart, not adjacent
                (a if i % 2 else b).writelines(lines)
                lines = []
        (a if pairs % 2 else b).writelines(lines)


def one_look(folder: str, records: int) -> dict[str, float]:
    """Time one look in this process (imports excluded)."""
    from mlrollout.analysis import GateSet
    from mlrollout.capture import CaptureQuery
    from mlrollout.capture.jsonl import JsonlCapture
    from mlrollout.contracts import Window
    from mlrollout.plan.model import Analysis

    gates = GateSet.from_plan(
        Analysis.model_validate(
            {
                "gates": [
                    {"name": "agree", "metric": "agreement", "min": "97%", "tolerance": 0.001},
                    {"name": "drift", "metric": "prediction_drift", "max": 0.2},
                ]
            }
        )
    )
    query = CaptureQuery(T0, T0 + records, "v6", "v7", "$.predictions[0]", 0.001)
    started = time.perf_counter()
    source = JsonlCapture(folder)
    summary = source.read(query)
    read = time.perf_counter() - started
    verdict = gates.look(Window(requests=summary.paired, predictions=summary), Window())
    total = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "records": float(sum(summary.records.values())),
        "paired": float(summary.paired),
        "unparsed": float(sum(summary.unparsed.values())),
        "read_s": read,
        "look_s": total,
        "peak_mb": peak,
        "mb_read": source.bytes_read / 1e6,
        "outcomes": float(len(verdict.gates)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, action="append")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_look(args.child, args.records[0])))
        return
    sizes = args.records or [100_000, 1_000_000]
    print(f"{'records':>10} {'paired':>9} {'unparsed':>8} {'MB':>6} {'read s':>7} "
          f"{'look s':>7} {'peak RSS MB':>11}")  # fmt: skip
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            write(Path(tmp), n)
            out = subprocess.run(
                [sys.executable, __file__, "--child", tmp, "--records", str(n)],
                check=True,
                capture_output=True,
                text=True,
            )
            r = json.loads(out.stdout)
            print(
                f"{r['records']:>10,.0f} {r['paired']:>9,.0f} {r['unparsed']:>8,.0f} "
                f"{r['mb_read']:>6.1f} {r['read_s']:>7.3f} {r['look_s']:>7.3f} "
                f"{r['peak_mb']:>11.1f}"
            )


if __name__ == "__main__":
    main()
