"""The Supabase stand-in, driven by the unmodified ``supabase``, ``realtime`` and ``postgrest``."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast

import httpx
import psycopg
import pytest
import websockets
from postgrest.exceptions import APIError
from postgrest.types import CountMethod
from psycopg.types.json import Jsonb
from realtime import AsyncRealtimeChannel, RealtimeSubscribeStates
from realtime.types import RealtimePostgresChangesListenEvent
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from tests.supabase_standin import BroadcastRecord, SupabaseStandIn, unsigned_jwt
from tests.supabase_standin.fixtures import close_client

WAIT = 5.0

ClientMaker = Callable[..., Awaitable[AsyncClient]]


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
async def make_client(supabase_standin: SupabaseStandIn) -> AsyncIterator[ClientMaker]:
    """Clients of this test's stand-in (tests here create SQL objects, so never a remote stack)."""
    clients: list[AsyncClient] = []

    async def make(**options: Any) -> AsyncClient:
        client = await acreate_client(
            supabase_standin.url,
            supabase_standin.key,
            AsyncClientOptions(**options) if options else None,
        )
        clients.append(client)
        return client

    try:
        yield make
    finally:
        for client in reversed(clients):
            await close_client(client)


@pytest.fixture
async def client(make_client: ClientMaker) -> AsyncClient:
    return await make_client()


class Subscription:
    """A channel with its broadcasts and subscribe states collected into queues."""

    def __init__(self, channel: AsyncRealtimeChannel) -> None:
        self.channel = channel
        self.messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.states: asyncio.Queue[RealtimeSubscribeStates] = asyncio.Queue()

    async def next_message(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.messages.get(), WAIT)

    async def next_event(self) -> str:
        return str((await self.next_message())["event"])

    async def wait_for_state(self, wanted: RealtimeSubscribeStates) -> None:
        while await asyncio.wait_for(self.states.get(), WAIT) != wanted:
            pass


async def subscribe(client: AsyncClient, topic: str, *, private: bool = False) -> Subscription:
    params: Any = {
        "config": {
            "broadcast": {"ack": False, "self": False},
            "presence": {"key": "", "enabled": False},
            "private": private,
        }
    }
    channel = client.channel(topic, params if private else None)
    sub = Subscription(channel)
    channel.on_broadcast("*", lambda message: sub.messages.put_nowait(dict(message)))
    await channel.subscribe(lambda state, _err: sub.states.put_nowait(state))
    assert sub.states.get_nowait() == RealtimeSubscribeStates.SUBSCRIBED
    return sub


async def send(
    conn: psycopg.AsyncConnection[Any],
    topic: str,
    event: str,
    payload: dict[str, Any] | None = None,
    *,
    private: bool = False,
) -> None:
    await conn.execute(
        "select realtime.send(%s, %s, %s, %s)", (Jsonb(payload or {}), event, topic, private)
    )


def rows(data: object) -> list[dict[str, Any]]:
    """A REST answer's data, checked to be a list of row objects."""
    assert isinstance(data, list)
    assert all(isinstance(row, dict) for row in data)
    return cast(list[dict[str, Any]], data)


async def run_sql(conn: psycopg.AsyncConnection[Any], *statements: str) -> None:
    for statement in statements:
        await conn.execute(statement)


# -- rpc ----------------------------------------------------------------------------------------


async def test_rpc_scalar_results(client: AsyncClient, aconn: psycopg.AsyncConnection[Any]) -> None:
    await run_sql(
        aconn,
        "create function public.add_them(a int, b int) returns int language sql as 'select a + b'",
        "create function public.shout(t text) returns text language sql as 'select upper(t)'",
        "create function public.nothing() returns int language sql as 'select null::int'",
    )
    assert (await client.rpc("add_them", {"a": 1, "b": 2}).execute()).data == 3
    assert (await client.rpc("add_them", {"a": "40", "b": 2}).execute()).data == 42
    assert (await client.rpc("shout", {"t": "hey"}).execute()).data == "HEY"
    assert (await client.rpc("nothing", {}).execute()).data is None


