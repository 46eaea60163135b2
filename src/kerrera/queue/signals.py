"""Oban's `signal` notifications on the wire: payloads exactly as Elixir Oban writes
them, whom a Kerrera command addresses, and whether an ident names this node.

An Elixir node's ident is its instance name, a dot and its node name
(`inspect(name) <> "." <> node`: "Oban.worker-1", "MyApp.Oban.web.1"); it takes a signal
whose ident is "any" or its own, and nothing else.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from kerrera.core import codec
from kerrera.engine.base import QueueSignal

#: The instance name in signal idents that address Kerrera nodes only ("Kerrera.any").
IDENT_NAME = "Kerrera"
#: The ident of a signal for every node.
ANY = "any"
#: Instance names a signal for one node is addressed under, besides those that lead in
#: `oban_peers`: Kerrera's, and the Elixir default (an instance named `Oban`).
DEFAULT_NAMES = (IDENT_NAME, "Oban")


def signal_parts(action: str, queue: str, limit: int | None = None) -> tuple[str, str]:
    """Oban's `signal` payload before and after its ident's JSON string. Exactly what
    Elixir writes: keys `action`, `ident`, `limit` (scale and start only) and `queue`, in
    that (sorted) order, no spaces. Elixir turns the keys of a scale signal into atoms
    that must exist: any other key crashes its producer."""
    head = '{"action":' + codec.dumps(action) + ',"ident":'
    tail = "" if limit is None else ',"limit":' + codec.dumps(limit)
    return head, tail + ',"queue":' + codec.dumps(queue) + "}"


def signal_payload(action: str, queue: str, ident: str, limit: int | None = None) -> str:
    """One Oban `signal` payload, e.g. `{"action":"pause","ident":"any","queue":"media"}`."""
    head, tail = signal_parts(action, queue, limit)
    return head + codec.dumps(ident) + tail


def command_signal(action: str, queue: str, node: str | None, limit: int | None) -> QueueSignal:
    """How a command is announced. Pause, resume, scale and stop go to every instance
    ("any", Elixir's too: the queue is one queue in the shared table); for one node, its
    name under every instance name known ("Kerrera.<node>", "Oban.<node>", and the names
    that lead in `oban_peers`), since an Elixir node expects its own instance name there.
    Start goes to Kerrera nodes only ("Kerrera.any" or "Kerrera.<node>"): an Elixir node
    cannot run Python workers, and a start would have it fetch their jobs."""
    idents: tuple[str, ...]
    if action == "start":
        idents, peers = (f"{IDENT_NAME}.{node or ANY}",), False
    elif node is None:
        idents, peers = (ANY,), False
    else:
        idents, peers = tuple(f"{name}.{node}" for name in DEFAULT_NAMES), True
    control = {"action": "queue", "command": action, "queue": queue, "node": node or "",
               "limit": limit}  # fmt: skip
    head, tail = signal_parts(action, queue, limit)
    return QueueSignal(codec.dumps(control), head, tail, idents, peers)


def addressed_to(ident: object, node: str, names: Collection[str] = DEFAULT_NAMES) -> bool:
    """Whether a signal's ident names this node: "any" and "Kerrera.any" name every
    node, and so does no ident (as in Oban); otherwise the ident must be
    `<name>.<node>` for one of the instance `names` known. Oban builds a node's ident as
    its instance name, a dot and the node ("Oban.worker-1", "MyApp.Oban.web.1"): either
    part may contain dots, so the ident is compared whole, never split."""
    if ident is None or ident == ANY or ident == f"{IDENT_NAME}.{ANY}":
        return True
    suffix = "." + node
    return isinstance(ident, str) and ident.endswith(suffix) and ident[: -len(suffix)] in names


def echo_key(action: object, ident: object, queue: object, limit: object) -> tuple[Any, ...]:
    """What identifies an Oban signal, to recognise a Kerrera command's own."""
    return (action, ident, queue, limit)
