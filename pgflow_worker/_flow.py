"""The flow DSL: a named DAG of Python step handlers, declared with decorators.

A :class:`Flow` is a registry. Its decorators check every rule pgflow's SQL enforces as soon as a
step is declared, so a bad definition fails at import time with a message naming the flow, the
step and the rule, not later inside the database.

Steps may carry conditions (pgflow 0.14): ``if_`` / ``if_not`` are JSON patterns matched with
Postgres' ``@>`` containment against the step's input when it becomes ready, ``when_unmet`` says
what an unmet condition does and ``when_exhausted`` what a task that ran out of attempts does.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar, cast, overload

from pydantic import BaseModel, JsonValue, ValidationError
from pydantic_core import PydanticSerializationError

from .errors import FlowDefinitionError, HandlerInputError, HandlerOutputError, StepNotFound

__all__ = [
    "Flow",
    "FlowOptions",
    "JsonPattern",
    "StepDefinition",
    "StepOptions",
    "StepRef",
    "StepType",
    "WhenExhaustedMode",
    "WhenUnmetMode",
]

StepType: TypeAlias = Literal["single", "map"]
WhenUnmetMode: TypeAlias = Literal["fail", "skip", "skip-cascade"]
"""What an unmet condition does: fail the step and the run, skip the step (its dependents run
without it), or skip it and every step downstream of it."""
WhenExhaustedMode: TypeAlias = Literal["fail", "skip", "skip-cascade"]
"""What a task out of attempts does: fail the step and the run, or skip the step (alone, or
with every step downstream of it) and let the run go on."""
JsonPattern: TypeAlias = Mapping[str, Any]
"""A condition: a JSON object the step's input must contain (Postgres ``jsonb @>``)."""
StepRef: TypeAlias = str | Callable[..., Any]
"""A step named by its slug, or by the handler function it was declared with."""

H = TypeVar("H", bound=Callable[..., Any])

MAX_SLUG_LENGTH = 128
MAX_FLOW_SLUG_LENGTH = 47
"""pgmq limits queue names to 47 characters, and every flow's queue is named after the flow."""

_SLUG = re.compile(r"[a-zA-Z]([a-zA-Z0-9_]*[a-zA-Z0-9])?")
_RESERVED_SLUGS = frozenset({"run"})
_SLUG_RULES = (
    "use letters, digits and underscores, starting with a letter, ending with a letter or "
    "digit, without '__' (pgflow's rules since 0.17)"
)
_INT4_MAX = 2_147_483_647
_MINIMUMS = {"max_attempts": 1, "base_delay": 1, "timeout": 3, "start_delay": 0}
_MODES: tuple[str, ...] = ("fail", "skip", "skip-cascade")


@dataclass(frozen=True, slots=True)
class FlowOptions:
    """Flow-wide defaults; ``None`` keeps pgflow's (3 attempts, 5 s base delay, 60 s timeout)."""

    max_attempts: int | None = None
    base_delay: int | None = None
    timeout: int | None = None


@dataclass(frozen=True, slots=True)
class StepOptions:
    """Per-step overrides; ``None`` inherits the flow's value (start delay: none).

    For the conditions, ``None`` means unset: no pattern, ``when_unmet`` 'skip' and
    ``when_exhausted`` 'fail' (pgflow's defaults).
    """

    max_attempts: int | None = None
    base_delay: int | None = None
    timeout: int | None = None
    start_delay: int | None = None
    if_: dict[str, JsonValue] | None = None
    """The input must contain this pattern for the step to run (pgflow's ``if``)."""
    if_not: dict[str, JsonValue] | None = None
    """The input must not contain this pattern for the step to run (pgflow's ``ifNot``)."""
    when_unmet: WhenUnmetMode | None = None
    when_exhausted: WhenExhaustedMode | None = None


@dataclass(frozen=True, slots=True)
class _Declared:
    """Step options as passed to a decorator, before they are checked."""

    max_attempts: object
    base_delay: object
    timeout: object
    start_delay: object
    if_: object
    if_not: object
    when_unmet: object
    when_exhausted: object


