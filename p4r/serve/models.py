"""HTTP-only request and response models; the shared ones live in :mod:`p4r.query.models`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from p4r.query.models import RankedItemOut, RerankIn, RerankOut


class RerankBatchIn(BaseModel):
    """Several rerank requests answered in one call (one batched engine query)."""

    model_config = ConfigDict(extra="forbid")

    requests: list[RerankIn] = Field(min_length=1, max_length=1000)


class RerankBatchOut(BaseModel):
    """One result per request, in request order."""

    results: list[RerankOut]


def _rerank_body_kind(value: Any) -> str:
    """A body with ``requests`` is a batch; anything else is validated as one request."""
    if isinstance(value, dict) and "requests" in value:
        return "batch"
    return "batch" if isinstance(value, RerankBatchIn) else "one"


# One request or a batch, told apart by the ``requests`` key, so a validation error speaks
# about the shape the client meant instead of listing both.
RerankBody = Annotated[
    Annotated[RerankIn, Tag("one")] | Annotated[RerankBatchIn, Tag("batch")],
    Discriminator(_rerank_body_kind),
]
RerankAnswer = list[RankedItemOut] | RerankBatchOut


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: the one-line message the CLI prints after ``Error:``."""

    error: str
    unknown: list[str] | None = Field(
        default=None, description="Unknown candidate ids (only for that error).")


class HealthOut(BaseModel):
    """The process is up and answering."""

    status: str = "ok"


class ReadyOut(BaseModel):
    """Whether this process serves a version of its dataset, and which one."""

    ready: bool
    dataset: str
    version: int | None = None
    collection: str | None = None
    error: str | None = None


class UserList(BaseModel):
    """Some user ids of the served version (for the explorer's picker)."""

    users: list[str]


class ItemBrief(BaseModel):
    """An item id and its title, when the index holds one."""

    item_id: str
    title: str = ""


class ItemList(BaseModel):
    """Some items of the served version (for the explorer's picker)."""

    items: list[ItemBrief]
