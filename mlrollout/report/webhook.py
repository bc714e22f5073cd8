"""The plan's ``notify`` webhooks: a JSON POST for each event a person would want to hear about.

A webhook never delays a decision, a traffic change or a rollback, and never stops a rollout. The
listener only queues the event; a daemon thread per URL delivers it, each POST within a total
deadline (connecting, sending and every read together, not a timeout per read, so a receiver that
answers one byte at a time is cut off too). Each URL's queue is bounded: when it is full the
*oldest* waiting event is dropped and counted, so the latest news (the outcome) survives. A failing
URL is reported once on stderr, without its query string or credentials. When the run ends,
:meth:`WebhookNotifier.close` delivers what is still queued for a bounded time only, then gives up
and says how many notifications were not delivered.

Each hook has its own body format (mlrollout's JSON, a Slack message, a Teams card), its own
event filter (``on``), its own bearer token (``token_env``, else ``MLROLLOUT_WEBHOOK_TOKEN``) and
may take its URL from the environment (``url_env``: a Slack or Teams URL is itself a secret).
Tokens and environment URLs are read when the rollout opens and never written anywhere.

The queue, the delivery threads, the deadline and the bounded close are :class:`QueuedNotifier`'s;
:class:`WebhookNotifier` and the Pushgateway's
:class:`~mlrollout.report.pushgateway.PushgatewayNotifier` only say what to send for an event.
"""

from __future__ import annotations

import atexit
import base64
import http.client
import io
import json
import os
import socket
import ssl
import sys
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypedDict, cast
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

from mlrollout.engine.events import NOTIFY_KINDS
from mlrollout.report.console import describe_event, iso

if TYPE_CHECKING:
    from mlrollout.engine.engine import RolloutState
    from mlrollout.plan.model import Notification, Plan
    from mlrollout.state.base import Event

#: Wall-clock seconds one POST may take in all: connect, TLS, send, status, headers, body.
DEADLINE = 5.0
#: Wall-clock seconds, all URLs together, that ``close`` spends delivering what is still queued.
FLUSH_TIMEOUT = 5.0
#: Events waiting per URL; beyond it the oldest waiting one is dropped (and counted).
QUEUE_SIZE = 100
TOKEN_ENV = "MLROLLOUT_WEBHOOK_TOKEN"

#: ``post(url, body, headers, seconds)``: deliver within ``seconds`` in all, or raise.
Post = Callable[[str, bytes, dict[str, str], float], None]


class _Refused(Exception):
    """The receiver answered, but not with a 2xx."""


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """Reads from a socket, each read allowed only the time left before the deadline.

    It holds the socket's own unbuffered reader, so the socket stays open for it while the
    connection is closed (as :mod:`http.client` does once the response owns the socket)."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(_left(self._deadline))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """The part of a socket :mod:`http.client` uses once connected, bound by one deadline."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(_left(self._deadline))  # sendall's timeout covers the whole call
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: object, **kwargs: object) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        self._sock.close()


def _bounded(conn: http.client.HTTPConnection, deadline: float) -> None:
    conn.connect()  # the connection's own timeout is the time left: TCP, TLS handshake, tunnel
    conn.sock = cast(socket.socket, _DeadlineSocket(conn.sock, deadline))


def _proxy_for(parts: SplitResult) -> str | None:
    """The proxy the environment names for this URL (``https_proxy``, ``no_proxy``...), if any."""
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def post_json(
    url: str, body: bytes, headers: dict[str, str], seconds: float, *, method: str = "POST"
) -> None:
    """POST (or ``method``) ``body`` and read the whole answer within ``seconds`` of wall time,
    or raise.

    Redirects are not followed (the bearer token would go along to wherever they point). The
    name lookup is the one step the deadline cannot cut short: it happens on the delivery thread,
    never the rollout's, and ``close`` does not wait for it beyond its own timeout."""
    deadline = time.monotonic() + seconds
    parts = urlsplit(url)
    https = parts.scheme == "https"
    host = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    selector = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    headers = dict(headers)
    proxy = _proxy_for(parts)
    context = ssl.create_default_context() if https else None
    conn: http.client.HTTPConnection
    if proxy is None:
        if https:
            conn = http.client.HTTPSConnection(host, port, timeout=_left(deadline), context=context)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=_left(deadline))
    else:
        via = urlsplit(proxy)
        proxy_headers: dict[str, str] = {}
        if via.username is not None:
            pair = f"{unquote(via.username)}:{unquote(via.password or '')}".encode()
            proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(pair).decode()
        proxy_host, proxy_port = via.hostname or "", via.port or 8080
        if https:
            conn = http.client.HTTPSConnection(
                proxy_host, proxy_port, timeout=_left(deadline), context=context
            )
            conn.set_tunnel(host, port, headers=proxy_headers)
        else:
            conn = http.client.HTTPConnection(proxy_host, proxy_port, timeout=_left(deadline))
            netloc = f"[{host}]" if ":" in host else host
            selector = urlunsplit(("http", f"{netloc}:{port}", parts.path or "/", parts.query, ""))
            headers.update(proxy_headers)
    try:
        _bounded(conn, deadline)
        conn.request(method, selector, body=body, headers=headers)
        response = conn.getresponse()
        response.read(65536)  # what a webhook answers is not needed: enough to end it cleanly
        if not 200 <= response.status < 300:
            raise _Refused(f"HTTP {response.status}")
    finally:
        conn.close()