@dataclass(frozen=True, eq=False)
class StepDefinition:
    """One declared step: what the compiler emits and what the worker calls.

    The handler receives, as pgflow passes it: the flow input (root single step), the object
    ``{dep_slug: output}`` of its dependencies (dependent single step), or one element of the
    array it maps over (map step). It also receives the task context when it takes two
    positional parameters.

    Only dependencies that completed are in that object: one that was skipped (an unmet
    condition, or ``when_exhausted='skip'``) is simply absent, so a handler depending on a
    skippable step should read it with ``input.get(slug)``. A map step whose only dependency
    was skipped runs no task and outputs ``[]``. With ``'skip-cascade'`` the dependents are
    skipped too, so a handler that runs always finds the dependency.
    """

    flow_slug: str
    slug: str
    handler: Callable[..., Any] = field(repr=False)
    dependencies: tuple[str, ...]
    """Slugs of the steps this one waits for, in declared order."""
    step_type: StepType
    is_array: bool
    """Declared with ``.array``: runs like any single step, and should return a list."""
    options: StepOptions
    map_source: str | None
    """For a dependent map, the step whose array output it maps over; ``None`` otherwise."""
    wants_context: bool
    """The handler takes ``(input, ctx)`` rather than ``(input)``."""
    is_async: bool
    input_model: type[BaseModel] | None = field(repr=False)
    """The pydantic model the handler's first parameter is annotated with, if any."""

    @property
    def is_map(self) -> bool:
        return self.step_type == "map"

    @property
    def is_root(self) -> bool:
        """No dependencies: the step reads the flow input (or, as a map, its elements)."""
        return not self.dependencies

    def prepare_input(self, raw: Any) -> Any:
        """The handler's argument: ``raw`` validated into the input model, or ``raw`` itself."""
        if self.input_model is None:
            return raw
        try:
            return self.input_model.model_validate(raw)
        except ValidationError as exc:
            raise HandlerInputError(
                f"step {self.slug!r} of flow {self.flow_slug!r} received input that does not "
                f"match {self.input_model.__name__}: {exc}",
                flow_slug=self.flow_slug,
                step_slug=self.slug,
            ) from exc

    def serialize_output(self, value: Any) -> JsonValue:
        """The handler's return value as plain JSON data, ready to be stored as ``jsonb``.

        Pydantic models are dumped in JSON mode and tuples become lists. Anything JSON cannot
        hold (datetimes, sets, NaN, non-string keys, arbitrary objects) raises
        :class:`HandlerOutputError` naming the offending type and where it sits in the output.
        """
        try:
            return _to_json(value, "output", set())
        except _NotJson as exc:
            raise HandlerOutputError(
                f"step {self.slug!r} of flow {self.flow_slug!r} returned a value that is not "
                f"JSON-serializable: {exc.what} at {exc.path}"
            ) from None