async def test_rpc_json_results(client: AsyncClient, aconn: psycopg.AsyncConnection[Any]) -> None:
    await run_sql(
        aconn,
        """create function public.wrap(input jsonb, tags text[])
           returns jsonb language sql
           as $$ select jsonb_build_object('input', input, 'tags', to_jsonb(tags)) $$""",
        "create function public.echo(jsonb) returns jsonb language sql as 'select $1'",
    )
    result = await client.rpc(
        "wrap", {"input": {"x": [1, {"y": None}]}, "tags": ["a", "b"]}
    ).execute()
    assert result.data == {"input": {"x": [1, {"y": None}]}, "tags": ["a", "b"]}
    # A single unnamed json/jsonb parameter receives the whole body.
    assert (await client.rpc("echo", {"any": [1, 2]}).execute()).data == {"any": [1, 2]}


async def test_rpc_defaults_and_overloads(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        """create function public.greet(name text, greeting text default 'hello')
           returns text language sql as $$ select greeting || ', ' || name $$""",
        "create function public.pick(a int) returns text language sql as $$ select 'one' $$",
        "create function public.pick(a int, b int) returns text language sql as $$ select 'two' $$",
    )
    assert (await client.rpc("greet", {"name": "ada"}).execute()).data == "hello, ada"
    assert (
        await client.rpc("greet", {"name": "ada", "greeting": "hi"}).execute()
    ).data == "hi, ada"
    assert (await client.rpc("pick", {"a": 1}).execute()).data == "one"
    assert (await client.rpc("pick", {"a": 1, "b": 2}).execute()).data == "two"


async def test_rpc_table_results_take_filters_and_single(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        """create function public.numbers(upto int)
           returns table(n int, label text) language sql
           as $$ select i, 'n' || i from generate_series(1, upto) as i $$""",
    )
    everything = await client.rpc("numbers", {"upto": 3}).execute()
    assert everything.data == [
        {"n": 1, "label": "n1"},
        {"n": 2, "label": "n2"},
        {"n": 3, "label": "n3"},
    ]
    newest_first = await client.rpc("numbers", {"upto": 3}).order("n", desc=True).execute()
    assert [row["n"] for row in rows(newest_first.data)] == [3, 2, 1]
    one = await client.rpc("numbers", {"upto": 3}).eq("label", "n2").single().execute()
    assert one.data == {"n": 2, "label": "n2"}
    with pytest.raises(APIError) as caught:
        await client.rpc("numbers", {"upto": 3}).single().execute()
    assert caught.value.code == "PGRST116"
    assert caught.value.details == "The result contains 3 rows"
    assert (await client.rpc("numbers", {"upto": 0}).execute()).data == []


async def test_rpc_single_composite_is_an_object(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create table public.pets(id int primary key, name text)",
        "insert into public.pets values (1, 'rex'), (2, 'tom')",
        """create function public.pet(pet_id int) returns public.pets language sql
           as $$ select * from public.pets where id = pet_id $$""",
        """create function public.all_pets() returns setof public.pets language sql
           as $$ select * from public.pets order by id $$""",
    )
    assert (await client.rpc("pet", {"pet_id": 2}).execute()).data == {"id": 2, "name": "tom"}
    assert (await client.rpc("all_pets", {}).execute()).data == [
        {"id": 1, "name": "rex"},
        {"id": 2, "name": "tom"},
    ]


async def test_rpc_void_answers_no_content_and_commits(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create table public.log(line text)",
        """create function public.note(line text) returns void language sql
           as $$ insert into public.log values (line) $$""",
    )
    result = await client.rpc("note", {"line": "kept"}).execute()
    assert result.data == []  # postgrest-py's reading of 204 No Content
    cur = await aconn.execute("select line from public.log")
    assert await cur.fetchall() == [("kept",)]


async def test_rpc_content_profile_selects_the_schema(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create schema other",
        "create function public.where_am_i() returns text language sql as $$ select 'public' $$",
        """create function other.where_am_i() returns text language sql
           as $$ select 'other in ' || current_schema() $$""",
    )
    assert (await client.rpc("where_am_i", {}).execute()).data == "public"
    assert (await client.schema("other").rpc("where_am_i", {}).execute()).data == "other in other"


