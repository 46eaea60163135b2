"""Queue signals on Oban's `oban_signal` channel, as Elixir Oban 2.23.1 sends and reads
them: Kerrera's commands carry exactly Oban's payload, reach Elixir nodes when scoped to
one node, and Kerrera nodes obey what Elixir sends (start included, dotted instance and
node names included). There is no Elixir here: an Elixir node is a plain LISTEN
connection, and Elixir's payloads are sent with pg_notify."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from conftest import eventually

from kerrera import Kerrera
from kerrera.queue.signals import addressed_to, signal_payload

#: The marker that ends a read of the channel (see `Channel.read`).
MARKER = '{"marker":true}'


class Channel:
    """A LISTEN connection on the test schema's `oban_signal`, like an Elixir node's."""

    def __init__(self, conn: psycopg.AsyncConnection[Any], name: str) -> None:
        self.conn = conn
        self.name = name

    async def read(self) -> list[str]:
        """Every payload sent so far: notifications arrive in commit order, so reading up
        to a marker sent now returns all that committed before it."""
        await self.conn.execute("SELECT pg_notify(%s, %s)", (self.name, MARKER))
        payloads = []
        async for note in self.conn.notifies(timeout=5):
            if note.payload == MARKER:
                return payloads
            payloads.append(note.payload)
        raise AssertionError(f"the marker did not arrive; got {payloads!r}")

    async def send(self, payload: str) -> None:
        """Send a payload as an Elixir node does."""
        await self.conn.execute("SELECT pg_notify(%s, %s)", (self.name, payload))


@pytest.fixture
async def channel(dsn: str, prefix: str) -> AsyncIterator[Channel]:
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    name = f"{prefix}.oban_signal"
    await conn.execute(f'LISTEN "{name}"')
    try:
        yield Channel(conn, name)
    finally:
        await conn.close()


def elixir_hears(payload: str, instance: str, node: str) -> bool:
    """Whether an Elixir node takes a signal: Oban's notifier accepts "any" or its own
    ident, `inspect(name) <> "." <> node`, and nothing else."""
    ident = json.loads(payload).get("ident")
    return ident == "any" or ident == f"{instance}.{node}"


async def settled(app: Kerrera, channel: Channel) -> None:
    """Wait until `app` has heard (and routed) every signal sent before this call: its
    notifier calls listeners in the order the notifications arrive."""
    heard = asyncio.Event()

    def on_marker(_channel: str, message: dict[str, Any]) -> None:
        if message == {"marker": True}:
            heard.set()

    app._notifier.listen(channel.name, on_marker)
    await channel.send(MARKER)
    await asyncio.wait_for(heard.wait(), 5)


# -- what Kerrera sends -----------------------------------------------------------------

COMMANDS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("pause", (), {}),
    ("resume", (), {}),
    ("scale", (3,), {"limit": 3}),
    ("start", (3,), {"limit": 3}),
    ("stop", (), {}),
]


@pytest.mark.parametrize(("action", "args", "extra"), COMMANDS)
async def test_a_command_for_every_node_sends_obans_exact_payload(
    make_app: Any, channel: Channel, action: str, args: tuple[Any, ...], extra: dict[str, Any]
) -> None:
    client = make_app()
    await getattr(client, f"{action}_queue")("media", *args)
    payloads = await channel.read()
    assert len(payloads) == 1
    # start goes to Kerrera nodes only: Elixir nodes cannot run Python workers.
    ident = "Kerrera.any" if action == "start" else "any"
    expected = {"action": action, "ident": ident, "queue": "media", **extra}
    assert json.loads(payloads[0]) == expected
    assert payloads[0] == json.dumps(expected, sort_keys=True, separators=(",", ":"))


@pytest.mark.parametrize(("action", "args", "extra"), COMMANDS)
async def test_a_command_for_one_node_sends_obans_exact_payload_per_instance_name(
    make_app: Any, channel: Channel, action: str, args: tuple[Any, ...], extra: dict[str, Any]
) -> None:
    client = make_app()
    await getattr(client, f"{action}_queue")("media", *args, node="rig-a")
    payloads = await channel.read()
    names = ["Kerrera"] if action == "start" else ["Kerrera", "Oban"]
    for payload in payloads:
        message = json.loads(payload)
        assert set(message) == {"action", "ident", "queue", *extra}
        assert payload == json.dumps(message, sort_keys=True, separators=(",", ":"))
    assert sorted(payloads, key=lambda p: json.loads(p)["ident"]) == [
        json.dumps(
            {"action": action, "ident": f"{name}.rig-a", "queue": "media", **extra},
            sort_keys=True,
            separators=(",", ":"),
        )
        for name in names
    ]


async def test_the_sync_facade_sends_the_same_payloads(make_app: Any, channel: Channel) -> None:
    client = make_app()
    await asyncio.to_thread(client.sync.scale_queue, "media", 2, node="rig-a")
    assert sorted(await channel.read()) == [
        '{"action":"scale","ident":"Kerrera.rig-a","limit":2,"queue":"media"}',
        '{"action":"scale","ident":"Oban.rig-a","limit":2,"queue":"media"}',
    ]


async def test_a_pause_for_one_node_reaches_an_elixir_node_of_that_name(
    make_app: Any, channel: Channel
) -> None:
    await make_app().pause_queue("media", node="worker-1")
    heard = [p for p in await channel.read() if elixir_hears(p, "Oban", "worker-1")]
    assert [json.loads(p) for p in heard] == [
        {"action": "pause", "ident": "Oban.worker-1", "queue": "media"}
    ]
    assert not [p for p in heard if elixir_hears(p, "Oban", "worker-2")]


async def test_a_node_command_is_signalled_under_the_instance_names_in_oban_peers(
    make_app: Any, channel: Channel, sql: Any
) -> None:
    client = make_app()
    await client.migrate()
    sql("INSERT INTO oban_peers VALUES ('MyApp.Oban', 'web.1', now(), now() + interval '1 h')")
    await client.scale_queue("media", 4, node="web.1")
    payloads = await channel.read()
    heard = [p for p in payloads if elixir_hears(p, "MyApp.Oban", "web.1")]
    assert [json.loads(p) for p in heard] == [
        {"action": "scale", "ident": "MyApp.Oban.web.1", "limit": 4, "queue": "media"}
    ]
    assert len(payloads) == 3  # Kerrera, Oban, MyApp.Oban


def test_the_payload_builder_writes_obans_form() -> None:
    assert signal_payload("pause", "media", "any") == (
        '{"action":"pause","ident":"any","queue":"media"}'
    )
    assert signal_payload("start", "média", "MyApp.Oban.web.1", 2) == (
        '{"action":"start","ident":"MyApp.Oban.web.1","limit":2,"queue":"média"}'
    )


# -- Kerrera nodes obey Kerrera commands ------------------------------------------------


async def test_kerrera_nodes_obey_commands_for_all_and_for_one(make_app: Any) -> None:
    a = make_app(queues={"default": 1}, node="a")
    b = make_app(queues={"default": 1}, node="b.eu")
    await a.start()
    await b.start()
    client = make_app()
    await client.pause_queue("default", node="b.eu")
    await eventually(lambda: b.check_queue("default")["paused"], timeout=3)
    assert not a.check_queue("default")["paused"]
    await client.scale_queue("default", 3)
    await eventually(
        lambda: a.check_queue("default")["limit"] == 3 and b.check_queue("default")["limit"] == 3,
        timeout=3,
    )
    await a.resume_queue("default", node="b.eu")  # from one node to another
    await eventually(lambda: not b.check_queue("default")["paused"], timeout=3)
    await b.stop_queue("default", node="a")
    await eventually(lambda: "default" not in a.producers, timeout=3)
    assert "default" in b.producers
    await client.start_queue("default", 2, node="a")
    await eventually(lambda: a.producers.get("default") and a.check_queue("default")["limit"] == 2)
    await client.stop_queue("default")
    await eventually(lambda: not a.producers and not b.producers, timeout=5)


async def test_a_kerrera_command_for_another_node_is_not_taken_for_elixirs(
    make_app: Any, channel: Channel, sql: Any
) -> None:
    rig = make_app(queues={"default": 1}, node="rig")
    await rig.migrate()
    # An Elixir instance named "Oban.b" makes "Oban.b.rig" an ident of node "rig" too,
    # and a command for node "b.rig" is signalled as "Oban.b.rig" (for Elixir's "Oban").
    sql("INSERT INTO oban_peers VALUES ('Oban.b', 'elixir@host', now(), now() + interval '1 h')")
    await rig.start()
    await make_app().pause_queue("default", node="b.rig")
    await settled(rig, channel)  # a signal applied as Elixir's pauses at once
    assert not rig.check_queue("default")["paused"]


async def test_an_in_process_notifier_hears_the_command_before_its_signals(
    make_app: Any,
) -> None:
    a = make_app(queues={"default": 1}, node="a", notifier="isolated")
    await a.start()
    heard: list[tuple[str, Any]] = []
    a._notifier.listen(a.engine.sql.signal_channel, lambda _c, m: heard.append(("oban", m)))
    a._notifier.listen(a.engine.sql.control_channel, lambda _c, m: heard.append(("own", m)))
    await a.scale_queue("default", 3, node="a")
    await eventually(lambda: len(heard) == 3, timeout=3)
    assert [kind for kind, _ in heard] == ["own", "oban", "oban"]
    assert heard[0][1]["command"] == "scale" and sorted(heard[0][1]["idents"]) == [
        "Kerrera.a",
        "Oban.a",
    ]
    assert a.check_queue("default")["limit"] == 3
    assert a._node.control.overrides == {}  # its own signals were not taken for Elixir's


async def test_a_kerrera_start_is_not_also_taken_for_elixirs_start(
    make_app: Any, channel: Channel
) -> None:
    a = make_app(queues={"default": 1}, node="a")
    await a.start()
    await channel.send('{"action":"pause","ident":"any","queue":"default"}')
    await eventually(lambda: a.check_queue("default")["paused"], timeout=3)
    client = make_app()
    await client.stop_queue("default")
    await eventually(lambda: "default" not in a.producers, timeout=3)
    await client.start_queue("default", 2)
    await eventually(lambda: a.producers.get("default") and a.check_queue("default")["limit"] == 2)
    # A Kerrera command replaces only the Elixir fields it sets: the pause stays. Taken
    # for Elixir's start (a new producer, as in Oban), its signal would drop the pause.
    assert a.check_queue("default")["paused"]


# -- Kerrera nodes obey Elixir's signals ------------------------------------------------


async def test_elixirs_signals_for_every_node_are_applied(make_app: Any, channel: Channel) -> None:
    a = make_app(queues={"default": 1}, node="py-1")
    await a.start()
    await channel.send('{"action":"pause","ident":"any","queue":"default"}')
    await eventually(lambda: a.check_queue("default")["paused"], timeout=3)
    await channel.send('{"action":"resume","ident":"any","queue":"*"}')
    await eventually(lambda: not a.check_queue("default")["paused"], timeout=3)
    await channel.send('{"action":"scale","ident":"any","limit":3,"queue":"default"}')
    await eventually(lambda: a.check_queue("default")["limit"] == 3, timeout=3)
    await channel.send('{"action":"stop","ident":"any","queue":"default"}')
    await eventually(lambda: "default" not in a.producers, timeout=3)
    await channel.send('{"action":"start","ident":"any","limit":2,"queue":"default"}')
    await eventually(lambda: a.producers.get("default") and a.check_queue("default")["limit"] == 2)


async def test_elixirs_start_leaves_a_running_queue_as_it_is(
    make_app: Any, channel: Channel
) -> None:
    a = make_app(queues={"default": 1}, node="py-1")
    await a.start()
    producer = a.producers["default"]
    await channel.send('{"action":"start","ident":"any","limit":5,"queue":"default"}')
    await settled(a, channel)
    assert a.producers["default"] is producer and producer.limit == 1  # as Oban: no-op


async def test_elixirs_start_of_a_queue_this_node_never_ran_is_ignored(
    make_app: Any, channel: Channel
) -> None:
    a = make_app(queues={"default": 1}, node="py-1")
    await a.start()
    await channel.send('{"action":"start","ident":"any","limit":5,"queue":"media"}')
    await channel.send('{"action":"start","ident":"Oban.py-1","limit":5,"queue":"media"}')
    await settled(a, channel)
    # Give an (unwanted) start time to read the table and create the producer: showing
    # that nothing happens needs a wait.
    await asyncio.sleep(0.3)
    assert set(a.producers) == {"default"}


async def test_a_queue_started_by_kerrera_and_stopped_by_elixir_can_be_started_by_elixir(
    make_app: Any, channel: Channel
) -> None:
    a = make_app(queues={"default": 1}, node="py-1")
    await a.start()
    await a.start_queue("extra", 1)
    await channel.send('{"action":"stop","ident":"Oban.py-1","queue":"extra"}')
    await eventually(lambda: "extra" not in a.producers, timeout=3)
    await channel.send('{"action":"start","ident":"Oban.py-1","limit":3,"queue":"extra"}')
    await eventually(lambda: a.producers.get("extra") and a.check_queue("extra")["limit"] == 3)


@pytest.mark.parametrize(
    ("instance", "node"),
    [("Oban", "py-1"), ("MyApp.Oban", "py-1"), ("MyApp.Oban", "web.1"), ("Oban", "web.1")],
)
async def test_elixirs_signals_for_one_node_are_applied_by_that_node_only(
    make_app: Any, channel: Channel, sql: Any, instance: str, node: str
) -> None:
    mine = make_app(queues={"default": 1}, node=node)
    other = make_app(queues={"default": 1}, node=f"x{node}")
    await mine.migrate()
    # An Elixir instance's leader keeps a row under its instance name.
    sql("INSERT INTO oban_peers VALUES (%s, 'elixir@host', now(), now() + interval '1 h')",
        (instance,))  # fmt: skip
    await mine.start()
    await other.start()
    ident = f"{instance}.{node}"
    await channel.send(f'{{"action":"pause","ident":"{ident}","queue":"default"}}')
    await channel.send(f'{{"action":"scale","ident":"{ident}","limit":4,"queue":"default"}}')
    await eventually(
        lambda: mine.check_queue("default")["paused"] and mine.check_queue("default")["limit"] == 4,
        timeout=3,
    )
    await settled(other, channel)
    assert not other.check_queue("default")["paused"]
    assert other.check_queue("default")["limit"] == 1


# -- the matcher ------------------------------------------------------------------------

NAMES = {"Kerrera", "Oban", "MyApp.Oban"}


@pytest.mark.parametrize(
    ("ident", "node", "expected"),
    [
        ("any", "w", True),
        ("Kerrera.any", "w", True),
        (None, "w", True),  # no ident (pkill): every node, as in Oban
        ("Oban.w", "w", True),
        ("Kerrera.w", "w", True),
        ("MyApp.Oban.w", "w", True),
        ("MyApp.Oban.web.1", "web.1", True),
        ("Oban.web.1", "web.1", True),
        ("Oban.eu.w", "eu.w", True),
        ("Oban.eu.w", "w", False),  # node "eu.w" of Oban, not node "w" of "Oban.eu"
        ("MyApp.Oban.web.1", "1", False),
        ("MyApp.Oban.web.1", "Oban.web.1", False),  # instance "MyApp" is not known
        ("Other.w", "w", False),
        ("Oban.w", "x", False),
        ("Oban.w", "Oban.w", False),
        ("w", "w", False),
        (".w", "w", False),
        (7, "w", False),
    ],
)
def test_an_ident_is_matched_against_every_known_instance_name(
    ident: object, node: str, expected: bool
) -> None:
    assert addressed_to(ident, node, NAMES) is expected


def test_the_default_names_are_kerreras_and_elixirs_default() -> None:
    assert addressed_to("Oban.w", "w") and addressed_to("Kerrera.w", "w")
    assert not addressed_to("MyApp.Oban.w", "w")
