"""Workflows: a context that stamps every object saved inside it with the workflow's id.

The current workflow is a `contextvars.ContextVar`, so two threads or two asyncio tasks running
different workflows never see each other's id.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidArgument
from ..engine import codec as _codec
from ..engine.ids import new_id
from .validate import check_id, check_metadata, check_optional_str

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

__all__ = ["Workflow", "current_workflow_id"]

_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("microblob_workflow_id", default=None)


def current_workflow_id() -> str | None:
    """The id of the innermost active `Workflow` in this thread / task, or None."""
    return _CURRENT.get()


class Workflow:
    """`with Workflow(name="scan", store=store) as wf:` — objects saved inside get `wf.workflow_id`.

    With a store, a `workflows` document records name, start, end and custom metadata (and `status`
    "error" if the block raised)."""

    def __init__(
        self,
        name: str | None = None,
        *,
        store: Store | None = None,
        workflow_id: str | None = None,
        custom_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = check_optional_str(name, "name")
        self.workflow_id = check_id(workflow_id, "workflow_id") if workflow_id is not None else new_id()
        self.custom_metadata = check_metadata(custom_metadata) or {}
        if store is not None and not hasattr(store, "internals"):
            raise InvalidArgument(f"store must be a microblob Store, not {type(store).__name__}")
        self.store = store
        self._tokens: list[contextvars.Token[str | None]] = []

    def __repr__(self) -> str:
        return f"Workflow(name={self.name!r}, workflow_id={self.workflow_id!r})"

    def __enter__(self) -> Workflow:
        if self.store is not None:
            self.store.internals.record_workflow(
                self.workflow_id,
                {"name": self.name, "started_at": _codec.utcnow(), "ended_at": None,
                 "status": "running", "custom_metadata": self.custom_metadata},
            )
        self._tokens.append(_CURRENT.set(self.workflow_id))
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        _CURRENT.reset(self._tokens.pop())
        if self.store is not None and not self.store.closed:
            self.store.internals.record_workflow(
                self.workflow_id, {"ended_at": _codec.utcnow(), "status": "error" if exc_type else "completed"}
            )

    async def __aenter__(self) -> Workflow:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)
