"""A small reference model of one pgflow run, in plain Python, for the property tests.

It follows pgflow's rules as the SQL core implements them (see docs/reliability.md): steps
start when their dependencies complete; a map step gets one task per element of its source
(the flow input for a root map, its dependency's output otherwise); empty maps complete at
once, level by level; failed attempts are retried until ``max_attempts``; an exhausted task
fails its step and its run and cancels every other active task; a single step feeding a map
must output an array, or the run fails with a type violation. The model records the final
states, the outputs and the broadcast events (with the payload keys worth comparing) in order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

StepKind = Literal["single", "array", "map"]
"""``array`` is a single step whose handler returns a list (pgflow's ``.array``)."""


@dataclass(frozen=True)
class StepSpec:
    slug: str
    kind: StepKind
    deps: tuple[str, ...]
    max_attempts: int
    array_length: int = 0
    """For ``array`` steps: the length of the list the handler returns."""

    @property
    def is_map(self) -> bool:
        return self.kind == "map"


@dataclass(frozen=True)
class FlowSpec:
    steps: tuple[StepSpec, ...]

    def step(self, slug: str) -> StepSpec:
        return next(s for s in self.steps if s.slug == slug)

    def children(self, slug: str) -> list[StepSpec]:
        return [s for s in self.steps if slug in s.deps]


def handler_output(step: StepSpec, task_index: int, task_input: Any) -> Any:
    """What the handlers of generated flows return: data derived from their input."""
    if step.kind == "map":
        return {"i": task_index, "x": task_input}
    if step.kind == "array":
        return [f"{step.slug}.{k}" for k in range(step.array_length)]
    return {"from": step.slug, "deps": sorted(task_input)}


def json_type(value: Any) -> str:
    """The name jsonb_typeof gives a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass
class StepState:
    status: str = "created"
    remaining_deps: int = 0
    initial_tasks: int | None = None
    remaining_tasks: int | None = None
    output: Any = None
    error_message: str | None = None


@dataclass
class TaskState:
    status: str = "queued"
    attempts: int = 0
    output: Any = None
    error_message: str | None = None


Event = tuple[str, dict[str, Any]]


@dataclass
class RunModel:
    """The expected life of one run, advanced call by call alongside the real one."""

    spec: FlowSpec
    flow_input: list[int]
    status: str = "started"
    output: Any = None
    remaining_steps: int = 0
    steps: dict[str, StepState] = field(default_factory=dict)
    tasks: dict[tuple[str, int], TaskState] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)

    # -- the calls ----------------------------------------------------------------------------

    def start(self) -> None:
        """``start_flow``: states for every step, then taskless steps, ready steps, the end."""
        spec = self.spec
        self.remaining_steps = len(spec.steps)
        for step in spec.steps:
            if not step.is_map:
                initial: int | None = 1
            elif not step.deps:
                initial = len(self.flow_input)
            else:
                initial = None
            self.steps[step.slug] = StepState(remaining_deps=len(step.deps), initial_tasks=initial)
        self._emit(
            "run:started",
            status="started",
            remaining_steps=self.remaining_steps,
            input=self.flow_input,
        )
        self._advance()

    def task_input(self, slug: str, index: int) -> tuple[Any, Any]:
        """``(input, flow_input)`` that start_tasks must hand out for this task."""
        step = self.spec.step(slug)
        if step.is_map:
            source = self.flow_input if not step.deps else self.steps[step.deps[0]].output
            return source[index], None
        deps = {d: self.steps[d].output for d in step.deps}
        return deps, (self.flow_input if not step.deps else None)

    def claim(self, slug: str, index: int) -> None:
        """``start_tasks`` claimed this queued task."""
        task = self.tasks[(slug, index)]
        assert task.status == "queued", (slug, index, task)
        task.status = "started"
        task.attempts += 1

    def complete(self, slug: str, index: int, output: Any) -> None:
        """``complete_task`` for a task claimed earlier."""
        state = self.steps[slug]
        if self.status != "started" or state.status != "started":
            return  # a late result: ignored
        task = self.tasks[(slug, index)]
        step = self.spec.step(slug)
        map_children = [c for c in self.spec.children(slug) if c.is_map]
        if not step.is_map and not isinstance(output, list) and map_children:
            self._type_violation(step, map_children[0], task, output)
            return
        task.status, task.output = "completed", output
        assert state.remaining_tasks is not None
        state.remaining_tasks -= 1
        if state.remaining_tasks > 0:
            return
        state.status = "completed"
        if step.is_map:
            state.output = [self.tasks[(slug, i)].output for i in range(state.initial_tasks or 0)]
        else:
            state.output = output
        self._emit(
            f"step:{slug}:completed", step_slug=slug, status="completed", output=state.output
        )
        if step.is_map:
            child_tasks = state.initial_tasks
        else:
            child_tasks = len(output) if isinstance(output, list) else None
        for child in self.spec.children(slug):
            child_state = self.steps[child.slug]
            child_state.remaining_deps -= 1
            if child.is_map and child_state.initial_tasks is None:
                child_state.initial_tasks = child_tasks
        self.remaining_steps -= 1
        self._advance()

    def fail(self, slug: str, index: int, message: str) -> None:
        """``fail_task`` for a task claimed earlier: a retry, or the end of step and run."""
        task = self.tasks[(slug, index)]
        if self.status != "started":
            return  # a late report: the task keeps what the run's end gave it
        state = self.steps[slug]
        if state.status != "started":
            return
        task.error_message = message
        if task.attempts < self.spec.step(slug).max_attempts:
            task.status = "queued"
            return
        task.status = "failed"
        state.status, state.error_message = "failed", message
        self._emit(f"step:{slug}:failed", step_slug=slug, status="failed", error_message=message)
        self.status = "failed"
        self._emit("run:failed", status="failed", error_message=message)
        self._cancel_tasks()

    # -- what the calls set off ---------------------------------------------------------------

    def _advance(self) -> None:
        self._complete_taskless_steps()
        self._start_ready_steps()
        self._maybe_complete()

    def _complete_taskless_steps(self) -> None:
        while self.status == "started":
            level = [
                s
                for s in self.spec.steps
                if self.steps[s.slug].status == "created"
                and self.steps[s.slug].remaining_deps == 0
                and self.steps[s.slug].initial_tasks == 0
            ]
            if not level:
                return
            for step in level:
                state = self.steps[step.slug]
                state.status, state.remaining_tasks = "completed", 0
                state.output = [] if step.is_map else None
                self._emit(
                    f"step:{step.slug}:completed",
                    step_slug=step.slug,
                    status="completed",
                    output=state.output,
                    remaining_tasks=0,
                    remaining_deps=0,
                )
            slugs = {s.slug for s in level}
            for child in self.spec.steps:
                parents = len(slugs.intersection(child.deps))
                if parents:
                    child_state = self.steps[child.slug]
                    child_state.remaining_deps -= parents
                    if child.is_map and child_state.initial_tasks is None:
                        child_state.initial_tasks = 0
            self.remaining_steps -= len(level)

    def _start_ready_steps(self) -> None:
        if self.status != "started":
            return
        ready = [
            s
            for s in self.spec.steps
            if self.steps[s.slug].status == "created"
            and self.steps[s.slug].remaining_deps == 0
            and (self.steps[s.slug].initial_tasks or 0) > 0
        ]
        for step in ready:
            state = self.steps[step.slug]
            state.status, state.remaining_tasks = "started", state.initial_tasks
            self._emit(
                f"step:{step.slug}:started",
                step_slug=step.slug,
                status="started",
                remaining_tasks=state.initial_tasks,
                remaining_deps=0,
            )
            for i in range(state.initial_tasks or 0):
                self.tasks[(step.slug, i)] = TaskState()

    def _maybe_complete(self) -> None:
        if self.status != "started" or self.remaining_steps != 0:
            return
        self.status = "completed"
        leaves = {
            s.slug: self.steps[s.slug].output
            for s in self.spec.steps
            if not self.spec.children(s.slug) and self.steps[s.slug].status == "completed"
        }
        self.output = leaves or None
        self._emit("run:completed", status="completed", output=self.output)

    def _type_violation(
        self, step: StepSpec, child: StepSpec, task: TaskState, output: Any
    ) -> None:
        got = json_type(output)
        message = (
            f"[TYPE_VIOLATION] Map step {child.slug} expects array input but dependency "
            f"{step.slug} produced {got}"
        )
        self.status = "failed"
        self._emit("run:failed", status="failed", error_message=message)
        task.status, task.output = "failed", output
        task.error_message = f"[TYPE_VIOLATION] Produced {got} instead of array"
        state = self.steps[step.slug]
        state.status, state.error_message = "failed", message
        self._emit(
            f"step:{step.slug}:failed", step_slug=step.slug, status="failed", error_message=message
        )
        self._cancel_tasks()

    def _cancel_tasks(self) -> None:
        for task in self.tasks.values():
            if task.status in ("queued", "started"):
                task.status = "cancelled"

    def _emit(self, event: str, **payload: Any) -> None:
        self.events.append((event, payload))
