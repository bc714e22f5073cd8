"""How `reconcile` scales (issue 21): one pass over 100 / 300 / 1,000 active rollouts on SQLite and
on S3 (moto's server, over real HTTP through boto3), with the number of state-store calls per
pass (counted by wrapping the store; on S3 also the HTTP requests), and the memory of
`reconcile --watch` over 10,000 passes.

The rollouts are sandbox canaries on sped-up time (``speed: 1``, so not virtual: a pass does one
rollout's due work and moves on, as on a real endpoint). The wall clock of the store and the
runner is injected, so "a minute later" needs no waiting:

- *start*: the first pass starts every rollout (prepare the candidate, first traffic step);
- *idle*: a pass right after it, when nothing is due (the common case for a cron job);
- *look*: a pass a minute later, when every rollout has a look due (a metrics read, a verdict,
  a journal write).

Targets: a pass over 1,000 rollouts within 2 s on SQLite and 20 s on S3, calls growing linearly.

Run: .venv/bin/python benchmarks/reconcile.py [--sizes 100,300,1000] [--backends sqlite,s3]
     [--passes 10000] [--no-memory] [--workers 8]
Prints a table per part and one JSON line with every figure.

Measured 2026-12-02, fourth session (2 cores; `.venv/bin/python benchmarks/reconcile.py --sizes
100,1000 --backends sqlite,s3 --no-memory`), 1,000 rollouts, previous figures in brackets:

- calls per pass are linear: idle 0 store calls per rollout + 2 (the listing and the due index),
  a look 8 per rollout (9); on S3 1 HTTP request per idle rollout (1), 14 per look (16): a drive's
  first tick no longer re-reads the journal for commands it read under the lease.
- SQLite: idle pass 0.03 s (0.05 s), look pass 1.62 s (2.65 s; target 2 s: met).
- S3 on moto's server: idle 5.6 s (4.4 s on a busier run), look 75 s (71 s), with 8 workers
  58 s (55 s); a new watcher's first pass, when nothing is due, 6.3 s and 1 request per
  rollout (it drove every rollout: 11 requests each). The look pass is moto's pace, 5.4 ms a
  request here: even the fewest requests a safe look can make (take the lease, read the record,
  check the fence, write the event and the record, hand the lease back: 7) would take 38 s. The
  4 sandbox endpoint reads of each look are the sandbox's (a cloud endpoint's reads go to its
  platform, not the state store).
- `reconcile --watch`, 10,000 passes over a stream of 180 rollouts (20 active at a time):
  Python objects flat (38.9k at pass 1, 39.0k at pass 10,000), RSS 44.3-46.0 MiB. Before the
  plan cache was bounded by the active rollouts it grew with every ended one (44.3k objects at
  pass 1, 54.3k at pass 10,000, RSS 44.5 to 48.4 MiB: each ended rollout's parsed plan kept).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlrollout.clock import VirtualClock
from mlrollout.engine.runner import Runner
from mlrollout.engine.watch import Watcher
from mlrollout.plan.loader import parse_plan
from mlrollout.state.base import StateStore
from mlrollout.state.sqlite import SqliteStateStore

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = (ROOT / "plans" / "local-canary-good.yaml").read_text()
START = 1_800_000_000.0
#: Seconds after the start when the first look of the plan is due (analysis delay + interval).
LOOK_AFTER = 120.0


class CountingStore:
    """Any state store, with every call counted by method name (what a pass costs the store).
    Several wrappers (one per worker) may share one counter."""

    def __init__(self, inner: StateStore, calls: Counter[str] | None = None) -> None:
        self._inner = inner
        self.calls: Counter[str] = Counter() if calls is None else calls
        self.location = inner.location

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return attr(*args, **kwargs)

        return counted


def plan(endpoint: str, speed: str = "1") -> str:
    text = TEMPLATE.replace("endpoint: churn-scoring", f"endpoint: {endpoint}")
    return text.replace("speed: max", f"speed: {speed}")


# ----------------------------------------------------------------------------------- backends

StoreFactory = Callable[[], StateStore]


@contextmanager
def sqlite_backend(wall: VirtualClock) -> Iterator[StoreFactory]:
    with tempfile.TemporaryDirectory() as tmp:
        stores: list[SqliteStateStore] = []

        def open_store() -> StateStore:
            stores.append(SqliteStateStore(Path(tmp) / "state.db", wall=wall.now))
            return stores[-1]

        yield open_store
        for store in stores:
            store.close()


class MotoS3:
    """moto's server in a process of its own on 127.0.0.1 (as S3 is a server elsewhere: its
    work does not share this process's interpreter lock), one bucket; boto3 reaches it over
    HTTP. Counts the HTTP requests the state stores send."""

    def __init__(self, log: Path) -> None:
        import boto3

        from mlrollout.testing.peers import free_port

        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }.items():
            os.environ[name] = value
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            os.environ.pop(name, None)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        self._log = log.open("wb")
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT)
        client = boto3.client("s3", region_name="us-east-1", endpoint_url=self.url)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket="rollouts")
                break
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise SystemExit(f"moto's server did not start; see {log}") from None
                time.sleep(0.1)
        self.requests: Counter[str] = Counter()
        self.runs = 0

    @contextmanager
    def backend(self, wall: VirtualClock) -> Iterator[StoreFactory]:
        from mlrollout_aws.s3state import S3StateStore

        self.runs += 1
        prefix = f"bench/{self.runs}"

        def count(event_name: str = "before-send.s3", **kwargs: Any) -> None:
            self.requests[event_name.rsplit(".", 1)[-1]] += 1  # one per HTTP attempt

        def open_store() -> StateStore:
            store = S3StateStore(
                "rollouts", prefix, region="us-east-1", endpoint_url=self.url, wall=wall.now
            )
            store.client.meta.events.register("before-send.s3", count)
            return store

        yield open_store

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)
        self._log.close()


# --------------------------------------------------------------------------------- one pass


def serial_pass(runner: Runner) -> list[tuple[Any, Any]]:
    """What `mlrollout reconcile` does: one pass, one rollout after the other."""
    return list(runner.reconcile())


def measure(
    name: str, do: Callable[[], list[tuple[Any, Any]]], calls: Counter[str], http: Counter[str]
) -> dict[str, Any]:
    calls.clear()
    http.clear()
    started = time.perf_counter()
    results = do()
    seconds = time.perf_counter() - started
    failed = [(r.id, repr(x)) for r, x in results if isinstance(x, Exception)]
    if failed:
        raise SystemExit(f"{name}: the pass failed for {len(failed)} rollouts, e.g. {failed[0]}")
    row: dict[str, Any] = {
        "rollouts": len(results),
        "seconds": round(seconds, 3),
        "store_calls": sum(calls.values()),
        "by_call": dict(sorted(calls.items())),
    }
    if http:
        row["http_requests"] = sum(http.values())
        row["http_by_operation"] = dict(sorted(http.items()))
    return row


def one_size(backend: str, size: int, s3: MotoS3 | None, workers: int) -> dict[str, Any]:
    wall = VirtualClock(START)
    calls: Counter[str] = Counter()
    http = s3.requests if s3 is not None else Counter()
    with sqlite_backend(wall) if s3 is None else s3.backend(wall) as open_store:

        def counted() -> StateStore:
            return CountingStore(open_store(), calls)  # type: ignore[return-value]

        store = counted()
        runner = Runner(store, wall=wall.now, holder="bench@host pid 1")
        created = time.perf_counter()
        for i in range(size):
            runner.create(parse_plan(plan(f"ep{i:05d}"), "bench.yaml"))
        row: dict[str, Any] = {"backend": backend, "rollouts": size}
        row["create_s"] = round(time.perf_counter() - created, 2)
        row["start"] = measure("start", lambda: serial_pass(runner), calls, http)
        row["idle"] = measure("idle", lambda: serial_pass(runner), calls, http)
        wall.advance(LOOK_AFTER)
        row["look"] = measure("look", lambda: serial_pass(runner), calls, http)
        if workers > 1:
            # the same two passes by `reconcile --watch --workers N` (a fresh watcher: it has
            # not seen these rollouts, so every one is due, as in a single pass)
            def watched() -> list[tuple[Any, Any]]:
                watcher = Watcher(counted, workers=workers, clock=wall, holder="w@host pid 1")
                pool = ThreadPoolExecutor(workers)
                try:
                    report = watcher.run_pass(pool)
                finally:
                    pool.shutdown()
                    watcher.close()
                return [(d.record, d.result) for d in report.done]

            row[f"idle_workers_{workers}"] = measure("idle/watch", watched, calls, http)
            wall.advance(60.0)
            row[f"look_workers_{workers}"] = measure("look/watch", watched, calls, http)
        store.close()
    return row


def scaling(
    backend: str, sizes: list[int], s3: MotoS3 | None, workers: int
) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        row = one_size(backend, size, s3, workers)
        rows.append(row)
        line = f"{backend:6} {size:5}"
        for key in ("start", "idle", "look", f"idle_workers_{workers}", f"look_workers_{workers}"):
            if key in row:
                r = row[key]
                line += f"  {key} {r['seconds']:6.2f}s {r['store_calls'] / size:4.1f} calls"
                if "http_requests" in r:
                    line += f" {r['http_requests'] / size:4.1f} http"
        print(line + " (per rollout)", flush=True)
    return rows


# ----------------------------------------------------------------------------------- memory


def rss_kib() -> int:
    """The resident set size now (Linux), in KiB; the peak where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory(passes: int, active: int = 20) -> dict[str, Any]:
    """`reconcile --watch` over ``passes`` passes on a steady stream of sped-up rollouts (``active``
    at any time; each one that ends is replaced by a new one on a new endpoint), on a virtual
    clock: the watcher's sleeps jump."""
    clock = VirtualClock(START)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "state.db"
        store = SqliteStateStore(path, wall=clock.now)
        runner = Runner(store, wall=clock.now, holder="creator")
        made = 0
        for _ in range(active):
            runner.create(parse_plan(plan(f"m{made}", speed="60"), "m.yaml"))
            made += 1
        watcher = Watcher(lambda: SqliteStateStore(path, wall=clock.now), interval=30, clock=clock)
        samples = []
        ended = 0
        started = time.perf_counter()
        checkpoints = {1, 100, *range(passes // 10, passes + 1, passes // 10)}
        for n in range(1, passes + 1):
            report = watcher.run_pass()
            for _ in report.ended:
                ended += 1
                runner.create(parse_plan(plan(f"m{made}", speed="60"), "m.yaml"))
                made += 1
            clock.sleep(report.next_in)
            if n in checkpoints:
                gc.collect()
                samples.append(
                    {
                        "pass": n,
                        "rss_kib": rss_kib(),
                        "objects": len(gc.get_objects()),
                        "known": len(watcher._seen),
                        "ended": ended,
                    }
                )
                s = samples[-1]
                print(
                    f"pass {n:6}: rss {s['rss_kib'] / 1024:7.1f} MiB, {s['objects']:7} objects, "
                    f"{s['known']:3} rollouts known, {ended:5} ended so far",
                    flush=True,
                )
        seconds = time.perf_counter() - started
        watcher.close()
        store.close()
    later = [s for s in samples if s["pass"] >= passes // 10]
    return {
        "passes": passes,
        "seconds": round(seconds, 1),
        "ended": ended,
        "rss_growth_kib_after_first_tenth": later[-1]["rss_kib"] - later[0]["rss_kib"],
        "objects_growth_after_first_tenth": later[-1]["objects"] - later[0]["objects"],
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--backends", default="sqlite,s3")
    parser.add_argument("--workers", type=int, default=8, help="for the --watch passes on S3")
    parser.add_argument("--passes", type=int, default=10_000)
    parser.add_argument("--no-memory", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    figures: dict[str, Any] = {"scaling": []}
    for backend in filter(None, args.backends.split(",")):
        if backend == "sqlite":
            figures["scaling"] += scaling("sqlite", sizes, None, 1)
        elif backend == "s3":
            with tempfile.TemporaryDirectory() as tmp:
                s3 = MotoS3(Path(tmp) / "moto.log")
                try:
                    figures["scaling"] += scaling("s3", sizes, s3, args.workers)
                finally:
                    s3.stop()
        else:
            raise SystemExit(f"unknown backend {backend!r} (sqlite, s3)")
    if not args.no_memory:
        figures["memory"] = memory(args.passes)
    json.dump(figures, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
