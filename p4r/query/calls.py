"""One rerank pipeline, two drivers: the steps that read the store are yielded as calls.

A request's steps (read the users' profiles, query the personas, the summaries, read the
explanations) are written once, as a generator that yields a :class:`Call` wherever it needs
the store and receives the answer back. :func:`run` performs the calls synchronously (the
library, the CLI, Edge); :func:`arun` awaits the async twin of each call where the target has
one (``a`` + name: the server backend's ``AsyncQdrantClient`` path), so a serving process
waits for Qdrant without blocking its event loop, and falls back to the synchronous call
elsewhere (Edge answers in process, in microseconds).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """A read the pipeline needs: ``target.name(*args, **kwargs)``."""

    target: Any
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


Steps = Generator[Call, Any, T]


def run(steps: Steps[T]) -> T:
    """Drive ``steps`` with synchronous calls; returns what the generator returns."""
    try:
        call = next(steps)
        while True:
            call = steps.send(getattr(call.target, call.name)(*call.args, **call.kwargs))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def arun(steps: Steps[T]) -> T:
    """Drive ``steps`` awaiting each call's async twin where the target has one."""
    try:
        call = next(steps)
        while True:
            twin = getattr(call.target, "a" + call.name, None)
            if twin is not None:
                result = await twin(*call.args, **call.kwargs)
            else:
                result = getattr(call.target, call.name)(*call.args, **call.kwargs)
            call = steps.send(result)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