class DeliveryOptions(TypedDict, total=False):
    """How long a notifier may take: one delivery (``deadline``), the flush on close."""

    deadline: float | None
    flush_timeout: float | None


@dataclass(frozen=True)
class HookSpec:
    """One webhook as the notifier sends to it: the URL, the body's format (``json``,
    ``slack``, ``teams``), its bearer token (``None``: the global ``MLROLLOUT_WEBHOOK_TOKEN``,
    if set) and the event kinds it gets (``None``: every change and decision). ``kind`` is
    ``pushgateway`` for a Prometheus Pushgateway (its base URL; ``format`` and ``kinds`` do
    not apply, and only its own token is sent)."""

    url: str
    format: str = "json"
    token: str | None = None
    kinds: frozenset[str] | None = None
    kind: str = "webhook"


def hooks_from_plan(notify: Sequence[Notification]) -> list[HookSpec]:
    """The plan's ``notify`` entries with their URLs and tokens read from the environment. An
    entry whose ``url_env`` or ``token_env`` is not set is skipped, with a warning naming the
    variable (never its value); the rollout goes on."""
    from mlrollout.engine.events import NOTIFY_FILTERS

    hooks: list[HookSpec] = []
    for i, note in enumerate(notify):
        url = note.webhook or note.pushgateway or os.environ.get(note.url_env or "")
        missing = None if url else note.url_env
        token = os.environ.get(note.token_env) if note.token_env else None
        if note.token_env and not token:
            missing = note.token_env
        if missing:
            sys.stderr.write(
                f"warning: notify[{i}]: the environment variable {missing} is not set: this "
                f"{'pushgateway' if note.pushgateway else 'webhook'} is skipped; the rollout "
                "goes on\n"
            )
            continue
        assert url is not None
        if note.pushgateway is not None:
            hooks.append(HookSpec(url, token=token, kind="pushgateway"))
            continue
        kinds = None
        if note.on is not None:
            kinds = frozenset(str(k) for name in note.on for k in NOTIFY_FILTERS[name])
        hooks.append(HookSpec(url, note.format, token, kinds))
    return hooks


def notifiers_from_plan(plan: Plan, rollout_id: str) -> list[QueuedNotifier]:
    """The notifiers of a plan's ``notify`` entries: one for its webhooks, one for its
    pushgateways (each only if the plan has some)."""
    from mlrollout.report.pushgateway import PushgatewayNotifier

    hooks = hooks_from_plan(plan.notify)
    webhooks = [h for h in hooks if h.kind == "webhook"]
    gateways = [h for h in hooks if h.kind == "pushgateway"]
    notifiers: list[QueuedNotifier] = []
    if webhooks:
        notifiers.append(WebhookNotifier(webhooks, rollout_id, plan.name))
    if gateways:
        notifiers.append(PushgatewayNotifier(gateways, rollout_id, plan.name, plan.target.endpoint))
    return notifiers


#: A card's colour by what happened (Teams' themeColor), and Slack's emoji for it.
_TONE = {
    "rollback": ("D13438", ":red_circle:"),
    "good": ("2EB886", ":large_green_circle:"),
    "wait": ("F2C744", ":large_yellow_circle:"),
    "info": ("0078D7", ":large_blue_circle:"),
}


def _tone(kind: str) -> str:
    if kind in ("rollback.started", "rolled_back", "analysis.failed", "aborted"):
        return "rollback"
    if kind in ("promoted", "evaluated"):
        return "good"
    if kind in ("waiting", "paused", "analysis.inconclusive"):
        return "wait"
    return "info"


