"""RunRecord: one run as ``list_runs`` lists it, without input, output or subscription."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, computed_field
from pydantic import ValidationError as _ValidationError

from ._events import RunId, Slug, Timestamp
from ._status import FlowRunStatus
from .errors import InvalidRunData

__all__ = ["RunRecord", "parse_run_record"]


class RunRecord(BaseModel):
    """A run's status and times, as ``pgflow.list_runs`` returns them: cheap to list by the
    page, and a plain value (``model_dump(mode="json")`` gives the CLI's JSON)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    run_id: RunId
    flow_slug: Slug
    status: FlowRunStatus
    remaining_steps: int | None = None
    started_at: Timestamp | None = None
    completed_at: Timestamp | None = None
    failed_at: Timestamp | None = None
    cancelled_at: Timestamp | None = None
    cancel_reason: str | None = None
    restart_of_run_id: RunId | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cancelled(self) -> bool:
        """Whether the run was cancelled (it is then ``failed``, with ``cancelled_at`` set)."""
        return self.cancelled_at is not None


def parse_run_record(row: Mapping[str, Any]) -> RunRecord:
    """Validate one row of ``list_runs``; raise :class:`InvalidRunData` naming what is wrong."""
    try:
        return RunRecord.model_validate(dict(row))
    except _ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}"
            for e in exc.errors(include_url=False)
        )
        raise InvalidRunData(
            f"Invalid run data for run {row.get('run_id', '<unknown>')}: {problems}"
        ) from None
