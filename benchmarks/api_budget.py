"""What the API budgets (issue 21, part 5; ``mlrollout.budget``) hold a fleet's calls to: many
workers of one process reading SageMaker endpoints of one account and region as fast as they
can, through the real SageMaker adapter and boto3, over HTTP to moto's server, on the wall clock.

Each case runs ``--workers`` threads for ``--seconds``, each calling ``DescribeEndpoint`` (the
adapter's ``_raw``, what every tick does) in a loop, and prints the calls made per second
against what the bucket allows: its share of SageMaker's read rate, plus one burst.

- ``no budget``: the adapter without a meter (as before the budgets): what moto answers;
- ``share 50 %`` (the default) and ``share 100 %``: the budget's bucket of reads (10/s, burst 20,
  a conservative figure: SageMaker publishes no control-plane rate), so at most
  ``rate x elapsed + burst`` calls (a worker that took its token before the end waits for it, so
  a case lasts a little longer than ``--seconds``).

Run: .venv/bin/python benchmarks/api_budget.py [--workers 16] [--seconds 10]
Prints a table and one JSON line.

Measured 2026-12-02 (2 cores, the test suite running beside it), 16 workers, 10 s a case:
no budget 1,489 calls (147/s: moto's pace); share 50 % 75 calls in 13.0 s (5.75/s; 75.2
allowed); share 100 % 135 calls in 11.6 s (11.7/s; 135.5 allowed).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import boto3
from mlrollout_aws._aws import budget_meter
from mlrollout_aws.sagemaker import SageMakerEndpoint
from moto.server import ThreadedMotoServer

from mlrollout import budget
from mlrollout.clock import SystemClock

REGION = "us-east-1"


def endpoint(url: str) -> None:
    sm = boto3.client("sagemaker", region_name=REGION, endpoint_url=url)
    sm.create_model(
        ModelName="m1",
        ExecutionRoleArn="arn:aws:iam::123456789012:role/sm",
        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/m:1"},
    )
    sm.create_endpoint_config(
        EndpointConfigName="c1",
        ProductionVariants=[
            {
                "VariantName": "v1",
                "ModelName": "m1",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.m5.large",
            }
        ],
    )
    sm.create_endpoint(EndpointName="churn", EndpointConfigName="c1")


def run(url: str, workers: int, seconds: float, share: float | None) -> dict[str, Any]:
    budget.reset()
    clock = SystemClock()
    meter = None
    if share is not None:
        budget.configure(share=share)
        meter = budget_meter(clock, region=REGION)
    stop = time.monotonic() + seconds
    counts = [0] * workers

    def work(i: int) -> None:
        client = boto3.client("sagemaker", region_name=REGION, endpoint_url=url)
        adapter = SageMakerEndpoint("churn", client, clock, region=REGION, meter=meter)
        while time.monotonic() < stop:
            adapter._raw()
            counts[i] += 1

    started = time.monotonic()
    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - started
    calls = sum(counts)
    allowed = None
    if share is not None:
        limit = budget.LIMITS[("sagemaker", "read")]
        allowed = round(limit.rate * share / 100 * took + max(1.0, limit.burst * share / 100), 1)
    row = {"case": "no budget" if share is None else f"share {share:g} %", "calls": calls}
    row |= {"seconds": round(took, 2), "per_second": round(calls / took, 2), "allowed": allowed}
    if share is not None:
        [bucket] = budget.snapshot()
        row |= {"waits": bucket["waits"], "waited_s": bucket["waited_s"]}
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    import os

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    try:
        endpoint(url)
        rows = [run(url, args.workers, args.seconds, share) for share in (None, 50.0, 100.0)]
    finally:
        server.stop()
    print(f"{args.workers} workers, {args.seconds:g} s each case, DescribeEndpoint in a loop:")
    for r in rows:
        allowed = "" if r["allowed"] is None else f" (at most {r['allowed']:g} allowed)"
        print(f"  {r['case']:12} {r['calls']:6d} calls, {r['per_second']:8.2f}/s{allowed}")
    print(json.dumps({"workers": args.workers, "seconds": args.seconds, "cases": rows}))


if __name__ == "__main__":
    main()
