"""Request models refuse ids and text that are not valid Unicode, naming the field (a 400-class
error), instead of failing later as a 500."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from p4r.query.models import InteractionsIn, LiveInteraction, RerankIn

LIVE = {"user_id": "u", "item_id": "a", "timestamp": 1_700_000_000}


@pytest.mark.parametrize(("model", "body", "loc"), [
    (RerankIn, {"candidates": ["a", "b\\ud800"], "user_id": "u"}, ("candidates", 1)),
    (RerankIn, {"candidates": ["a"], "user_id": "\\udfffu"}, ("user_id",)),
    (RerankIn, {"candidates": ["a"], "history": [{"item_id": "\\ud800"}]},
     ("history", 0, "item_id")),
    (RerankIn, {"candidates": ["a"], "history": [{"item_id": "a", "text": "\\ud800"}]},
     ("history", 0, "text")),
    (RerankIn, {"candidates": ["a"], "history": [{"item_id": "a", "summary": "\\ud800"}]},
     ("history", 0, "summary")),
    (LiveInteraction, {**LIVE, "user_id": "\\ud800"}, ("user_id",)),
    (LiveInteraction, {**LIVE, "item_id": "\\ud800"}, ("item_id",)),
    (LiveInteraction, {**LIVE, "text": "\\ud800"}, ("text",)),
    (LiveInteraction, {**LIVE, "aspects": {"k": {"n": "\\ud800"}}}, ("aspects",)),
    (InteractionsIn, {"interactions": [LIVE, {**LIVE, "item_id": "\\ud800"}]},
     ("interactions", 1, "item_id")),
], ids=lambda v: "" if isinstance(v, dict | type) else ".".join(map(str, v)))
def test_lone_surrogates_are_refused_naming_the_field(model: type[BaseModel], body: dict,
                                                      loc: tuple[Any, ...]) -> None:
    # Decoded the way a web framework decodes a body: json.loads turns "\ud800" into a lone
    # surrogate (pydantic's own JSON parser refuses it earlier).
    decoded = json.loads(json.dumps(body).replace("\\\\u", "\\u"))
    with pytest.raises(ValidationError) as info:
        model.model_validate(decoded)
    first = info.value.errors()[0]
    assert first["loc"] == loc
    assert first["msg"].startswith("a lone surrogate '\\ud") and "not valid Unicode" in (
        first["msg"])
    first["msg"].encode("utf-8")  # the message itself can be sent


def test_valid_astral_text_and_ids_are_accepted() -> None:
    body = json.loads('{"candidates": ["\\ud83d\\ude00"], "user_id": "caf\\u00e9"}')
    assert RerankIn.model_validate(body).candidates == ["\U0001f600"]


@pytest.mark.parametrize("candidate", ["", "x" * 513])
def test_candidate_ids_have_the_id_length_rule(candidate: str) -> None:
    with pytest.raises(ValidationError) as info:
        RerankIn(candidates=["a", candidate], user_id="u")
    assert info.value.errors()[0]["loc"] == ("candidates", 1)