def render_body(fmt: str, payload: dict[str, Any]) -> bytes:
    """The POST body of one event in a hook's format: mlrollout's own JSON, a Slack message
    (``text`` for notifications, ``blocks`` for the message) or a Teams message card."""
    if fmt == "json":
        return json.dumps(payload, default=str).encode()
    name, rid, message = payload["name"], payload["rollout"], payload["message"] or payload["kind"]
    color, emoji = _TONE[_tone(str(payload["kind"]))]
    facts = [("Rollout", rid), ("Phase", payload["phase"]), ("At", payload["at"])]
    if fmt == "slack":
        body: dict[str, Any] = {
            "text": f"{emoji} {name} ({rid}): {message}",
            "blocks": [
                {
                    "type": "section",
                    "text": {"type": "mrkdwn", "text": f"{emoji} *{name}* — {message}"},
                },
                {
                    "type": "context",
                    "elements": [
                        {"type": "mrkdwn", "text": " · ".join(f"{k}: `{v}`" for k, v in facts)}
                    ],
                },
            ],
        }
    else:  # teams: an Office 365 connector card
        body = {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": f"{name}: {message}"[:150],
            "themeColor": color,
            "title": f"{name}: {payload['kind']}",
            "text": message,
            "sections": [{"facts": [{"name": k, "value": str(v)} for k, v in facts]}],
        }
    return json.dumps(body, default=str).encode()


@dataclass
class _Hook:
    """One URL: its queue, its delivery thread, what became of its events."""

    spec: HookSpec
    queue: deque[tuple[bytes, dict[str, str]]] = field(default_factory=deque)
    thread: threading.Thread | None = None
    busy: bool = False  # a POST is in flight
    events: int = 0  # handed to it
    delivered: int = 0
    failed: int = 0
    dropped: int = 0  # pushed out of a full queue, or after close
    superseded: int = 0  # replaced by a newer one before it was sent (latest-wins receivers)
    reported: bool = False  # its failure is on stderr already


