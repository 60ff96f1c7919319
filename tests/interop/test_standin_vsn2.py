"""The stand-in's Phoenix ``vsn=2.0.0`` wire format, which supabase-js speaks by default.

Raw frames, so these run without Node: arrays ``[join_ref, ref, topic, event, payload]``
both ways, binary client broadcasts, and sockets of both formats on one topic.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import websockets
from psycopg.types.json import Jsonb

from tests.supabase_standin import SupabaseStandIn

WAIT = 5.0


def address(standin: SupabaseStandIn, vsn: str) -> str:
    url = standin.url.replace("http://", "ws://")
    return f"{url}/realtime/v1/websocket?apikey={standin.key}&vsn={vsn}"


async def receive(ws: websockets.ClientConnection) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), WAIT))


def binary_push(join_ref: str, ref: str, topic: str, event: str, payload: Any) -> bytes:
    """A supabase-js "user broadcast push" with a JSON payload and no metadata."""
    parts = [join_ref, ref, topic, event, ""]
    header = struct.pack("!7B", 3, *(len(p) for p in parts), 1)
    return header + "".join(parts).encode() + json.dumps(payload).encode()


@pytest.fixture
async def v2(supabase_standin: SupabaseStandIn) -> AsyncIterator[websockets.ClientConnection]:
    async with websockets.connect(address(supabase_standin, "2.0.0")) as ws:
        yield ws


async def join(ws: websockets.ClientConnection, topic: str, ref: str) -> list[Any]:
    config = {"config": {"broadcast": {"self": False}, "private": False}}
    await ws.send(json.dumps([ref, ref, f"realtime:{topic}", "phx_join", config]))
    reply: list[Any] = await receive(ws)
    return reply


async def test_replies_are_arrays_that_echo_the_refs(v2: websockets.ClientConnection) -> None:
    await v2.send(json.dumps([None, "1", "phoenix", "heartbeat", {}]))
    ok: dict[str, Any] = {"status": "ok", "response": {}}
    assert await receive(v2) == [None, "1", "phoenix", "phx_reply", ok]

    assert await join(v2, "t", "2") == [
        "2",
        "2",
        "realtime:t",
        "phx_reply",
        {"status": "ok", "response": {"postgres_changes": []}},
    ]
    await v2.send(json.dumps(["2", "3", "realtime:t", "phx_leave", {}]))
    assert await receive(v2) == ["2", "3", "realtime:t", "phx_reply", ok]


async def test_database_broadcasts_arrive_as_arrays(
    v2: websockets.ClientConnection, supabase_standin: SupabaseStandIn, db_url: str
) -> None:
    await join(v2, "room", "1")
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute(
            "select realtime.send(%s, 'hello', 'room', false)", (Jsonb({"n": 1, "s": "é"}),)
        )
    join_ref, ref, topic, event, payload = await receive(v2)
    assert (join_ref, ref, topic, event) == (None, None, "realtime:room", "broadcast")
    assert payload["type"] == "broadcast"
    assert payload["event"] == "hello"
    assert payload["payload"]["n"] == 1
    assert payload["payload"]["s"] == "é"
    assert payload["meta"]["id"] == payload["payload"]["id"]


async def test_binary_pushes_reach_sockets_of_either_format(
    v2: websockets.ClientConnection, supabase_standin: SupabaseStandIn
) -> None:
    async with websockets.connect(address(supabase_standin, "1.0.0")) as v1:
        await v1.send(
            json.dumps({"event": "phx_join", "topic": "realtime:chat", "ref": "1", "payload": {}})
        )
        assert (await receive(v1))["payload"]["status"] == "ok"
        await join(v2, "chat", "1")
        await v2.send(binary_push("1", "2", "realtime:chat", "said", {"text": "hi"}))
        frame = await receive(v1)
    assert frame == {
        "event": "broadcast",
        "topic": "realtime:chat",
        "ref": None,
        "payload": {"type": "broadcast", "event": "said", "payload": {"text": "hi"}},
    }


async def test_malformed_frames_are_ignored(v2: websockets.ClientConnection) -> None:
    await v2.send(json.dumps({"event": "heartbeat", "topic": "phoenix", "ref": "1"}))
    await v2.send(b"\x09garbage")
    await v2.send(json.dumps([None, "2", "phoenix", "heartbeat", {}]))
    assert (await receive(v2))[1] == "2"


async def test_unknown_vsn_is_refused(supabase_standin: SupabaseStandIn) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(address(supabase_standin, "9.9.9")):
            pass
    assert refused.value.response.status_code == 400