async def test_rpc_get_runs_read_only(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create function public.add_them(a int, b int) returns int language sql as 'select a + b'",
        "create table public.log(line text)",
        """create function public.note(line text) returns void language sql
           as $$ insert into public.log values (line) $$""",
    )
    assert (await client.rpc("add_them", {"a": 2, "b": 3}, get=True).execute()).data == 5
    with pytest.raises(APIError) as caught:
        await client.rpc("note", {"line": "x"}, get=True).execute()
    assert caught.value.code == "25006"


async def test_rpc_raise_is_p0001_and_rolls_back(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create table public.log(line text)",
        """create function public.fail(n int) returns void language plpgsql as $$
           begin
             insert into public.log values ('before');
             raise exception 'boom %', n using detail = 'some detail', hint = 'some hint';
           end $$""",
    )
    with pytest.raises(APIError) as caught:
        await client.rpc("fail", {"n": 7}).execute()
    assert (caught.value.code, caught.value.message) == ("P0001", "boom 7")
    assert (caught.value.details, caught.value.hint) == ("some detail", "some hint")
    cur = await aconn.execute("select count(*) from public.log")
    assert await cur.fetchone() == (0,)


async def test_rpc_foreign_key_violation(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create table public.parent(id int primary key)",
        "create table public.child(parent_id int references public.parent(id))",
        """create function public.adopt(parent int) returns void language sql
           as $$ insert into public.child values (parent) $$""",
    )
    with pytest.raises(APIError) as caught:
        await client.rpc("adopt", {"parent": 1}).execute()
    assert caught.value.code == "23503"
    assert "violates foreign key constraint" in str(caught.value.message)


async def test_rpc_unknown_function_or_arguments(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create function public.add_them(a int, b int) returns int language sql as 'select a + b'",
    )
    with pytest.raises(APIError) as caught:
        await client.rpc("no_such_function", {"x": 1}).execute()
    assert caught.value.code == "PGRST202"
    assert caught.value.message == (
        "Could not find the function public.no_such_function(x) in the schema cache"
    )
    with pytest.raises(APIError) as caught:
        await client.rpc("add_them", {"a": 1, "c": 2}).execute()
    assert caught.value.code == "PGRST202"


async def test_rpc_bad_argument_value(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create function public.add_them(a int, b int) returns int language sql as 'select a + b'",
    )
    with pytest.raises(APIError) as caught:
        await client.rpc("add_them", {"a": "many", "b": 2}).execute()
    assert caught.value.code == "22P02"


async def test_http_statuses_follow_postgrest(
    supabase_standin: SupabaseStandIn, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create table public.parent(id int primary key)",
        "create table public.child(parent_id int references public.parent(id))",
        "insert into public.parent values (1)",
        """create function public.adopt(parent int) returns void language sql
           as $$ insert into public.child values (parent) $$""",
        """create function public.insert_parent(id int) returns void language sql
           as $$ insert into public.parent values (id) $$""",
        """create function public.fail() returns void language plpgsql
           as $$ begin raise 'no'; end $$""",
        """create function public.teapot() returns void language plpgsql
           as $$ begin raise sqlstate 'PT418' using message = 'short and stout'; end $$""",
    )
    headers = {"apikey": supabase_standin.key, "Authorization": f"Bearer {supabase_standin.key}"}
    cases = [
        ("rpc/adopt", {"parent": 1}, 204, None),
        ("rpc/adopt", {"parent": 2}, 409, "23503"),
        ("rpc/insert_parent", {"id": 1}, 409, "23505"),
        ("rpc/fail", {}, 400, "P0001"),
        ("rpc/teapot", {}, 418, "PT418"),
        ("rpc/missing", {}, 404, "PGRST202"),
    ]
    async with httpx.AsyncClient(base_url=f"{supabase_standin.url}/rest/v1") as http:
        for path, body, status, code in cases:
            response = await http.post(path, json=body, headers=headers)
            assert response.status_code == status, (path, response.text)
            if code is not None:
                assert response.json()["code"] == code
                assert response.headers["Proxy-Status"] == f"PostgREST; error={code}"
        singular = await http.get(
            "parent", headers={**headers, "Accept": "application/vnd.pgrst.object+json"}
        )
        assert singular.status_code == 200
        assert singular.headers["Content-Type"].startswith("application/vnd.pgrst.object+json")
        none = await http.get(
            "parent",
            params={"id": "eq.5"},
            headers={**headers, "Accept": "application/vnd.pgrst.object+json"},
        )
        assert (none.status_code, none.json()["code"]) == (406, "PGRST116")
        csv = await http.get("parent", headers={**headers, "Accept": "text/csv"})
        assert (csv.status_code, csv.json()["code"]) == (406, "PGRST107")


