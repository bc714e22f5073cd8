"""The plan's ``notify`` webhooks: a JSON POST for each event a person would want to hear about.

A webhook never holds a rollout up for long and never stops it: each POST has a short timeout, a
failure is reported once per URL on stderr and the rollout goes on. A bearer token, if any, comes
from ``MLROLLOUT_WEBHOOK_TOKEN`` and is never written anywhere.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from mlrollout.report.console import describe_event, iso

if TYPE_CHECKING:
    from mlrollout.engine.engine import RolloutState
    from mlrollout.state.base import Event

#: Events worth a message: the changes and the decisions, not every look.
NOTIFY_KINDS = frozenset(
    {
        "started",
        "set_traffic.applied",
        "analysis.failed",
        "analysis.inconclusive",
        "waiting",
        "paused",
        "approved",
        "promote.forced",
        "rollback.started",
        "rolled_back",
        "promoted",
        "aborted",
        "adopted",
    }
)
TIMEOUT = 3.0
TOKEN_ENV = "MLROLLOUT_WEBHOOK_TOKEN"

Post = Callable[[str, bytes, dict[str, str]], None]


def _post(url: str, body: bytes, headers: dict[str, str]) -> None:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:  # the plan checks http(s)
        response.read()


class WebhookNotifier:
    """A listener that POSTs ``{"rollout", "name", "kind", "phase", "at", "message", "data"}``."""

    def __init__(self, urls: Sequence[str], rollout_id: str, name: str, post: Post = _post) -> None:
        self.urls = list(urls)
        self.rollout_id = rollout_id
        self.name = name
        self.post = post
        self.failed: set[str] = set()

    def __call__(self, event: Event, state: RolloutState) -> None:
        if event.kind not in NOTIFY_KINDS:
            return
        payload: dict[str, Any] = {
            "rollout": self.rollout_id,
            "name": self.name,
            "kind": event.kind,
            "phase": state.phase,
            "at": iso(event.at),
            "message": describe_event(event, state),
            "data": event.data,
        }
        body = json.dumps(payload, default=str).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "mlrollout"}
        token = os.environ.get(TOKEN_ENV)
        if token:
            headers["Authorization"] = f"Bearer {token}"
        for url in self.urls:
            try:
                self.post(url, body, headers)
            except (OSError, urllib.error.URLError, ValueError) as exc:
                if url not in self.failed:
                    self.failed.add(url)
                    reason = getattr(exc, "reason", None) or type(exc).__name__
                    sys.stderr.write(
                        f"warning: webhook {_safe(url)} failed ({reason}); the rollout goes on\n"
                    )


def _safe(url: str) -> str:
    """The URL without its query string (tokens sometimes ride there)."""
    return url.split("?", 1)[0]
