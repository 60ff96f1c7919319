"""The flow DSL: declaring steps, pgflow's definition rules, handlers, input and output."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import functools
from typing import Any

import pytest
from pydantic import BaseModel

from pgflow_worker._flow import Flow, FlowOptions, StepDefinition, StepOptions
from pgflow_worker.errors import (
    FlowDefinitionError,
    HandlerInputError,
    HandlerOutputError,
    StepNotFound,
)


class Person(BaseModel):
    first: str
    last: str


class Greeting(BaseModel):
    text: str
    at: datetime.datetime


class Color(enum.Enum):
    RED = "red"


class Size(str, enum.Enum):  # noqa: UP042 - str() of this kind of enum is not its value
    SMALL = "s"


class Level(enum.IntEnum):
    HIGH = 3


# -- declaring steps ----------------------------------------------------------------------------


def test_bare_decorator_takes_the_function_name_and_returns_the_function() -> None:
    flow = Flow("greet_user")

    def full_name(input: Any, ctx: Any) -> str:
        return f"{input['first']} {input['last']}"

    decorated = flow.step(full_name)

    assert decorated is full_name
    assert full_name({"first": "Ada", "last": "Lovelace"}, None) == "Ada Lovelace"
    step = flow.get_step("full_name")
    assert step.handler is full_name
    assert (step.slug, step.step_type, step.dependencies, step.is_array) == (
        "full_name",
        "single",
        (),
        False,
    )
    assert step.options == StepOptions()
    assert step.map_source is None
    assert step.flow_slug == "greet_user"
    assert step.is_root
    assert not step.is_map


def test_every_decorator_form() -> None:
    flow = Flow("forms")

    @flow.step
    def plain(input: Any) -> Any: ...

    @flow.step()
    def called(input: Any) -> Any: ...

    @flow.step("positional_slug")
    def first(input: Any) -> Any: ...

    @flow.step(slug="keyword_slug", depends_on=["plain"])
    def second(input: Any) -> Any: ...

    def handler(input: Any) -> Any: ...

    returned = flow.step(handler, slug="direct", depends_on=[plain, "called"])

    assert returned is handler
    assert [s.slug for s in flow.steps] == [
        "plain",
        "called",
        "positional_slug",
        "keyword_slug",
        "direct",
    ]
    assert flow.get_step("direct").dependencies == ("plain", "called")
    assert flow.get_step("keyword_slug").handler is second


def test_options_are_recorded_per_step_and_per_flow() -> None:
    flow = Flow("opts", max_attempts=3, base_delay=2, timeout=30)

    @flow.step(max_attempts=5, base_delay=1, timeout=3, start_delay=0)
    def tuned(input: Any) -> Any: ...

    @flow.step(timeout=90)
    def partly(input: Any) -> Any: ...

    assert flow.options == FlowOptions(max_attempts=3, base_delay=2, timeout=30)
    assert Flow("bare").options == FlowOptions(None, None, None)
    assert flow.get_step("tuned").options == StepOptions(5, 1, 3, 0)
    assert flow.get_step("partly").options == StepOptions(timeout=90)


def test_dependencies_keep_declared_order_and_accept_functions() -> None:
    flow = Flow("deps")

    @flow.step
    def a(input: Any) -> Any: ...

    @flow.step
    def b(input: Any) -> Any: ...

    @flow.step(depends_on=[b, "a"])
    def c(input: Any) -> Any: ...

    @flow.step(depends_on="c")
    def d(input: Any) -> Any: ...

    @flow.step(depends_on=a)
    def e(input: Any) -> Any: ...

    assert flow.get_step("c").dependencies == ("b", "a")
    assert flow.get_step("d").dependencies == ("c",)
    assert flow.get_step("e").dependencies == ("a",)
    assert not flow.get_step("c").is_root


def test_array_is_a_single_step_marked_as_array() -> None:
    flow = Flow("arr")

    @flow.array
    def items(input: Any) -> list[int]:
        return [1, 2]

    @flow.array("more", depends_on=[items], timeout=10)
    def more_items(input: Any) -> list[int]:
        return []

    step = flow.get_step("items")
    assert (step.step_type, step.is_array) == ("single", True)
    assert flow.get_step("more").dependencies == ("items",)
    assert flow.get_step("more").options.timeout == 10


def test_map_steps_root_and_dependent() -> None:
    flow = Flow("maps")

    @flow.map
    def each_input(item: Any) -> Any: ...

    @flow.array
    def items(input: Any) -> Any: ...

    @flow.map(array=items, max_attempts=2)
    def each_item(item: Any) -> Any: ...

    @flow.map("again", array="each_item")
    def each_again(item: Any) -> Any: ...

    root = flow.get_step("each_input")
    assert (root.step_type, root.dependencies, root.map_source) == ("map", (), None)
    assert root.is_map
    assert root.is_root
    dependent = flow.get_step("each_item")
    assert (dependent.dependencies, dependent.map_source) == (("items",), "items")
    assert dependent.options.max_attempts == 2
    assert flow.get_step("again").map_source == "each_item"


def test_steps_are_ordered_and_read_only() -> None:
    flow = Flow("order")
    for name in ["z", "a", "m"]:
        flow.step(lambda input: input, slug=name)
    steps = flow.steps
    assert isinstance(steps, tuple)
    assert [s.slug for s in steps] == ["z", "a", "m"]
    assert all(isinstance(s, StepDefinition) for s in steps)
    with pytest.raises(dataclasses.FrozenInstanceError):
        steps[0].slug = "other"  # type: ignore[misc]


def test_get_step_names_the_flow_when_unknown() -> None:
    flow = Flow("lookup")
    with pytest.raises(StepNotFound) as info:
        flow.get_step("missing")
    assert isinstance(info.value, KeyError)
    assert str(info.value) == "flow 'lookup' has no step 'missing'"
    assert (info.value.flow_slug, info.value.step_slug) == ("lookup", "missing")


def test_repr_lists_the_steps() -> None:
    flow = Flow("shown")
    flow.step(lambda input: input, slug="one")
    assert repr(flow) == "Flow('shown', steps=['one'])"


# -- definition rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slug", "rule"),
    [
        ("", "the slug is empty"),
        ("1st", "invalid slug"),
        ("with-dash", "invalid slug"),
        ("with space", "invalid slug"),
        ("émoji", "invalid slug"),
        ("trailing_newline\n", "invalid slug"),
        ("run", "'run' is a reserved word"),
        ("x" * 48, "at most 47, because the flow's pgmq queue is named after it"),
        ("x" * 129, "at most 128 are allowed"),
    ],
)
def test_invalid_flow_slugs(slug: str, rule: str) -> None:
    with pytest.raises(FlowDefinitionError) as info:
        Flow(slug)
    assert str(info.value).startswith(f"flow {slug!r}: ")
    assert rule in str(info.value)
    assert info.value.flow_slug == slug
    assert info.value.step_slug is None


def test_flow_slug_limits_are_inclusive() -> None:
    assert Flow("x" * 47).slug == "x" * 47
    assert Flow("Mixed_Case_9").slug == "Mixed_Case_9"
    assert Flow("a").slug == "a"


@pytest.mark.parametrize("slug", ["_private", "trailing_", "a__b", "_", "9lives", "has-dash"])
def test_flow_slugs_follow_pgflow_0_17_rules(slug: str) -> None:
    with pytest.raises(FlowDefinitionError) as info:
        Flow(slug)
    message = str(info.value)
    assert message.startswith(f"flow {slug!r}: invalid slug")
    assert "starting with a letter, ending with a letter or digit, without '__'" in message


@pytest.mark.parametrize("slug", ["_private", "trailing_", "a__b"])
def test_step_slugs_follow_pgflow_0_17_rules(slug: str) -> None:
    with pytest.raises(FlowDefinitionError) as info:
        Flow("f").step(lambda input: input, slug=slug)
    assert str(info.value).startswith(f"flow 'f', step {slug!r}: invalid slug")
    assert info.value.step_slug == slug


def test_handler_names_that_break_the_rules_need_a_slug() -> None:
    def _helper(input: Any) -> Any: ...

    with pytest.raises(FlowDefinitionError, match=r"taken from the function's name.*pass slug="):
        Flow("f").step(_helper)
    flow = Flow("f")
    flow.step(_helper, slug="helper")
    assert [s.slug for s in flow.steps] == ["helper"]


def test_step_slugs_are_unique_ignoring_case() -> None:
    flow = Flow("f")
    flow.step(lambda input: input, slug="fetch")
    with pytest.raises(FlowDefinitionError) as info:
        flow.step(lambda input: input, slug="Fetch")
    assert "differs from step 'fetch' only in case" in str(info.value)
    assert info.value.step_slug == "Fetch"


def test_non_string_flow_slug() -> None:
    with pytest.raises(FlowDefinitionError, match="a slug is a str, got int"):
        Flow(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("slug", "rule"),
    [
        ("", "the slug is empty"),
        ("9lives", "invalid slug: use letters, digits and underscores"),
        ("a/b", "invalid slug"),
        ("run", "'run' is a reserved word"),
        ("s" * 129, "the slug is 129 characters long; at most 128 are allowed"),
    ],
)
def test_invalid_step_slugs(slug: str, rule: str) -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError) as info:
        flow.step(lambda input: input, slug=slug)
    assert str(info.value).startswith(f"flow 'f', step {slug!r}: ")
    assert rule in str(info.value)
    assert (info.value.flow_slug, info.value.step_slug) == ("f", slug)
    assert flow.steps == ()


def test_step_slug_may_be_128_characters() -> None:
    flow = Flow("f")
    flow.step(lambda input: input, slug="s" * 128)
    assert flow.steps[0].slug == "s" * 128


def test_function_name_that_is_not_a_slug() -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError) as info:
        flow.step(lambda input: input)
    assert str(info.value).startswith("flow 'f', step '<lambda>': invalid slug (taken from")
    assert "pass slug=" in str(info.value)


def test_function_named_run_is_reserved() -> None:
    flow = Flow("f")

    def run(input: Any) -> Any: ...

    with pytest.raises(FlowDefinitionError, match="flow 'f', step 'run': 'run' is a reserved"):
        flow.step(run)


def test_handler_without_a_name_needs_a_slug() -> None:
    flow = Flow("f")
    handler = functools.partial(lambda input, extra: input, extra=1)
    with pytest.raises(FlowDefinitionError, match=r"flow 'f': cannot take a step slug from .*"):
        flow.step(handler)
    flow.step(handler, slug="named")
    assert flow.get_step("named").handler is handler


def test_slug_given_twice() -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError, match=r"the step slug is given twice \('a' and "):
        flow.step("a", slug="b")


def test_not_a_slug_nor_a_handler() -> None:
    with pytest.raises(FlowDefinitionError, match="expected a step slug or a handler function"):
        Flow("f").step(3)  # type: ignore[call-overload]


def test_duplicate_step_slug() -> None:
    flow = Flow("f")

    @flow.step
    def a(input: Any) -> Any: ...

    with pytest.raises(FlowDefinitionError) as info:
        flow.step(lambda input: input, slug="a")
    assert str(info.value) == (
        "flow 'f', step 'a': a step with this slug is already defined "
        "(step slugs are unique in a flow)"
    )
    assert flow.get_step("a").handler is a


def test_unknown_dependency_must_be_declared_first() -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError) as info:
        flow.step(lambda input: input, slug="b", depends_on=["a"])
    assert str(info.value) == (
        "flow 'f', step 'b': depends on 'a', which is not defined yet "
        "(declare a step after the steps it depends on)"
    )
    assert info.value.step_slug == "b"


def test_dependency_on_a_function_that_is_not_a_step() -> None:
    flow = Flow("f")

    def elsewhere(input: Any) -> Any: ...

    Flow("other").step(elsewhere)
    with pytest.raises(FlowDefinitionError) as info:
        flow.step(lambda input: input, slug="b", depends_on=[elsewhere])
    assert "flow 'f', step 'b': depends on the function 'elsewhere', which is not a step" in str(
        info.value
    )


def test_dependency_on_a_function_declared_twice_is_ambiguous() -> None:
    flow = Flow("f")

    def shared(input: Any) -> Any: ...

    flow.step(shared, slug="one")
    flow.step(shared, slug="two")
    with pytest.raises(FlowDefinitionError, match=r"several steps \('one', 'two'\)"):
        flow.step(lambda input: input, slug="three", depends_on=[shared])


def test_step_cannot_depend_on_itself() -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError) as info:
        flow.step(lambda input: input, slug="loop", depends_on=["loop"])
    assert str(info.value) == "flow 'f', step 'loop': a step cannot depend on itself"


def test_dependency_listed_twice() -> None:
    flow = Flow("f")
    flow.step(lambda input: input, slug="a")
    with pytest.raises(FlowDefinitionError, match="step 'b': lists the dependency 'a' more than"):
        flow.step(lambda input: input, slug="b", depends_on=["a", "a"])


def test_dependency_of_the_wrong_type() -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError, match="dependencies are step slugs or step functions"):
        flow.step(lambda input: input, slug="b", depends_on=[1])  # type: ignore[list-item]


def test_map_over_an_unknown_step() -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError, match="step 'each': depends on 'nothing', which is"):
        flow.map(lambda item: item, slug="each", array="nothing")


def test_map_over_more_than_one_step() -> None:
    flow = Flow("f")
    flow.array(lambda input: [], slug="a")
    flow.array(lambda input: [], slug="b")
    with pytest.raises(FlowDefinitionError) as info:
        flow.map(lambda item: item, slug="each", array=["a", "b"])  # type: ignore[arg-type]
    assert str(info.value) == (
        "flow 'f', step 'each': a map step maps over exactly one step: array= takes one slug "
        "or step function, got list"
    )


def test_map_refuses_depends_on() -> None:
    flow = Flow("f")
    flow.array(lambda input: [], slug="a")
    with pytest.raises(FlowDefinitionError) as info:

        @flow.map(depends_on=["a"])  # type: ignore[call-overload]
        def each(item: Any) -> Any: ...

    assert str(info.value) == (
        "flow 'f', step 'each': a map step takes its one source from array= "
        "(a step slug or function), not depends_on"
    )


@pytest.mark.parametrize(
    ("option", "value", "minimum"),
    [
        ("max_attempts", 0, 1),
        ("base_delay", 0, 1),
        ("timeout", 2, 3),
        ("start_delay", -1, 0),
        ("max_attempts", 1.5, 1),
        ("timeout", "30", 3),
        ("base_delay", True, 1),
        ("timeout", 2**31, 3),
    ],
)
def test_invalid_step_options(option: str, value: Any, minimum: int) -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError) as info:
        flow.step(lambda input: input, slug="s", **{option: value})
    assert str(info.value) == (
        f"flow 'f', step 's': {option} must be an integer >= {minimum} "
        f"(and <= 2147483647), got {value!r}"
    )
    assert (info.value.flow_slug, info.value.step_slug) == ("f", "s")


@pytest.mark.parametrize(
    ("option", "value", "minimum"),
    [("max_attempts", 0, 1), ("base_delay", 0, 1), ("timeout", 2, 3), ("timeout", False, 3)],
)
def test_invalid_flow_options(option: str, value: Any, minimum: int) -> None:
    with pytest.raises(FlowDefinitionError) as info:
        Flow("f", **{option: value})
    assert str(info.value) == (
        f"flow 'f': {option} must be an integer >= {minimum} (and <= 2147483647), got {value!r}"
    )


def test_option_minimums_are_allowed() -> None:
    flow = Flow("f", max_attempts=1, base_delay=1, timeout=3)
    flow.map(lambda item: item, slug="m", max_attempts=1, base_delay=1, timeout=3, start_delay=0)
    assert flow.get_step("m").options == StepOptions(1, 1, 3, 0)


def test_failed_declaration_leaves_the_flow_unchanged() -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError):
        flow.step(lambda input: input, slug="bad", timeout=1)
    flow.step(lambda input: input, slug="bad", timeout=3)
    assert [s.slug for s in flow.steps] == ["bad"]


# -- conditions ---------------------------------------------------------------------------------


def test_conditions_are_recorded_on_every_kind_of_step() -> None:
    flow = Flow("conds")

    @flow.step(if_={"plan": "pro"}, when_unmet="fail")
    def gate(input: Any) -> Any: ...

    @flow.array(depends_on=[gate], if_not={"gate": {"empty": True}}, when_exhausted="skip")
    def items(deps: Any) -> Any: ...

    @flow.map(
        array=items,
        if_={"items": [1]},
        if_not={"items": [0]},
        when_unmet="skip-cascade",
        when_exhausted="skip-cascade",
        max_attempts=2,
    )
    def each(item: Any) -> Any: ...

    @flow.step(depends_on=[each])
    def plain(deps: Any) -> Any: ...

    assert flow.get_step("gate").options == StepOptions(if_={"plan": "pro"}, when_unmet="fail")
    assert flow.get_step("items").options == StepOptions(
        if_not={"gate": {"empty": True}}, when_exhausted="skip"
    )
    assert flow.get_step("each").options == StepOptions(
        max_attempts=2,
        if_={"items": [1]},
        if_not={"items": [0]},
        when_unmet="skip-cascade",
        when_exhausted="skip-cascade",
    )
    options = flow.get_step("plain").options
    assert (options.if_, options.if_not, options.when_unmet, options.when_exhausted) == (
        None,
        None,
        None,
        None,
    ), "unset: pgflow's defaults apply (skip when unmet, fail when exhausted)"


def test_patterns_are_copied_as_plain_json() -> None:
    pattern: dict[str, Any] = {"tags": ("a", "b"), "user": {"name": Size.SMALL, "age": Level.HIGH}}
    flow = Flow("f")
    flow.step(lambda input: input, slug="s", if_=pattern)
    pattern["tags"] = ("changed",)
    stored = flow.get_step("s").options.if_
    assert stored == {"tags": ["a", "b"], "user": {"name": "s", "age": 3}}
    assert type(stored["user"]["name"]) is str  # type: ignore[index]
    assert type(stored["user"]["age"]) is int  # type: ignore[index]


def test_an_empty_pattern_is_allowed() -> None:
    flow = Flow("f")
    flow.step(lambda input: input, slug="s", if_={}, if_not={})
    assert (flow.get_step("s").options.if_, flow.get_step("s").options.if_not) == ({}, {})


@pytest.mark.parametrize(
    ("option", "value", "rule"),
    [
        ("if_", [1, 2], "if_ must be a JSON object pattern (a dict with str keys), got list"),
        ("if_not", "x", "if_not must be a JSON object pattern (a dict with str keys), got str"),
        ("if_", 1, "if_ must be a JSON object pattern (a dict with str keys), got int"),
        ("if_", {1: "a"}, "if_ must be JSON, but holds int key 1 (keys must be str) at if_"),
        ("if_not", {"x": float("nan")}, "if_not must be JSON, but holds float nan at if_not['x']"),
        (
            "if_",
            {"when": datetime.date(2024, 1, 1)},
            "if_ must be JSON, but holds date at if_['when']",
        ),
        (
            "when_unmet",
            "ignore",
            "when_unmet must be 'fail', 'skip' or 'skip-cascade', got 'ignore'",
        ),
        ("when_unmet", "SKIP", "when_unmet must be 'fail', 'skip' or 'skip-cascade', got 'SKIP'"),
        (
            "when_exhausted",
            "retry",
            "when_exhausted must be 'fail', 'skip' or 'skip-cascade', got 'retry'",
        ),
        (
            "when_exhausted",
            True,
            "when_exhausted must be 'fail', 'skip' or 'skip-cascade', got True",
        ),
    ],
)
def test_invalid_conditions(option: str, value: Any, rule: str) -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError) as info:
        flow.step(lambda input: input, slug="s", **{option: value})
    assert str(info.value) == f"flow 'f', step 's': {rule}"
    assert (info.value.flow_slug, info.value.step_slug) == ("f", "s")
    assert flow.steps == ()


def test_invalid_conditions_on_maps_and_arrays() -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError, match="step 'm': when_exhausted must be"):
        flow.map(lambda item: item, slug="m", when_exhausted="never")  # type: ignore[arg-type]
    with pytest.raises(FlowDefinitionError, match="step 'a': if_not must be a JSON object"):
        flow.array(lambda input: input, slug="a", if_not=[1])  # type: ignore[arg-type]
    assert flow.steps == ()


# -- handlers -----------------------------------------------------------------------------------


def test_sync_and_async_handlers_with_and_without_context() -> None:
    flow = Flow("h")

    @flow.step
    def sync_one(input: Any) -> Any: ...

    @flow.step
    def sync_two(input: Any, ctx: Any) -> Any: ...

    @flow.step
    async def async_one(input: Any) -> Any: ...

    @flow.step
    async def async_two(input: Any, ctx: Any) -> Any: ...

    @flow.step
    def optional_ctx(input: Any, ctx: Any = None) -> Any: ...

    @flow.step
    def star_args(*args: Any) -> Any: ...

    @flow.step
    def keyword_default(input: Any, *, flag: bool = False) -> Any: ...

    got = {s.slug: (s.is_async, s.wants_context) for s in flow.steps}
    assert got == {
        "sync_one": (False, False),
        "sync_two": (False, True),
        "async_one": (True, False),
        "async_two": (True, True),
        "optional_ctx": (False, True),
        "star_args": (False, True),
        "keyword_default": (False, False),
    }


def test_callable_objects_partials_and_methods() -> None:
    class AsyncCall:
        async def __call__(self, input: Any, ctx: Any) -> Any: ...

    class SyncCall:
        def __call__(self, input: Any) -> Any: ...

    class Service:
        def handle(self, input: Any, ctx: Any) -> Any: ...

    async def with_extra(input: Any, ctx: Any, extra: int) -> Any: ...

    flow = Flow("h")
    flow.step(AsyncCall(), slug="async_call")
    flow.step(SyncCall(), slug="sync_call")
    flow.step(Service().handle)
    flow.step(functools.partial(with_extra, extra=1), slug="partial")
    got = {s.slug: (s.is_async, s.wants_context) for s in flow.steps}
    assert got == {
        "async_call": (True, True),
        "sync_call": (False, False),
        "handle": (False, True),
        "partial": (True, True),
    }


@pytest.mark.parametrize(
    ("handler", "rule"),
    [
        (lambda: None, "the handler takes 0 positional parameters"),
        (lambda a, b, c: None, "the handler takes 3 positional parameters"),
        (lambda a, *, key: None, "required keyword-only parameters (key)"),
    ],
)
def test_handlers_must_take_input_or_input_and_context(handler: Any, rule: str) -> None:
    flow = Flow("f")
    with pytest.raises(FlowDefinitionError) as info:
        flow.step(handler, slug="s")
    assert str(info.value).startswith("flow 'f', step 's': ")
    assert rule in str(info.value)
    assert "(input) or (input, ctx)" in str(info.value)


def test_generator_handlers_are_refused() -> None:
    def gen(input: Any) -> Any:
        yield input

    async def agen(input: Any) -> Any:
        yield input

    flow = Flow("f")
    for handler in (gen, agen):
        with pytest.raises(FlowDefinitionError, match="the handler is a generator"):
            flow.step(handler)


def test_handler_must_be_callable() -> None:
    flow = Flow("f")
    decorate = flow.step("s")
    with pytest.raises(FlowDefinitionError, match="the handler must be callable, got int"):
        decorate(5)  # type: ignore[type-var]


# -- input models -------------------------------------------------------------------------------


def test_pydantic_annotation_validates_input() -> None:
    flow = Flow("p")

    @flow.step
    def greet(person: Person, ctx: Any) -> str:
        return person.first

    step = flow.get_step("greet")
    assert step.input_model is Person
    prepared = step.prepare_input({"first": "Ada", "last": "Lovelace"})
    assert prepared == Person(first="Ada", last="Lovelace")


def test_input_that_does_not_match_the_model() -> None:
    flow = Flow("p")

    @flow.step
    def greet(person: Person) -> str:
        return person.first

    with pytest.raises(HandlerInputError) as info:
        flow.get_step("greet").prepare_input({"first": "Ada"})
    message = str(info.value)
    assert message.startswith("step 'greet' of flow 'p' received input that does not match Person:")
    assert "last" in message
    assert (info.value.flow_slug, info.value.step_slug) == ("p", "greet")


def test_without_a_model_input_passes_through() -> None:
    flow = Flow("p")

    @flow.step
    def untyped(input, ctx):  # type: ignore[no-untyped-def]
        return input

    @flow.step
    def as_dict(input: dict[str, Any]) -> Any:
        return input

    raw = {"anything": [1, 2]}
    for slug in ("untyped", "as_dict"):
        step = flow.get_step(slug)
        assert step.input_model is None
        assert step.prepare_input(raw) is raw


def test_unresolvable_annotation_is_not_a_model() -> None:
    flow = Flow("p")

    @flow.step
    def later(input: NotDefinedAnywhere) -> Any:  # type: ignore[name-defined]  # noqa: F821
        return input

    assert flow.get_step("later").input_model is None


def test_model_is_found_when_other_annotations_do_not_resolve() -> None:
    flow = Flow("p")

    @flow.step
    def greet(person: Person, ctx: OnlyImportedForTypeChecking) -> Any:  # type: ignore[name-defined]  # noqa: F821
        return person

    assert flow.get_step("greet").input_model is Person
    assert flow.get_step("greet").wants_context


def test_model_in_a_map_step_validates_each_element() -> None:
    flow = Flow("p")

    @flow.map
    def each(person: Person) -> str:
        return person.last

    assert flow.get_step("each").prepare_input({"first": "A", "last": "B"}).last == "B"


# -- output serialization -----------------------------------------------------------------------


def _step() -> StepDefinition:
    flow = Flow("out")
    flow.step(lambda input: input, slug="x")
    return flow.get_step("x")


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -5, 2**70, 1.5, "text", [], {}, [1, "a", None, {"k": [True]}], {"a": {"b": 2}}],
)
def test_json_values_pass_unchanged(value: Any) -> None:
    assert _step().serialize_output(value) == value


def test_tuples_become_lists_and_models_are_dumped() -> None:
    at = datetime.datetime(2025, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    out = _step().serialize_output(
        {
            "pair": (1, (2, 3)),
            "greeting": Greeting(text="hi", at=at),
            "many": [Person(first="a", last="b")],
        }
    )
    assert out == {
        "pair": [1, [2, 3]],
        "greeting": {"text": "hi", "at": "2025-01-02T03:04:05Z"},
        "many": [{"first": "a", "last": "b"}],
    }


def test_top_level_model_output() -> None:
    assert _step().serialize_output(Person(first="a", last="b")) == {"first": "a", "last": "b"}


def test_str_and_int_subclasses_become_plain_values() -> None:
    out = _step().serialize_output({"size": Size.SMALL, "level": Level.HIGH})
    assert out == {"size": "s", "level": 3}
    assert type(out["size"]) is str  # type: ignore[index]
    assert type(out["level"]) is int  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "what", "path"),
    [
        (datetime.datetime(2025, 1, 1), "datetime", "output"),
        ({"when": datetime.date(2025, 1, 1)}, "date", "output['when']"),
        ([1, {2, 3}], "set", "output[1]"),
        ({"a": [{"b": object()}]}, "object", "output['a'][0]['b']"),
        ({"x": float("nan")}, "float nan", "output['x']"),
        ([float("inf")], "float inf", "output[0]"),
        ({"n": -float("inf")}, "float -inf", "output['n']"),
        ({1: "a"}, "int key 1 (keys must be str)", "output"),
        ({"c": Color.RED}, "Color", "output['c']"),
        (b"bytes", "bytes", "output"),
    ],
)
def test_values_json_cannot_hold(value: Any, what: str, path: str) -> None:
    with pytest.raises(HandlerOutputError) as info:
        _step().serialize_output(value)
    assert str(info.value) == (
        f"step 'x' of flow 'out' returned a value that is not JSON-serializable: {what} at {path}"
    )


def test_reference_cycles_are_reported() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    with pytest.raises(HandlerOutputError, match=r"list that contains itself at output\[1\]"):
        _step().serialize_output(loop)


def test_shared_but_acyclic_values_are_fine() -> None:
    shared = {"k": 1}
    assert _step().serialize_output([shared, shared]) == [{"k": 1}, {"k": 1}]


# -- mermaid ------------------------------------------------------------------------------------


def test_to_mermaid_draws_the_dag_with_distinct_map_steps() -> None:
    flow = Flow("analyze")

    @flow.step
    def fetch(input: Any) -> Any: ...

    @flow.array(depends_on=[fetch])
    def pages(deps: Any) -> Any: ...

    @flow.map(array=pages)
    def summarize(page: Any) -> Any: ...

    @flow.step(depends_on=[summarize, fetch])
    def end(deps: Any) -> Any: ...

    @flow.map
    def loose(item: Any) -> Any: ...

    assert flow.to_mermaid() == "\n".join(
        [
            "graph TD",
            '    s0["fetch"]',
            '    s1["pages (array)"]',
            '    s2[["summarize (map)"]]',
            '    s3["end"]',
            '    s4[["loose (map)"]]',
            "    s0 --> s1",
            "    s1 --> s2",
            "    s2 --> s3",
            "    s0 --> s3",
        ]
    )


def test_to_mermaid_of_an_empty_flow() -> None:
    assert Flow("nothing").to_mermaid() == "graph TD"