class Flow:
    """A pgflow flow: a slug, flow-wide options, and steps declared in dependency order.

    ::

        flow = Flow("greet_user", max_attempts=3)

        @flow.step
        def full_name(input, ctx): ...

        @flow.step(depends_on=[full_name], timeout=30)
        async def greeting(input): ...

        @flow.step(depends_on=[greeting], if_={"full_name": "Ada Lovelace"})
        def celebrate(input): ...

    Decorators return the handler unchanged. Dependencies must be declared before the steps
    that use them, as pgflow requires; they are named by slug or by handler function.

    Conditions are checked when a step's dependencies are done: ``if_`` (the input must
    contain this JSON pattern) and ``if_not`` (it must not) are matched with ``jsonb @>``
    against the flow input for a root step, or against ``{dep_slug: output}`` of its completed
    dependencies otherwise. ``step_queues=True`` gives every step a queue of its own (pgflow
    0.17's per-step queues), so each step can be served by its own worker
    (``FlowWorker(flow, dsn, step=...)``); queue names follow pgflow's rules
    (:meth:`queue_name`). ``when_unmet`` decides what an unmet condition does ('skip', the
    default; 'skip-cascade'; 'fail'), ``when_exhausted`` what a task out of attempts does
    ('fail', the default; 'skip'; 'skip-cascade'). A skipped dependency is absent from its
    dependents' input, and a skipped leaf step from the run's output.
    """

    def __init__(
        self,
        slug: str,
        *,
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        step_queues: bool = False,
    ) -> None:
        _check_flow_slug(slug)
        if step_queues and len(slug) + len("__0") > MAX_FLOW_SLUG_LENGTH:
            raise FlowDefinitionError(
                f"flow {slug!r}: cannot use per-step queues: its shortest step queue "
                f"{(slug + '__0').lower()!r} is longer than pgmq's {MAX_FLOW_SLUG_LENGTH} "
                f"characters; shorten the slug to {MAX_FLOW_SLUG_LENGTH - 3} characters",
                flow_slug=slug,
            )
        self._step_queues = step_queues
        self._slug = slug
        self._options = FlowOptions(
            max_attempts=_check_option("max_attempts", max_attempts, slug),
            base_delay=_check_option("base_delay", base_delay, slug),
            timeout=_check_option("timeout", timeout, slug),
        )
        self._steps: dict[str, StepDefinition] = {}

    @property
    def slug(self) -> str:
        return self._slug

    @property
    def options(self) -> FlowOptions:
        return self._options

    @property
    def step_queues(self) -> bool:
        """Whether every step has a queue of its own (pgflow's queue mode 'step')."""
        return self._step_queues

    @property
    def queue_mode(self) -> str:
        """pgflow's name for where the flow's messages go: ``'step'`` or ``'flow'``."""
        return "step" if self._step_queues else "flow"

    def queue_name(self, step: str | None = None) -> str:
        """The pgmq queue a worker polls: the flow's, ``lower(slug)``, or with per-step queues
        the step's, ``lower(slug__step)`` when that fits pgmq's 47 characters, else
        ``lower(slug__index)``, as pgflow 0.17 names them."""
        if step is None:
            if self._step_queues:
                raise FlowDefinitionError(
                    f"flow {self._slug!r} has a queue per step: name the step",
                    flow_slug=self._slug,
                )
            return self._slug.lower()
        index = list(self._steps).index(self.get_step(step).slug)
        if not self._step_queues:
            return self._slug.lower()
        readable = f"{self._slug}__{step}".lower()
        if len(readable) <= MAX_FLOW_SLUG_LENGTH:
            return readable
        by_index = f"{self._slug}__{index}".lower()
        if len(by_index) > MAX_FLOW_SLUG_LENGTH:
            raise FlowDefinitionError(
                f"flow {self._slug!r}, step {step!r}: neither {readable!r} nor {by_index!r} "
                f"fits pgmq's {MAX_FLOW_SLUG_LENGTH} characters",
                flow_slug=self._slug,
                step_slug=step,
            )
        return by_index

    def route_map(self) -> list[dict[str, str]]:
        """Each step's queue in step order, as pgflow's ``ensure_flow_compiled`` takes it."""
        return [{"stepSlug": s, "queueName": self.queue_name(s)} for s in self._steps]

    @property
    def steps(self) -> tuple[StepDefinition, ...]:
        """The steps in declaration order (which is a topological order)."""
        return tuple(self._steps.values())

    def get_step(self, slug: str) -> StepDefinition:
        """The step named ``slug``; raises :class:`StepNotFound` when the flow has none."""
        try:
            return self._steps[slug]
        except KeyError:
            raise StepNotFound(self._slug, slug) from None

    def __repr__(self) -> str:
        return f"Flow({self._slug!r}, steps={list(self._steps)!r})"

    # -- declaring steps ----------------------------------------------------------------------

    @overload
    def step(
        self,
        handler: H,
        /,
        *,
        slug: str | None = None,
        depends_on: StepRef | Iterable[StepRef] = (),
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        start_delay: int | None = None,
        if_: JsonPattern | None = None,
        if_not: JsonPattern | None = None,
        when_unmet: WhenUnmetMode | None = None,
        when_exhausted: WhenExhaustedMode | None = None,
    ) -> H: ...

    @overload
    def step(
        self,
        slug_: str | None = None,
        /,
        *,
        slug: str | None = None,
        depends_on: StepRef | Iterable[StepRef] = (),
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        start_delay: int | None = None,
        if_: JsonPattern | None = None,
        if_not: JsonPattern | None = None,
        when_unmet: WhenUnmetMode | None = None,
        when_exhausted: WhenExhaustedMode | None = None,
    ) -> Callable[[H], H]: ...

    def step(
        self,
        target: Any = None,
        /,
        *,
        slug: str | None = None,
        depends_on: StepRef | Iterable[StepRef] = (),
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        start_delay: int | None = None,
        if_: JsonPattern | None = None,
        if_not: JsonPattern | None = None,
        when_unmet: WhenUnmetMode | None = None,
        when_exhausted: WhenExhaustedMode | None = None,
    ) -> Any:
        """Declare a single step: ``@flow.step``, ``@flow.step(...)`` or ``flow.step(fn, ...)``.

        The slug is the first positional argument, ``slug=``, or the function's name. The
        handler gets the flow input when the step has no dependencies, otherwise the object
        ``{dep_slug: output}`` of its completed dependencies (skipped ones are absent).
        ``if_`` / ``if_not`` / ``when_unmet`` / ``when_exhausted`` are the step's conditions
        (see :class:`Flow`).
        """
        options = _Declared(
            max_attempts, base_delay, timeout, start_delay, if_, if_not, when_unmet, when_exhausted
        )
        return self._declare(target, slug, "single", False, depends_on, None, options)

    @overload
    def array(
        self,
        handler: H,
        /,
        *,
        slug: str | None = None,
        depends_on: StepRef | Iterable[StepRef] = (),
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        start_delay: int | None = None,
        if_: JsonPattern | None = None,
        if_not: JsonPattern | None = None,
        when_unmet: WhenUnmetMode | None = None,
        when_exhausted: WhenExhaustedMode | None = None,
    ) -> H: ...

    @overload
    def array(
        self,
        slug_: str | None = None,
        /,
        *,
        slug: str | None = None,
        depends_on: StepRef | Iterable[StepRef] = (),
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        start_delay: int | None = None,
        if_: JsonPattern | None = None,
        if_not: JsonPattern | None = None,
        when_unmet: WhenUnmetMode | None = None,
        when_exhausted: WhenExhaustedMode | None = None,
    ) -> Callable[[H], H]: ...

    def array(
        self,
        target: Any = None,
        /,
        *,
        slug: str | None = None,
        depends_on: StepRef | Iterable[StepRef] = (),
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        start_delay: int | None = None,
        if_: JsonPattern | None = None,
        if_not: JsonPattern | None = None,
        when_unmet: WhenUnmetMode | None = None,
        when_exhausted: WhenExhaustedMode | None = None,
    ) -> Any:
        """Declare a step whose output is a list, for a map step to fan out over.

        At runtime it is exactly a single step; the name documents intent.
        """
        options = _Declared(
            max_attempts, base_delay, timeout, start_delay, if_, if_not, when_unmet, when_exhausted
        )
        return self._declare(target, slug, "single", True, depends_on, None, options)

    @overload
    def map(
        self,
        handler: H,
        /,
        *,
        slug: str | None = None,
        array: StepRef | None = None,
        depends_on: None = None,
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        start_delay: int | None = None,
        if_: JsonPattern | None = None,
        if_not: JsonPattern | None = None,
        when_unmet: WhenUnmetMode | None = None,
        when_exhausted: WhenExhaustedMode | None = None,
    ) -> H: ...

    @overload
    def map(
        self,
        slug_: str | None = None,
        /,
        *,
        slug: str | None = None,
        array: StepRef | None = None,
        depends_on: None = None,
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        start_delay: int | None = None,
        if_: JsonPattern | None = None,
        if_not: JsonPattern | None = None,
        when_unmet: WhenUnmetMode | None = None,
        when_exhausted: WhenExhaustedMode | None = None,
    ) -> Callable[[H], H]: ...

    def map(
        self,
        target: Any = None,
        /,
        *,
        slug: str | None = None,
        array: StepRef | None = None,
        depends_on: None = None,
        max_attempts: int | None = None,
        base_delay: int | None = None,
        timeout: int | None = None,
        start_delay: int | None = None,
        if_: JsonPattern | None = None,
        if_not: JsonPattern | None = None,
        when_unmet: WhenUnmetMode | None = None,
        when_exhausted: WhenExhaustedMode | None = None,
    ) -> Any:
        """Declare a map step: one task per element, the handler gets one element.

        With ``array=`` (a slug or step function) it maps over that step's list output;
        without it, it is a root map over the flow input, which must then be a list.
        A map step has exactly that one source, so ``depends_on`` is refused.

        Conditions see ``{source_slug: list}`` for a dependent map, and the flow input list
        itself for a root map (which never contains an object pattern: ``if_`` is then
        never met and ``if_not`` always is). When the source step was skipped, the map has
        no element to process and completes with ``[]``.
        """
        options = _Declared(
            max_attempts, base_delay, timeout, start_delay, if_, if_not, when_unmet, when_exhausted
        )
        return self._declare(target, slug, "map", False, depends_on, array, options)

    # -- introspection ------------------------------------------------------------------------

    def to_mermaid(self) -> str:
        """The DAG as a mermaid ``graph TD`` diagram; map steps are drawn as ``[[subroutines]]``."""
        ids = {step.slug: f"s{i}" for i, step in enumerate(self._steps.values())}
        lines = ["graph TD"]
        for step in self._steps.values():
            if step.is_map:
                lines.append(f'    {ids[step.slug]}[["{step.slug} (map)"]]')
            elif step.is_array:
                lines.append(f'    {ids[step.slug]}["{step.slug} (array)"]')
            else:
                lines.append(f'    {ids[step.slug]}["{step.slug}"]')
        for step in self._steps.values():
            lines.extend(f"    {ids[dep]} --> {ids[step.slug]}" for dep in step.dependencies)
        return "\n".join(lines)

    # -- internals ----------------------------------------------------------------------------

    def _declare(
        self,
        target: Any,
        slug: str | None,
        step_type: StepType,
        is_array: bool,
        depends_on: StepRef | Iterable[StepRef] | None,
        array: StepRef | None,
        options: _Declared,
    ) -> Any:
        if callable(target):
            self._add(target, slug, step_type, is_array, depends_on, array, options)
            return target
        if target is not None and not isinstance(target, str):
            raise FlowDefinitionError(
                f"flow {self._slug!r}: expected a step slug or a handler function, "
                f"got {type(target).__name__}",
                flow_slug=self._slug,
            )
        if target is not None and slug is not None:
            raise FlowDefinitionError(
                f"flow {self._slug!r}: the step slug is given twice ({target!r} and slug={slug!r})",
                flow_slug=self._slug,
                step_slug=target,
            )
        explicit = target if target is not None else slug

        def decorator(handler: H) -> H:
            self._add(handler, explicit, step_type, is_array, depends_on, array, options)
            return handler

        return decorator

    def _add(
        self,
        handler: Any,
        slug: str | None,
        step_type: StepType,
        is_array: bool,
        depends_on: StepRef | Iterable[StepRef] | None,
        array: StepRef | None,
        options: _Declared,
    ) -> None:
        if slug is None:
            slug = self._slug_from_name(handler)
        _check_step_slug(slug, self._slug)
        if slug in self._steps:
            raise self._error(
                slug, "a step with this slug is already defined (step slugs are unique in a flow)"
            )
        same = [s for s in self._steps if s.lower() == slug.lower()]
        if same:
            raise self._error(
                slug,
                f"differs from step {same[0]!r} only in case (step slugs are unique in a flow "
                "ignoring case)",
            )
        if not callable(handler):
            raise self._error(slug, f"the handler must be callable, got {type(handler).__name__}")

        map_source: str | None = None
        if step_type == "map":
            if depends_on is not None:
                raise self._error(
                    slug,
                    "a map step takes its one source from array= (a step slug or function), "
                    "not depends_on",
                )
            if array is not None:
                if not isinstance(array, str) and not callable(array):
                    raise self._error(
                        slug,
                        "a map step maps over exactly one step: array= takes one slug or step "
                        f"function, got {type(array).__name__}",
                    )
                map_source = self._resolve_dependency(slug, array)
            dependencies: tuple[str, ...] = () if map_source is None else (map_source,)
        else:
            dependencies = self._resolve_dependencies(
                slug, () if depends_on is None else depends_on
            )

        flow_slug = self._slug
        checked = StepOptions(
            max_attempts=_check_option("max_attempts", options.max_attempts, flow_slug, slug),
            base_delay=_check_option("base_delay", options.base_delay, flow_slug, slug),
            timeout=_check_option("timeout", options.timeout, flow_slug, slug),
            start_delay=_check_option("start_delay", options.start_delay, flow_slug, slug),
            if_=_check_pattern("if_", options.if_, flow_slug, slug),
            if_not=_check_pattern("if_not", options.if_not, flow_slug, slug),
            when_unmet=cast(
                "WhenUnmetMode | None",
                _check_mode("when_unmet", options.when_unmet, flow_slug, slug),
            ),
            when_exhausted=cast(
                "WhenExhaustedMode | None",
                _check_mode("when_exhausted", options.when_exhausted, flow_slug, slug),
            ),
        )
        wants_context, is_async, input_model = _inspect_handler(handler, flow_slug, slug)
        self._steps[slug] = StepDefinition(
            flow_slug=self._slug,
            slug=slug,
            handler=handler,
            dependencies=dependencies,
            step_type=step_type,
            is_array=is_array,
            options=checked,
            map_source=map_source,
            wants_context=wants_context,
            is_async=is_async,
            input_model=input_model,
        )

    def _slug_from_name(self, handler: Any) -> str:
        name = getattr(handler, "__name__", None)
        if not isinstance(name, str):
            raise FlowDefinitionError(
                f"flow {self._slug!r}: cannot take a step slug from {handler!r}, which has no "
                "__name__; pass slug=",
                flow_slug=self._slug,
            )
        if not _SLUG.fullmatch(name) or "__" in name:
            raise self._error(
                name, f"invalid slug (taken from the function's name): {_SLUG_RULES}, or pass slug="
            )
        return name

    def _resolve_dependencies(
        self, slug: str, depends_on: StepRef | Iterable[StepRef]
    ) -> tuple[str, ...]:
        refs: list[StepRef]
        if isinstance(depends_on, str) or callable(depends_on):
            refs = [depends_on]
        else:
            refs = list(depends_on)
        resolved: list[str] = []
        for ref in refs:
            dep = self._resolve_dependency(slug, ref)
            if dep in resolved:
                raise self._error(slug, f"lists the dependency {dep!r} more than once")
            resolved.append(dep)
        return tuple(resolved)

    def _resolve_dependency(self, slug: str, ref: object) -> str:
        if isinstance(ref, str):
            if ref == slug:
                raise self._error(slug, "a step cannot depend on itself")
            if ref not in self._steps:
                raise self._error(
                    slug,
                    f"depends on {ref!r}, which is not defined yet (declare a step after the "
                    "steps it depends on)",
                )
            return ref
        if callable(ref):
            matches = [s.slug for s in self._steps.values() if s.handler is ref]
            name = getattr(ref, "__name__", repr(ref))
            if not matches:
                raise self._error(
                    slug,
                    f"depends on the function {name!r}, which is not a step of this flow (yet)",
                )
            if len(matches) > 1:
                raise self._error(
                    slug,
                    f"depends on the function {name!r}, which is declared as several steps "
                    f"({', '.join(map(repr, matches))}); name the dependency by slug",
                )
            return matches[0]
        raise self._error(
            slug, f"dependencies are step slugs or step functions, got {type(ref).__name__}"
        )

    def _error(self, step_slug: str, rule: str) -> FlowDefinitionError:
        return FlowDefinitionError(
            f"{_where(self._slug, step_slug)}: {rule}",
            flow_slug=self._slug,
            step_slug=step_slug,
        )


