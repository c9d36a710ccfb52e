"""Rules for the strings p4r stores: ids and text must be valid Unicode, ids are bounded.

JSON can spell a lone UTF-16 surrogate (``"\\ud800"``); Python decodes it into a ``str`` that
cannot be encoded as UTF-8, so it would fail later, far from where it came in (a sqlite write,
a Qdrant payload, an HTTP answer: a 500). Files and requests refuse it where it arrives, with
the field's name, through the functions below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, StringConstraints
from pydantic_core import PydanticCustomError

from p4r.errors import InputError

# The longest id accepted anywhere (files, requests): far above any real id (22 characters in
# the Yelp sample), small enough that an id never dominates a message or a payload.
MAX_ID_CHARS = 512

# A JSON escape of a surrogate code point: the only way a lone surrogate gets into a line that
# already decoded as UTF-8 (raw surrogate bytes are invalid UTF-8 and refused earlier).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not valid Unicode (``"a lone surrogate '\\ud800' at character 3"``),
    or None when it can be stored and sent as UTF-8."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"a lone surrogate {text[exc.start]!r} at character {exc.start + 1} (not valid "
                "Unicode; send UTF-8 text)")
    return None


def check_ids(values: Iterable[str], field: str, *, single: bool = False) -> None:
    """Refuse the first id that is empty, longer than ``MAX_ID_CHARS`` or not valid Unicode.

    For library entry points that take ids without a pydantic model (``Reranker.rerank``
    with ``candidates=[...]``): the same rule as :data:`Id`, as an InputError naming
    ``field[i]`` (or ``field`` when ``single``), instead of a UnicodeEncodeError from deep
    inside the engine.
    """
    for index, value in enumerate(values):
        where = field if single else f"{field}[{index}]"
        if not isinstance(value, str) or not value:
            raise InputError(f"expected a non-empty string, got {shown(value)}", field=where)
        if len(value) > MAX_ID_CHARS:
            raise InputError(f"an id of {len(value):,} characters is longer than the limit of "
                             f"{MAX_ID_CHARS}", field=where)
        problem = unicode_problem(value)
        if problem is not None:
            raise InputError(problem, field=where)


def may_hold_surrogates(raw: bytes) -> bool:
    """Cheap pre-check of a raw JSON line: could decoding it produce a lone surrogate?"""
    return b"\\u" in raw and _SURROGATE_ESCAPE.search(raw) is not None


def _strings(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """``(field path, string)`` for every key and string value inside ``value``."""
    if isinstance(value, str):
        yield prefix, value
    elif isinstance(value, dict):
        for key, child in value.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, str(key)
            yield from _strings(child, path)
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _strings(child, f"{prefix}[{index}]")


def invalid_unicode_field(value: Any) -> tuple[str, str] | None:
    """``(field path, reason)`` of the first string (key or value) that is not valid Unicode."""
    for path, text in _strings(value):
        problem = unicode_problem(text)
        if problem is not None:
            return printable(path), problem
    return None


def overlong_field(value: Any, limit: int) -> tuple[str, int] | None:
    """``(field path, length)`` of the first string longer than ``limit`` characters."""
    for path, text in _strings(value):
        if len(text) > limit:
            return printable(path), len(text)
    return None


def printable(text: str) -> str:
    """``text`` with anything UTF-8 cannot carry escaped, so a message can always be printed."""
    if unicode_problem(text) is None:
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def shown(value: Any, limit: int = 60) -> str:
    """A short repr of a value a user gave, for messages (never megabytes of it)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}… ({len(text):,} characters)"


def _valid_unicode(value: Any) -> Any:
    """Runs before pydantic's own ``str`` check, which refuses a surrogate too but says only
    "unable to parse raw data as a unicode string"; this names the character and where."""
    if isinstance(value, str):
        problem = unicode_problem(value)
        if problem is not None:
            raise PydanticCustomError("invalid_unicode", problem)
    return value


# Any text a request carries (reviews, summaries): valid Unicode, nothing else implied.
ValidText = Annotated[str, BeforeValidator(_valid_unicode)]

# An id in a request (user, item, candidate): 1 to MAX_ID_CHARS characters of valid Unicode.
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS),
               BeforeValidator(_valid_unicode)]


def _valid_unicode_tree(value: dict[str, Any]) -> dict[str, Any]:
    """A dict's keys and strings, nested at any depth (pydantic does not look inside Any)."""
    bad = invalid_unicode_field(value)
    if bad is not None:
        field, problem = bad
        raise PydanticCustomError("invalid_unicode", f"{problem} in '{field}'")
    return value


# A free-form object (review aspects): every key and string inside is valid Unicode.
ValidObject = Annotated[dict[str, Any], AfterValidator(_valid_unicode_tree)]