class QueuedNotifier:
    """Delivery off the critical path: a bounded queue and a daemon thread per URL, each send
    within :attr:`deadline`, a failure reported once, a bounded flush on :meth:`close`.

    Subclasses are the listeners: their ``__call__`` builds what to send and hands it to
    :meth:`_offer`, which only queues it (it never waits on the network). With
    :attr:`latest_only`, a receiver gets only the newest of what waits: what it replaces is
    counted as superseded, not as lost (a Pushgateway keeps one state per rollout)."""

    #: How a receiver is named in warnings, and what one delivery is called.
    what = "webhook"
    unit = "notification"
    latest_only = False

    def __init__(
        self,
        urls: Sequence[str | HookSpec],
        rollout_id: str,
        name: str,
        post: Post | None = None,
        *,
        deadline: float | None = None,
        flush_timeout: float | None = None,
        queue_size: int | None = None,
    ) -> None:
        specs = [u if isinstance(u, HookSpec) else HookSpec(u) for u in urls]
        self.urls = [spec.url for spec in specs]
        self.rollout_id = rollout_id
        self.name = name
        self.post: Post = post or post_json
        self.deadline = DEADLINE if deadline is None else deadline
        self.flush_timeout = FLUSH_TIMEOUT if flush_timeout is None else flush_timeout
        self.queue_size = max(1, QUEUE_SIZE if queue_size is None else queue_size)
        self.failed: set[str] = set()
        self._hooks = [_Hook(spec) for spec in specs]
        self._cond = threading.Condition()
        self._closed = False  # no more events; workers leave once their queue is empty
        self._abandoned = False  # close gave up: workers leave now
        self._at_exit_registered = False

    def __call__(self, event: Event, state: RolloutState) -> None:
        """The listener: what to send for ``event``, handed to :meth:`_offer`."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------- queue

    def _start(self, hook: _Hook) -> None:
        hook.thread = threading.Thread(
            target=self._deliver, args=(hook,), name=f"mlrollout-{self.what}", daemon=True
        )
        hook.thread.start()
        if not self._at_exit_registered:
            # a process that ends without close() (no runner) still gets the bounded flush
            atexit.register(self.close)
            self._at_exit_registered = True

    def _offer(self, hook: _Hook, body: bytes, headers: dict[str, str]) -> None:
        """Queue one delivery for ``hook``; the caller holds ``self._cond`` and notifies."""
        hook.events += 1
        if self._closed:
            hook.dropped += 1
            return
        if self.latest_only and hook.queue:
            hook.queue.clear()
            hook.superseded += 1
        elif len(hook.queue) >= self.queue_size:
            hook.queue.popleft()
            hook.dropped += 1
        hook.queue.append((body, headers))
        if hook.thread is None:
            self._start(hook)

    # ---------------------------------------------------------------------------- delivery

    def _deliver(self, hook: _Hook) -> None:
        while True:
            with self._cond:
                while not hook.queue and not self._closed:
                    self._cond.wait()
                if self._abandoned or not hook.queue:
                    return
                body, headers = hook.queue.popleft()
                hook.busy = True
            try:
                self.post(hook.spec.url, body, headers, self.deadline)
            except Exception as exc:  # whatever the receiver does, the rollout goes on
                delivered = False
                self._report(hook, exc)
            else:
                delivered = True
            with self._cond:
                hook.busy = False
                if self._abandoned:
                    return  # close counted it as not delivered already
                if delivered:
                    hook.delivered += 1
                else:
                    hook.failed += 1
                self._cond.notify_all()

    def _report(self, hook: _Hook, exc: Exception) -> None:
        with self._cond:
            if hook.reported or self._abandoned:
                return
            hook.reported = True
            self.failed.add(hook.spec.url)
        sys.stderr.write(
            f"warning: {self.what} {_safe(hook.spec.url)} failed ({self._reason(exc)}); "
            "the rollout goes on\n"
        )

    def _reason(self, exc: Exception) -> str:
        """Why, in words that never repeat the URL (exception texts sometimes do)."""
        if isinstance(exc, TimeoutError):
            return f"no complete answer within {self.deadline:g}s"
        if isinstance(exc, _Refused):
            return str(exc)
        if isinstance(exc, OSError) and exc.strerror:
            return str(exc.strerror)
        return type(exc).__name__

    # ------------------------------------------------------------------------------- close

    def close(self, timeout: float | None = None) -> int:
        """Take no more events, deliver what is queued for at most ``timeout`` seconds in all
        (``flush_timeout`` by default; 0 gives up at once), then give up and say on stderr how
        many notifications were not delivered. Returns that number. Calling it again does
        nothing."""
        budget = self.flush_timeout if timeout is None else max(0.0, timeout)
        end = time.monotonic() + budget
        with self._cond:
            if self._closed:
                return 0
            self._closed = True
            self._cond.notify_all()
            while any(hook.queue or hook.busy for hook in self._hooks):
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._abandoned = True
            lost = {id(hook): len(hook.queue) + int(hook.busy) for hook in self._hooks}
            for hook in self._hooks:
                hook.queue.clear()
            self._cond.notify_all()
        if self._at_exit_registered:
            atexit.unregister(self.close)
        total = 0
        for hook in self._hooks:
            why = {
                "failed": hook.failed,
                f"still queued after {budget:g}s": lost[id(hook)],
                "dropped from a full queue": hook.dropped,
            }
            missing = sum(why.values())
            total += missing
            if missing:
                detail = ", ".join(f"{n} {what}" for what, n in why.items() if n)
                if hook.superseded:  # not lost: a newer one carried the same news
                    detail += f"; {hook.superseded} superseded by a newer one"
                sys.stderr.write(
                    f"warning: {self.what} {_safe(hook.spec.url)}: {missing} of "
                    f"{hook.events} {self.unit}{'s' if hook.events != 1 else ''} not delivered "
                    f"({detail})\n"
                )
        return total


class WebhookNotifier(QueuedNotifier):
    """A listener that POSTs ``{"rollout", "name", "kind", "phase", "at", "message", "data"}``.

    Calling it only queues the event (it never waits on the network); :meth:`close` ends it."""

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
        bodies: dict[str, bytes] = {}
        shared = os.environ.get(TOKEN_ENV)
        with self._cond:
            for hook in self._hooks:
                spec = hook.spec
                if spec.kinds is not None and event.kind not in spec.kinds:
                    continue
                if spec.format not in bodies:
                    bodies[spec.format] = render_body(spec.format, payload)
                body = bodies[spec.format]
                headers = {"Content-Type": "application/json", "User-Agent": "mlrollout"}
                token = spec.token or shared
                if token:
                    headers["Authorization"] = f"Bearer {token}"
                self._offer(hook, body, headers)
            self._cond.notify_all()


def _safe(url: str) -> str:
    """The URL as it may be shown: scheme, host, port and path only — never the user and
    password, the query string (tokens ride there) or the fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(an unreadable URL)"
    if ":" in host:
        host = f"[{host}]"
    netloc = host + (f":{port}" if port is not None else "")
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