# -- validation helpers -----------------------------------------------------------------------


def _slug_problem(slug: object) -> str | None:
    if not isinstance(slug, str):
        return f"a slug is a str, got {type(slug).__name__}"
    if not slug:
        return "the slug is empty"
    if len(slug) > MAX_SLUG_LENGTH:
        return f"the slug is {len(slug)} characters long; at most {MAX_SLUG_LENGTH} are allowed"
    if not _SLUG.fullmatch(slug) or "__" in slug:
        return f"invalid slug: {_SLUG_RULES}"
    if slug in _RESERVED_SLUGS:
        return f"{slug!r} is a reserved word and cannot be a slug"
    return None


def _check_flow_slug(slug: object) -> None:
    problem = _slug_problem(slug)
    if problem is None and isinstance(slug, str) and len(slug) > MAX_FLOW_SLUG_LENGTH:
        problem = (
            f"the slug is {len(slug)} characters long; a flow slug may have at most "
            f"{MAX_FLOW_SLUG_LENGTH}, because the flow's pgmq queue is named after it and pgmq "
            f"limits queue names to {MAX_FLOW_SLUG_LENGTH} characters"
        )
    if problem is not None:
        raise FlowDefinitionError(f"flow {slug!r}: {problem}", flow_slug=str(slug))