async def test_jwt_role_is_honoured_when_asked(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    suffix = uuid.uuid4().hex[:8]
    anon, member = f"standin_anon_{suffix}", f"standin_member_{suffix}"
    await run_sql(
        aconn,
        f'create role "{anon}" nologin',
        f'create role "{member}" nologin',
        """create function public.whoami() returns text language sql
           as $$ select current_user || ' via ' ||
                 (current_setting('request.jwt.claims')::jsonb ->> 'role') $$""",
        "revoke execute on function public.whoami() from public",
    )
    try:
        standin = SupabaseStandIn(
            db_url, key=unsigned_jwt({"role": anon}), use_jwt_role=True, anon_role=anon
        )
        async with standin:
            url = f"{standin.url}/rest/v1/rpc/whoami"
            member_token = unsigned_jwt({"role": member, "sub": "user-1"})
            async with httpx.AsyncClient() as http:
                as_anon = await http.post(
                    url, json={}, headers={"Authorization": f"Bearer {standin.key}"}
                )
                as_member = await http.post(
                    url, json={}, headers={"Authorization": f"Bearer {member_token}"}
                )
            assert (as_anon.status_code, as_anon.json()["code"]) == (401, "42501")
            assert (as_member.status_code, as_member.json()["code"]) == (403, "42501")

            await aconn.execute(f'grant execute on function public.whoami() to "{anon}"')
            sb = await acreate_client(standin.url, standin.key)
            try:
                assert (await sb.rpc("whoami", {}).execute()).data == f"{anon} via {anon}"
            finally:
                await close_client(sb)
    finally:
        await run_sql(
            aconn,
            f'drop owned by "{anon}", "{member}"',
            f'drop role "{anon}"',
            f'drop role "{member}"',
        )


async def test_unexposed_schema_is_refused(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create schema hidden",
        "create function hidden.f() returns int language sql as 'select 1'",
    )
    async with SupabaseStandIn(db_url, schemas=["public"]) as standin:
        sb = await acreate_client(standin.url, standin.key)
        try:
            with pytest.raises(APIError) as caught:
                await sb.schema("hidden").rpc("f", {}).execute()
        finally:
            await close_client(sb)
    assert caught.value.code == "PGRST106"
    assert caught.value.message == "Invalid schema: hidden"


# -- table reads --------------------------------------------------------------------------------


@pytest.fixture
async def items(aconn: psycopg.AsyncConnection[Any]) -> None:
    await run_sql(
        aconn,
        "create table public.items(id int primary key, name text, grp text, note text)",
        """insert into public.items values
           (1, 'apple', 'fruit', null), (2, 'kale', 'leaf', 'green'),
           (3, 'pear', 'fruit', 'ripe'), (4, 'fig', 'fruit', null)""",
    )


@pytest.mark.usefixtures("items")
async def test_table_filter_and_order(client: AsyncClient) -> None:
    ascending = await client.table("items").select("*").eq("grp", "fruit").order("id").execute()
    assert [row["id"] for row in rows(ascending.data)] == [1, 3, 4]
    assert ascending.data[0] == {"id": 1, "name": "apple", "grp": "fruit", "note": None}
    descending = (
        await client.table("items")
        .select("*")
        .eq("grp", "fruit")
        .order("name", desc=True)
        .execute()
    )
    assert [row["name"] for row in rows(descending.data)] == ["pear", "fig", "apple"]


@pytest.mark.usefixtures("items")
async def test_table_column_lists_and_other_filters(client: AsyncClient) -> None:
    named = await client.table("items").select("id,name").eq("id", 2).execute()
    assert named.data == [{"id": 2, "name": "kale"}]
    aliased = await client.table("items").select("key:id").eq("id", 2).execute()
    assert aliased.data == [{"key": 2}]
    chosen = (
        await client.table("items").select("id").in_("name", ["fig", "kale"]).order("id").execute()
    )
    assert chosen.data == [{"id": 2}, {"id": 4}]
    no_note = await client.table("items").select("id").is_("note", "null").order("id").execute()
    assert no_note.data == [{"id": 1}, {"id": 4}]
    paged = (
        await client.table("items")
        .select("id")
        .neq("grp", "leaf")
        .order("id")
        .range(1, 2)
        .execute()
    )
    assert paged.data == [{"id": 3}, {"id": 4}]
    counted = (
        await client.table("items")
        .select("id", count=CountMethod.exact)
        .gt("id", 1)
        .limit(1)
        .execute()
    )
    assert (counted.data, counted.count) == ([{"id": 2}], 3)


@pytest.mark.usefixtures("items")
async def test_table_single(client: AsyncClient) -> None:
    one = await client.table("items").select("*").eq("name", "kale").single().execute()
    assert one.data == {"id": 2, "name": "kale", "grp": "leaf", "note": "green"}
    for column, value in [("grp", "fruit"), ("grp", "none")]:
        with pytest.raises(APIError) as caught:
            await client.table("items").select("*").eq(column, value).single().execute()
        assert caught.value.code == "PGRST116"
        assert caught.value.message == "Cannot coerce the result to a single JSON object"
    assert (
        await client.table("items").select("*").eq("grp", "none").maybe_single().execute() is None
    )


async def test_table_accept_profile_and_unknown_names(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    await run_sql(
        aconn,
        "create schema other",
        "create table other.flows(flow_slug text primary key, opt int)",
        "insert into other.flows values ('demo', 3)",
    )
    flow = (
        await client.schema("other")
        .from_("flows")
        .select("*")
        .eq("flow_slug", "demo")
        .single()
        .execute()
    )
    assert flow.data == {"flow_slug": "demo", "opt": 3}
    with pytest.raises(APIError) as caught:
        await client.table("flows").select("*").execute()
    assert caught.value.code == "PGRST205"
    with pytest.raises(APIError) as caught:
        await client.schema("other").from_("flows").select("nope").execute()
    assert caught.value.code == "42703"


@pytest.mark.usefixtures("items")
async def test_table_writes_are_refused(client: AsyncClient) -> None:
    with pytest.raises(APIError) as caught:
        await client.table("items").insert({"id": 9}).execute()
    assert caught.value.code == "PGRST117"


# -- realtime -----------------------------------------------------------------------------------


async def test_database_broadcast_reaches_the_channel(
    client: AsyncClient, supabase_standin: SupabaseStandIn, aconn: psycopg.AsyncConnection[Any]
) -> None:
    sub = await subscribe(client, "x:1")
    assert supabase_standin.joined_topics() == {"x:1": 1}
    await send(aconn, "x:1", "thing:happened", {"n": 1})
    message = await sub.next_message()
    assert message["event"] == "thing:happened"
    assert message["payload"]["n"] == 1
    assert message["payload"]["id"] == message["meta"]["id"]
    cur = await aconn.execute("select id::text, topic from realtime.messages")
    assert await cur.fetchall() == [(message["meta"]["id"], "x:1")]


async def test_events_arrive_in_commit_order(
    client: AsyncClient, db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    sub = await subscribe(client, "x:1")
    async with (
        await psycopg.AsyncConnection.connect(db_url) as early,
        await psycopg.AsyncConnection.connect(db_url) as late,
    ):
        await send(early, "x:1", "sent-first-committed-last")
        await send(late, "x:1", "sent-second-committed-first")
        await late.commit()
        await early.commit()
    async with aconn.transaction():
        for n in range(3):
            await send(aconn, "x:1", f"batch-{n}")
    received = [await sub.next_event() for _ in range(5)]
    assert received == [
        "sent-second-committed-first",
        "sent-first-committed-last",
        "batch-0",
        "batch-1",
        "batch-2",
    ]


async def test_rolled_back_events_are_not_sent(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    sub = await subscribe(client, "x:1")
    async with aconn.transaction(force_rollback=True):
        await send(aconn, "x:1", "rolled-back")
    await send(aconn, "x:1", "committed")
    assert await sub.next_event() == "committed"


async def test_other_topics_do_not_receive(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    first = await subscribe(client, "x:1")
    second = await subscribe(client, "x:2")
    await send(aconn, "x:1", "for-first")
    await send(aconn, "x:2", "for-second")
    assert await second.next_event() == "for-second"
    assert await first.next_event() == "for-first"
    assert first.messages.empty()
    assert second.messages.empty()


async def test_private_and_public_channels_are_separate(
    make_client: ClientMaker, aconn: psycopg.AsyncConnection[Any]
) -> None:
    public = await subscribe(await make_client(), "x:1")
    private = await subscribe(await make_client(), "x:1", private=True)
    await send(aconn, "x:1", "secret", private=True)
    await send(aconn, "x:1", "open", private=False)
    await send(aconn, "x:1", "secret-2", private=True)
    assert await public.next_event() == "open"
    assert [await private.next_event() for _ in range(2)] == ["secret", "secret-2"]
    assert public.messages.empty()


async def test_leaving_stops_delivery(
    client: AsyncClient, supabase_standin: SupabaseStandIn, aconn: psycopg.AsyncConnection[Any]
) -> None:
    leaving = await subscribe(client, "x:1")
    staying = await subscribe(client, "x:2")
    await leaving.channel.unsubscribe()
    await leaving.wait_for_state(RealtimeSubscribeStates.CLOSED)  # the server answered phx_leave
    assert supabase_standin.joined_topics() == {"x:2": 1}
    await send(aconn, "x:1", "too-late")
    await send(aconn, "x:2", "marker")
    assert await staying.next_event() == "marker"
    assert leaving.messages.empty()
    assert supabase_standin.joined_topics() == {"x:2": 1}


async def test_two_clients_on_one_topic_both_receive(
    make_client: ClientMaker, supabase_standin: SupabaseStandIn, aconn: psycopg.AsyncConnection[Any]
) -> None:
    one = await subscribe(await make_client(), "x:1")
    two = await subscribe(await make_client(), "x:1")
    assert supabase_standin.joined_topics() == {"x:1": 2}
    assert supabase_standin.open_connections == 2
    await send(aconn, "x:1", "hello", {"to": "both"})
    for sub in (one, two):
        message = await sub.next_message()
        assert (message["event"], message["payload"]["to"]) == ("hello", "both")


async def test_large_payload_arrives_intact(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    sub = await subscribe(client, "x:1")
    payload = {"text": "é" * 9000, "rows": [{"n": n, "s": str(n) * 10} for n in range(300)]}
    assert len(json.dumps(payload)) > 8192
    await send(aconn, "x:1", "big", payload)
    message = await sub.next_message()
    assert {k: v for k, v in message["payload"].items() if k != "id"} == payload


async def test_dropped_connection_reconnects_and_rejoins(
    client: AsyncClient, supabase_standin: SupabaseStandIn, aconn: psycopg.AsyncConnection[Any]
) -> None:
    sub = await subscribe(client, "x:1")
    assert await supabase_standin.drop_realtime_connections() == 1
    await sub.wait_for_state(RealtimeSubscribeStates.CHANNEL_ERROR)
    await sub.wait_for_state(RealtimeSubscribeStates.SUBSCRIBED)
    assert supabase_standin.accepted_connections == 2
    assert supabase_standin.joined_topics() == {"x:1": 1}
    await send(aconn, "x:1", "after-rejoin")
    assert await sub.next_event() == "after-rejoin"


async def test_paused_realtime_refuses_until_resumed(
    make_client: ClientMaker, supabase_standin: SupabaseStandIn, aconn: psycopg.AsyncConnection[Any]
) -> None:
    client = await make_client(realtime={"initial_backoff": 0.05, "max_retries": 8})
    sub = await subscribe(client, "x:1")
    supabase_standin.pause_realtime()
    await supabase_standin.drop_realtime_connections()
    await supabase_standin.wait_until(lambda: supabase_standin.refused_connections >= 1)
    assert supabase_standin.open_connections == 0
    assert supabase_standin.joined_topics() == {}
    supabase_standin.resume_realtime()
    await sub.wait_for_state(RealtimeSubscribeStates.SUBSCRIBED)
    await send(aconn, "x:1", "after-resume")
    assert await sub.next_event() == "after-resume"


async def test_client_broadcasts_are_relayed_to_others(make_client: ClientMaker) -> None:
    sender = await subscribe(await make_client(), "room:1")
    receiver = await subscribe(await make_client(), "room:1")
    await sender.channel.send_broadcast("hello", {"from": "sender"})
    message = await receiver.next_message()
    assert (message["event"], message["payload"]) == ("hello", {"from": "sender"})
    await receiver.channel.send_broadcast("reply", {"from": "receiver"})
    assert await sender.next_event() == "reply"  # its own "hello" never came back (self=false)


async def test_http_broadcast_is_relayed(make_client: ClientMaker) -> None:
    listener = await subscribe(await make_client(), "room:1")
    poster = (await make_client()).channel("room:1")
    await poster.http_send("posted", {"n": 5})
    message = await listener.next_message()
    assert (message["event"], message["payload"]) == ("posted", {"n": 5})


async def test_postgres_changes_bindings_are_acknowledged(client: AsyncClient) -> None:
    channel = client.channel("db-changes")
    channel.on_postgres_changes(
        RealtimePostgresChangesListenEvent.Insert,
        lambda _payload: None,
        table="items",
        schema="public",
    )
    states: list[RealtimeSubscribeStates] = []
    await channel.subscribe(lambda state, _err: states.append(state))
    assert states == [RealtimeSubscribeStates.SUBSCRIBED]


async def test_presence_and_access_token_pushes_are_tolerated(
    client: AsyncClient, aconn: psycopg.AsyncConnection[Any]
) -> None:
    synced = asyncio.Event()
    channel = client.channel("x:1")
    channel.on_presence_sync(synced.set)
    sub = Subscription(channel)
    channel.on_broadcast("*", lambda message: sub.messages.put_nowait(dict(message)))
    await channel.subscribe(lambda state, _err: sub.states.put_nowait(state))
    await asyncio.wait_for(synced.wait(), WAIT)  # presence_state came after the join
    await channel.track({"user": "ada"})
    await client.realtime.set_auth(unsigned_jwt({"role": "authenticated"}))
    await send(aconn, "x:1", "still-delivered")
    assert await sub.next_event() == "still-delivered"


async def test_closing_clients_leaves_nothing_joined(
    make_client: ClientMaker, supabase_standin: SupabaseStandIn
) -> None:
    client = await make_client()
    await subscribe(client, "x:1")
    await subscribe(client, "x:2")
    assert supabase_standin.joined_topics() == {"x:1": 1, "x:2": 1}
    await close_client(client)
    await supabase_standin.wait_until(
        lambda: not supabase_standin.joined_topics() and supabase_standin.open_connections == 0
    )


async def test_raw_protocol_replies(supabase_standin: SupabaseStandIn) -> None:
    url = supabase_standin.url.replace("http://", "ws://")
    address = f"{url}/realtime/v1/websocket?apikey={supabase_standin.key}&vsn=1.0.0"

    async with websockets.connect(address) as ws:

        async def exchange(frame: dict[str, Any] | str) -> dict[str, Any]:
            await ws.send(frame if isinstance(frame, str) else json.dumps(frame))
            reply: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), WAIT))
            return reply

        beat = {"event": "heartbeat", "topic": "phoenix", "payload": {}, "ref": "1"}
        assert await exchange(beat) == {
            "event": "phx_reply",
            "topic": "phoenix",
            "ref": "1",
            "payload": {"status": "ok", "response": {}},
        }
        await ws.send("not json")
        assert (await exchange({**beat, "ref": "2"}))["ref"] == "2"

        unjoined = {"event": "broadcast", "topic": "realtime:t", "payload": {}, "ref": "3"}
        reply = await exchange(unjoined)
        assert reply["payload"] == {"status": "error", "response": {"reason": "unmatched topic"}}

        binding = {"event": "*", "schema": "public", "table": "items"}
        join = {
            "event": "phx_join",
            "topic": "realtime:t",
            "ref": "4",
            "join_ref": "4",
            "payload": {"config": {"private": False, "postgres_changes": [binding]}},
        }
        reply = await exchange(join)
        assert reply["payload"] == {
            "status": "ok",
            "response": {"postgres_changes": [{**binding, "id": 1}]},
        }
        assert supabase_standin.joined_topics() == {"t": 1}

        reply = await exchange(
            {"event": "no_such_event", "topic": "realtime:t", "payload": {}, "ref": "5"}
        )
        assert (reply["ref"], reply["payload"]["status"]) == ("5", "error")

        reply = await exchange(
            {"event": "phx_leave", "topic": "realtime:t", "payload": {}, "ref": "6"}
        )
        assert (reply["ref"], reply["payload"]["status"]) == ("6", "ok")
        assert supabase_standin.joined_topics() == {}


# -- fault controls -----------------------------------------------------------------------------


async def test_refused_joins_error_then_the_channel_joins(
    client: AsyncClient, supabase_standin: SupabaseStandIn, aconn: psycopg.AsyncConnection[Any]
) -> None:
    supabase_standin.refuse_joins(1, reason="too many joins")
    channel = client.channel("x:1")
    sub = Subscription(channel)
    errors: list[str] = []

    def on_state(state: RealtimeSubscribeStates, error: Exception | None) -> None:
        sub.states.put_nowait(state)
        if error is not None:
            errors.append(str(error))

    channel.on_broadcast("*", lambda message: sub.messages.put_nowait(dict(message)))
    await channel.subscribe(on_state)
    assert sub.states.get_nowait() == RealtimeSubscribeStates.CHANNEL_ERROR
    assert errors == ['{"reason": "too many joins"}']
    assert supabase_standin.refused_joins == 1
    assert supabase_standin.joined_topics() == {}
    # realtime-py retries the join on its own (after 1 s); the stand-in accepts it.
    await sub.wait_for_state(RealtimeSubscribeStates.SUBSCRIBED)
    assert supabase_standin.joined_topics() == {"x:1": 1}
    await send(aconn, "x:1", "joined-at-last")
    assert await sub.next_event() == "joined-at-last"
    assert supabase_standin.refused_joins == 1


async def test_closing_a_channel_from_the_server(
    client: AsyncClient, supabase_standin: SupabaseStandIn, aconn: psycopg.AsyncConnection[Any]
) -> None:
    closed = await subscribe(client, "x:1")
    other = await subscribe(client, "x:2")
    assert await supabase_standin.close_channel("x:1") == 1
    await closed.wait_for_state(RealtimeSubscribeStates.CLOSED)
    assert supabase_standin.joined_topics() == {"x:2": 1}
    assert await supabase_standin.close_channel("x:9") == 0
    await send(aconn, "x:1", "nobody-listens")
    await send(aconn, "x:2", "marker")
    assert await other.next_event() == "marker"
    assert closed.messages.empty()
    assert supabase_standin.open_connections == 1  # only the channel closed, not the socket


async def test_broadcasts_are_withheld_from_fresh_joins(
    db_url: str, aconn: psycopg.AsyncConnection[Any]
) -> None:
    async with SupabaseStandIn(db_url, withhold_after_join_ms=300, record_broadcasts=True) as s:
        client = await acreate_client(s.url, s.key)
        try:
            sub = await subscribe(client, "x:1")
            await send(aconn, "x:1", "too-early")
            await s.wait_until(lambda: len(s.broadcasts("x:1")) == 1)
            assert s.broadcasts("x:1")[0] == BroadcastRecord("too-early", delivered=0, withheld=1)
            await asyncio.sleep(0.3)  # the window itself is what is under test
            await send(aconn, "x:1", "routed")
            assert await sub.next_event() == "routed"
            assert s.broadcasts("x:1")[1] == BroadcastRecord("routed", delivered=1, withheld=0)
            assert sub.messages.empty()
            s.withhold_after_join(60_000)
            late = await subscribe(client, "x:2")
            await send(aconn, "x:2", "withheld-again")
            await s.wait_until(lambda: len(s.broadcasts("x:2")) == 1)
            assert s.broadcasts("x:2") == [BroadcastRecord("withheld-again", 0, 1)]
            assert late.messages.empty()
        finally:
            await close_client(client)


# -- fixtures -----------------------------------------------------------------------------------


async def test_asupabase_fixture_talks_to_rest(asupabase: AsyncClient) -> None:
    with pytest.raises(APIError) as caught:
        await asupabase.rpc("pgflow_standin_fixture_probe_missing", {}).execute()
    assert caught.value.code == "PGRST202"
