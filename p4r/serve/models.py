"""HTTP-only request and response models; the shared ones live in :mod:`p4r.query.models`.

Every answer of a route that reads the index carries ``version``: scores change scale with
the encoder, so an app must not compare scores across versions.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from p4r.query.models import (
    AddReport,
    Answer,
    PersonaOut,
    Request,
    RerankIn,
    RerankOut,
)
from p4r.settings import MAX_BATCH_CAP

_VERSION = Field(description="The index version that answered (scores are comparable within "
                             "one version only).", examples=[3])

# Machine-readable error codes, one per kind of failure; README "Serving over HTTP" has the
# table with statuses.
ErrorCode = Literal[
    "bad_input", "unknown_candidates", "unknown_user", "not_found", "forgotten_user",
    "not_indexed", "version_gone", "unauthorized", "forbidden", "untrusted_host",
    "method_not_allowed", "payload_too_large", "too_many_requests", "request_timeout",
    "headers_too_large", "storage_full", "unavailable", "internal",
]


class RerankAnswer(RerankOut):
    """``POST /v1/rerank``: the ranked candidates of one request."""

    version: int = _VERSION


class RerankBatchIn(Request):
    """Several rerank requests answered in one call (one batched engine query)."""

    requests: list[RerankIn] = Field(
        min_length=1, max_length=MAX_BATCH_CAP,
        description="The requests, each like the body of `POST /v1/rerank`.",
        examples=[[{"user_id": "u-ana", "candidates": ["tide-sushi", "cafe-lumen"]},
                   {"user_id": "u-ben", "candidates": ["cafe-lumen", "taqueria-sol"]}]])


class RerankBatchOut(Answer):
    """One result per request, in request order."""

    results: list[RerankOut] = Field(description="One result per request, in order.")
    version: int = _VERSION


class InteractionsAnswer(AddReport):
    """``POST /v1/interactions``: what was logged."""

    version: int = _VERSION


class ForgetOut(Answer):
    """``DELETE /v1/users/{user_id}``: what forgetting the user removed."""

    dataset: str = Field(description="The dataset served.", examples=["yelp"])
    user_id: str = Field(description="The user forgotten.", examples=["u-ben"])
    interactions: int = Field(description="Interactions deleted (indexed and live).",
                              examples=[12])
    profiles: int = Field(description="Profiles deleted.", examples=[1])
    already_forgotten: bool = Field(description="The user had been forgotten before (a "
                                                "repeat is harmless).", examples=[False])
    version: int = _VERSION


class ItemPersonasOut(Answer):
    """``GET /v1/items/{item_id}/personas``: every persona of one item."""

    item_id: str = Field(description="The item.", examples=["tide-sushi"])
    personas: list[PersonaOut] = Field(description="Its personas, by persona id.")
    version: int = _VERSION


class ErrorDetail(Answer):
    """What went wrong, for programs (``code``) and people (``message``)."""

    code: ErrorCode = Field(description="What kind of failure (see the README's table).",
                            examples=["unknown_candidates"])
    message: str = Field(description="One line, the one the CLI prints after `Error:`.",
                         examples=["field 'candidates': 1 candidate(s) unknown to dataset "
                                   "'yelp': ghost"])
    request_index: int | None = Field(
        default=None, description="In a batch: which request (from 0) was refused.",
        examples=[1])
    field: str | None = Field(default=None, description="Which field was refused, as a path.",
                              examples=["requests[1].candidates"])
    unknown: list[str] | None = Field(
        default=None, description="`unknown_candidates` only: the ids the index does not know.",
        examples=[["ghost"]])


class ErrorOut(Answer):
    """Every 4xx/5xx body."""

    error: ErrorDetail = Field(description="The error.")


class HealthOut(Answer):
    """The process is up and answering."""

    status: Literal["ok"] = Field(default="ok", description="Always `ok`.", examples=["ok"])
    version: int | None = Field(default=None, description="The index version served now, "
                                                          "null when none.", examples=[3])


class ReadyOut(Answer):
    """Whether this process serves a version of its dataset, and which one."""

    ready: bool = Field(description="A version is served.", examples=[True])
    dataset: str = Field(description="The dataset this server serves.", examples=["yelp"])
    version: int | None = Field(default=None, description="The version served, null when "
                                                          "none.", examples=[3])
    collection: str | None = Field(default=None, description="Its personas collection.",
                                   examples=["p4r_yelp_personas_v3"])
    code: ErrorCode | None = Field(default=None, description="Why not ready (`not_indexed`, "
                                                             "`version_gone`, `unavailable`), "
                                                             "or why the last reload failed.",
                                   examples=["not_indexed"])
    error: str | None = Field(default=None, description="The reason, in one line.",
                              examples=["dataset 'yelp' is not indexed (run: p4r index upsert "
                                        "--dataset yelp)"])


class UserList(Answer):
    """Some user ids of the served version (for the explorer's picker)."""

    users: list[str] = Field(description="User ids, sorted.", examples=[["u-ana", "u-ben"]])
    version: int = _VERSION


class ItemBrief(Answer):
    """An item id and its title, when the index holds one."""

    item_id: str = Field(description="The item.", examples=["tide-sushi"])
    title: str = Field(default="", description="Its title (empty when unknown).",
                       examples=["Tide Sushi"])


class ItemList(Answer):
    """Some items of the served version (for the explorer's picker)."""

    items: list[ItemBrief] = Field(description="Items, sorted by id.")
    version: int = _VERSION


# At most this many ids per `GET /v1/items/lookup` (a page of results or a history), and
# interactions per `GET /v1/users/{user_id}/history`: bounds on what one read can make a
# worker fetch and send.
MAX_LOOKUP = 200
MAX_HISTORY_PAGE = 200
# Distinct items of a whole history listed in `seen` (the explorer marks them).
MAX_SEEN = 10_000

_SUMMARY_EXAMPLE = ("Tide Sushi is a small sushi bar with an omakase counter and a short "
                    "à la carte menu.")


class ItemDetail(Answer):
    """What the served version knows of an item for people: its title and summary."""

    item_id: str = Field(description="The item.", examples=["tide-sushi"])
    title: str = Field(description="Its title (empty when the index holds none).",
                       examples=["Tide Sushi"])
    summary: str = Field(description="Its summary: what a `summary` row of a rerank was "
                                     "scored by.", examples=[_SUMMARY_EXAMPLE])


class ItemLookupOut(Answer):
    """``GET /v1/items/lookup``: titles and summaries of the ids asked for."""

    items: list[ItemDetail] = Field(description="The ids found, in the order asked (each "
                                                "once).")
    not_found: list[str] = Field(
        description="Ids the served version holds no summary for (unknown to it, or indexed "
                    "without one), in the order asked.", examples=[["ghost-kitchen"]])
    version: int = _VERSION


class PastInteraction(Answer):
    """One interaction of a user's history, as recorded."""

    item_id: str = Field(description="The item.", examples=["tide-sushi"])
    title: str = Field(description="The item's title (empty when the index holds none).",
                       examples=["Tide Sushi"])
    timestamp: float = Field(description="When, in unix seconds.", examples=[1705313400.0])
    rating: float | None = Field(description="The rating given, if any.", examples=[5])
    text: str = Field(description="The review text, if any.",
                      examples=["The omakase was the best meal of my year."])
    origin: Literal["file", "live"] = Field(
        description="`file`: from the dataset files the index was built from; `live`: posted "
                    "to `POST /v1/interactions` (or the library) since.", examples=["live"])
    in_profile: bool = Field(description="One of the last n interactions the profile averages.",
                             examples=[True])


class UserHistoryOut(Answer):
    """``GET /v1/users/{user_id}/history``: the user's latest interactions, readable."""

    user_id: str = Field(description="The user.", examples=["u-ben"])
    count: int = Field(description="Every interaction of the user (indexed and live).",
                       examples=[12])
    interactions: list[PastInteraction] = Field(
        description="The last `limit` interactions, oldest first (ties by item id).")
    seen: list[str] = Field(
        description=f"Every distinct item of the whole history, sorted (at most {MAX_SEEN:,}): "
                    "what an app marks as already known to the user.",
        examples=[["cafe-lumen", "tide-sushi"]])
    last_n: int = Field(description="How many of the latest interactions the profile averages "
                                    "(newer ones weigh more).", examples=[10])
    version: int = _VERSION