def _check_step_slug(slug: object, flow_slug: str) -> None:
    problem = _slug_problem(slug)
    if problem is not None:
        raise FlowDefinitionError(
            f"flow {flow_slug!r}, step {slug!r}: {problem}",
            flow_slug=flow_slug,
            step_slug=str(slug),
        )


def _where(flow_slug: str, step_slug: str | None) -> str:
    return f"flow {flow_slug!r}" if step_slug is None else f"flow {flow_slug!r}, step {step_slug!r}"


def _check_option(
    name: str, value: object, flow_slug: str, step_slug: str | None = None
) -> int | None:
    if value is None:
        return None
    minimum = _MINIMUMS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= _INT4_MAX:
        raise FlowDefinitionError(
            f"{_where(flow_slug, step_slug)}: {name} must be an integer >= {minimum} "
            f"(and <= {_INT4_MAX}), got {value!r}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    return int(value)


def _check_pattern(
    name: str, value: object, flow_slug: str, step_slug: str
) -> dict[str, JsonValue] | None:
    """A condition pattern as a plain JSON object (a private copy), or a FlowDefinitionError."""
    if value is None:
        return None
    where = _where(flow_slug, step_slug)
    if not isinstance(value, Mapping):
        raise FlowDefinitionError(
            f"{where}: {name} must be a JSON object pattern (a dict with str keys), "
            f"got {type(value).__name__}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    try:
        plain = _to_json(value, name, set())
    except _NotJson as exc:
        raise FlowDefinitionError(
            f"{where}: {name} must be JSON, but holds {exc.what} at {exc.path}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        ) from None
    assert isinstance(plain, dict)
    return plain


def _check_mode(name: str, value: object, flow_slug: str, step_slug: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in _MODES:
        raise FlowDefinitionError(
            f"{_where(flow_slug, step_slug)}: {name} must be 'fail', 'skip' or 'skip-cascade', "
            f"got {value!r}",
            flow_slug=flow_slug,
            step_slug=step_slug,
        )
    return value


def _inspect_handler(
    handler: Any, flow_slug: str, step_slug: str
) -> tuple[bool, bool, type[BaseModel] | None]:
    """``(wants_context, is_async, input_model)`` for a handler, or a FlowDefinitionError."""

    def fail(rule: str) -> FlowDefinitionError:
        return FlowDefinitionError(
            f"{_where(flow_slug, step_slug)}: {rule}", flow_slug=flow_slug, step_slug=step_slug
        )

    if inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler):
        raise fail("the handler is a generator; a step handler returns one value")
    try:
        signature = inspect.signature(handler, eval_str=True)
    except (NameError, SyntaxError, TypeError, AttributeError):
        try:
            signature = inspect.signature(handler)
        except (TypeError, ValueError) as exc:
            raise fail(f"cannot read the handler's signature ({exc})") from None
    except ValueError as exc:
        raise fail(f"cannot read the handler's signature ({exc})") from None

    params = list(signature.parameters.values())
    positional = [
        p
        for p in params
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    keyword_only = [
        p.name
        for p in params
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is inspect.Parameter.empty
    ]
    if keyword_only:
        raise fail(
            "the handler has required keyword-only parameters "
            f"({', '.join(keyword_only)}); it must accept (input) or (input, ctx)"
        )
    if len(positional) > 2 or (not positional and not varargs):
        raise fail(
            f"the handler takes {len(positional)} positional parameters; "
            "it must accept (input) or (input, ctx)"
        )
    wants_context = len(positional) == 2 or varargs

    # A callable object is async when its class defines ``async def __call__``.
    call = getattr(type(handler), "__call__", None)  # noqa: B004
    is_async = inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)

    input_model: type[BaseModel] | None = None
    if positional:
        annotation = _resolve_annotation(handler, positional[0].annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            input_model = annotation
    return wants_context, is_async, input_model


def _resolve_annotation(handler: Any, annotation: Any) -> Any:
    """A string annotation evaluated in the handler's module; unresolvable ones count as absent."""
    if not isinstance(annotation, str):
        return annotation
    namespace = getattr(inspect.unwrap(handler), "__globals__", None)
    if namespace is None:
        return None
    try:
        return eval(annotation, namespace)
    except Exception:
        return None


# -- JSON conversion --------------------------------------------------------------------------


class _NotJson(Exception):
    def __init__(self, what: str, path: str) -> None:
        super().__init__(what, path)
        self.what = what
        self.path = path


def _to_json(value: Any, path: str, active: set[int]) -> JsonValue:
    """``value`` as plain JSON data; ``active`` holds the containers on the current path."""
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value if type(value) is str else str.__str__(value)
    if isinstance(value, int):
        return value if type(value) is int else int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJson(f"float {value!r}", path)
        return value if type(value) is float else float(value)
    if isinstance(value, BaseModel):
        try:
            dumped = value.model_dump(mode="json")
        except PydanticSerializationError as exc:
            raise _NotJson(f"{type(value).__name__} ({exc})", path) from None
        return _to_json(dumped, path, active)
    if isinstance(value, Mapping | list | tuple):
        if id(value) in active:
            raise _NotJson(f"{type(value).__name__} that contains itself", path)
        active.add(id(value))
        try:
            if isinstance(value, Mapping):
                out: dict[str, JsonValue] = {}
                for key, item in value.items():
                    if not isinstance(key, str):
                        raise _NotJson(f"{type(key).__name__} key {key!r} (keys must be str)", path)
                    plain = key if type(key) is str else str.__str__(key)
                    out[plain] = _to_json(item, f"{path}[{plain!r}]", active)
                return out
            return [_to_json(item, f"{path}[{i}]", active) for i, item in enumerate(value)]
        finally:
            active.discard(id(value))
    raise _NotJson(type(value).__name__, path)
