"""The Azure ML data collector of the tests' world: as the ARM fake's clock passes each whole
minute, the requests its traffic model served in that minute (the live requests of every
deployment, and the mirrored copies ``mirrorTraffic`` sends to a deployment) are written as
data collector records (custom logging, collection ``model_outputs``) into a real blob container
(Azurite), in Azure ML's layout: append blobs
``modelDataCollector/{endpoint}/{deployment}/model_outputs/{yyyy}/{MM}/{dd}/{HH}/{instance}.jsonl``,
two instances per deployment (even and odd minutes), one JSON line a record.

The outputs come from a simple model per deployment: every request has a reference label
(``"0"``/``"1"``, even odds); a deployment answers it with probability ``agree``, else the other
label; then with probability ``shift`` its answer becomes ``"1"`` whatever (a drifting output).
A mirrored copy carries the live request's ``correlationid`` (and ``xrequestid``); requests that
failed (the model's errors) write no record. Per deployment and minute, the first two records
are one batched record whose rows carry a ``correlationid`` column each.

Only a deployment whose ``dataCollector`` has the ``model_outputs`` collection writes records.

Broken records (``broken=True``), in the first minute of each blob: a line that is not JSON, a
record without ``correlationid`` nor ``xrequestid`` (parsed, pairs with nothing), a base64 body,
and a body the collector says is in another blob (``datainblob``): the three unparsable ones are
counted in ``unparsable``, the id-less one in ``no_id``.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

MINUTE = 60.0


@dataclass(frozen=True)
class Outputs:
    agree: float = 1.0  # probability of answering the reference label
    shift: float = 0.0  # then, probability of answering "1" whatever


def stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DataCollectorWriter:
    """An ARM fake hook (``fake.hooks``) writing the data collector's records of one endpoint."""

    def __init__(
        self,
        fake: Any,
        ws: Any,
        endpoint: str,
        container: Any,
        outputs: dict[str, Outputs],
        *,
        origin: float,
        seed: int = 11,
        broken: bool = True,
    ) -> None:
        self.fake, self.ws, self.endpoint = fake, ws, endpoint
        self.container = container
        self.outputs = outputs
        self.next = MINUTE * -(-origin // MINUTE)
        self.seed = seed
        self.broken = broken
        self.created: set[str] = set()
        self.records: Counter[str] = Counter()  # valid records (predictions) written
        self.unparsable: Counter[str] = Counter()
        self.no_id: Counter[str] = Counter()
        self.mirrored: Counter[str] = Counter()  # mirrored copies answered (records written)
        #: (minute, deployment, correlation ids written): the pairs the source should find
        self.ids: dict[str, set[str]] = {}
        self.appends = 0
        self.lost = 0  # records that found no container

    def __call__(self) -> None:
        now = self.fake.clock.now()
        while self.next + MINUTE <= now:
            self._minute(self.next)
            self.next += MINUTE

    def _label(self, rng: random.Random, deployment: str, reference: str) -> str:
        model = self.outputs.get(deployment, Outputs())
        label = reference if rng.random() < model.agree else ("0" if reference == "1" else "1")
        return "1" if rng.random() < model.shift else label

    def _minute(self, t: float) -> None:
        model = self.fake.traffic_models.get(self.endpoint)
        if model is None:
            return
        history = self.fake.history.get(self.endpoint, [])
        mirror = self.fake.mirror_history.get(self.endpoint, [])
        rng = random.Random(f"{self.seed}:{self.endpoint}:{t}")
        lines: dict[str, list[tuple[float, str, str]]] = {}  # deployment -> (time, id, label)
        served: list[tuple[float, str, str]] = []  # the live requests: (time, id, reference)
        names = list(model.sandbox.variants)
        live = {name: model.window(name, t, t + MINUTE, history) for name in names}
        for name in names:
            n, errors = live[name].requests, live[name].errors or 0
            failed = set(rng.sample(range(n), min(n, errors)))
            for j in range(n):
                at = t + MINUTE * j / n
                cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                reference = "1" if rng.random() < 0.5 else "0"
                served.append((at, cid, reference))
                if j not in failed:
                    label = self._label(rng, name, reference)
                    lines.setdefault(name, []).append((at, cid, label))
        served.sort()
        for name in names:
            both = model.window(name, t, t + MINUTE, history, mirror=mirror)
            copies = both.requests - live[name].requests
            if copies <= 0:
                continue
            errors = (both.errors or 0) - (live[name].errors or 0)
            failed = set(rng.sample(range(copies), max(0, min(copies, errors))))
            for j in range(copies):
                if j < len(served):
                    at, cid, reference = served[j]
                else:  # more copies than live requests drawn: requests of their own
                    at = t + MINUTE * j / copies
                    cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                    reference = "1" if rng.random() < 0.5 else "0"
                if j not in failed:
                    lines.setdefault(name, []).append((at, cid, self._label(rng, name, reference)))
                    self.mirrored[name] += 1
        deployed = self.ws.deployments.get(self.endpoint, {})
        for name, items in lines.items():
            collector = (deployed.get(name) or {}).get("dataCollector") or {}
            if "model_outputs" not in collector.get("collections", {}):
                continue  # no data collector on this deployment: nothing is written
            items.sort()
            self._write(name, t, items, rng)

    def _record(self, deployment: str, at: float, data: Any, cid: str | None) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": f"{self.ws.id}/onlineEndpoints/{self.endpoint}/deployments/{deployment}",
            "type": "azureml.inference.model_outputs",
            "datacontenttype": "application/json",
            "time": stamp(at),
            "data": data,
        }
        if cid is not None:
            rec["correlationid"] = cid
            rec["xrequestid"] = cid
        rec.update(
            {
                "modelversion": "default",
                "collectdatatype": "pandas.core.frame.DataFrame",
                "agent": "azureml-ai-monitoring/0.1.0b4",
            }
        )
        return rec

    def _write(
        self, deployment: str, t: float, items: list[tuple[float, str, str]], rng: random.Random
    ) -> None:
        hour = dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y/%m/%d/%H")
        instance = ("a1f0c9e2", "b7d3e4f5")[int(t // MINUTE) % 2]
        name = (
            f"modelDataCollector/{self.endpoint}/{deployment}/model_outputs/{hour}/{instance}.jsonl"
        )
        out: list[str] = []
        ids = self.ids.setdefault(deployment, set())
        if self.broken and name not in self.created:
            at = items[0][0] if items else t
            out.append('{"specversion":"1.0","id":"cut-short","data":[{"label"')
            out.append(json.dumps(self._record(deployment, at, [{"label": "1"}], None)))
            blob = self._record(deployment, at, base64.b64encode(b'{"label": "1"}').decode(), "b")
            blob["datacontenttype"] = "application/octet-stream"
            out.append(json.dumps(blob))
            inblob = self._record(deployment, at, "https://store/modeldata/mdc/x", "c")
            inblob["datainblob"] = "true"
            out.append(json.dumps(inblob))
            self.unparsable[deployment] += 3
            self.no_id[deployment] += 1
        start = 0
        if len(items) >= 2:  # a batched record: two rows, each with its correlationid column
            rows = [
                {"label": label, "score": round(rng.random(), 3), "correlationid": cid}
                for _, cid, label in items[:2]
            ]
            out.append(json.dumps(self._record(deployment, items[0][0], rows, items[0][1])))
            start = 2
        for at, cid, label in items[start:]:
            row = {"label": label, "score": round(rng.random(), 3)}
            out.append(json.dumps(self._record(deployment, at, [row], cid)))
        self.records[deployment] += len(items)
        ids.update(cid for _, cid, _ in items)
        from azure.core.exceptions import ResourceNotFoundError

        blob_client = self.container.get_blob_client(name)
        data = ("\n".join(out) + "\n").encode()
        try:
            if name not in self.created:
                blob_client.create_append_blob()
                self.created.add(name)
            for i in range(0, len(data), 4 << 20):  # an append block holds 4 MiB at most
                blob_client.append_block(data[i : i + (4 << 20)])
                self.appends += 1
        except ResourceNotFoundError:  # the container is gone: the collector loses them
            self.lost += len(items)
