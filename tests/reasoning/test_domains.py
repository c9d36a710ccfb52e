"""Domains as data: built-in and user files render into prompts and schemas, placeholder
mistakes name the file, and a dataset's domain is detected from what prepare recorded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from p4r.errors import ConfigError, InputError
from p4r.reasoning.domains import builtin_domains, get_domain, load_domain
from p4r.reasoning.domains.detect import detect_domain
from p4r.reasoning.prompts import load_prompt
from p4r.reasoning.schemas import aspects_model
from tests.conftest import SHARED, require_shared, write_jsonl
from tests.reasoning.llm_server import ScriptedLLM, system_text, user_text

HOTELS = Path(__file__).parent / "data" / "hotels.toml"


@pytest.mark.parametrize("name", ["yelp", "amazon", "amazon-books", "amazon-beauty"])
def test_builtin_domain_round_trips_into_prompt_and_schema(name: str) -> None:
    domain = get_domain(name)
    prompt = load_prompt("aspects", domain)
    schema = aspects_model(domain).model_json_schema()["properties"]
    assert list(schema) == [k for s in domain.slots for k in (s, f"{s}_reason")]
    for slot in domain.aspects:
        assert f"- {slot.slot}: {slot.description}\n" in prompt.user
        assert schema[slot.slot]["description"] == slot.description
        assert "{" not in slot.description, "noun placeholders are filled at load time"
    for stage in ("summary", "aspects", "personas", "align"):
        rendered = load_prompt(stage, domain)
        assert domain.nouns.item in rendered.system + rendered.user
        assert rendered.version.startswith(f"{stage}-{name}-")


def test_user_domain_file_round_trips() -> None:
    hotels = load_domain(HOTELS)
    assert hotels.name == "hotels" and hotels.slots[0] == "trip_purpose"
    aspects = load_prompt("aspects", hotels)
    assert "You read one guest review" in aspects.system
    assert "Guest review (rating {rating}): {review}" in aspects.user, "the override is used"
    assert "- trip_purpose: why the guest travelled" in aspects.user
    schema = aspects_model(hotels).model_json_schema()["properties"]
    assert schema["quality_criteria"]["description"].startswith("what they judge the hotel by")
    assert set(aspects.runtime) == {"summary", "rating", "review"}
    assert "Next hotel: {summary}" in load_prompt("align", hotels).user


def test_prompt_version_is_a_hash_of_the_rendered_template(tmp_path: Path) -> None:
    edited = tmp_path / "hotels.toml"
    edited.write_text(HOTELS.read_text().replace("a pet)", "a dog)"))
    before, after = load_domain(HOTELS), load_domain(edited)
    assert load_prompt("aspects", before).version != load_prompt("aspects", after).version
    assert load_prompt("summary", before).version == load_prompt("summary", after).version


@pytest.mark.parametrize(("old", "new", "field", "message"), [
    ("the {customer} travelled", "the {custmer} travelled", "aspects[0].description",
     "unknown placeholder {custmer}"),
    ("Guest review (rating {rating})", "Guest review (rating {ratng})",
     "prompts.aspects.user", "unknown placeholder {ratng}"),
    ("where it is, its price", "where {it is, its price", "summary.focus", "bad braces"),
    ('interacts = "books"', 'interacts = "books"\nplural = "x"', "nouns.plural",
     "Extra inputs are not permitted"),
    ('slot = "travel_party"', 'slot = "Travel Party"', "aspects.3.slot", "snake_case"),
])
def test_mistakes_in_a_domain_file_name_file_line_and_key(tmp_path: Path, old: str, new: str,
                                                          field: str, message: str) -> None:
    broken = tmp_path / "hotels.toml"
    text = HOTELS.read_text()
    assert old in text
    broken.write_text(text.replace(old, new))
    with pytest.raises(InputError) as caught:
        load_domain(broken)
    line = next(n for n, x in enumerate(broken.read_text().splitlines(), 1)
                if new.splitlines()[-1] in x)
    assert str(caught.value).startswith(f"{broken}:{line}: field '{field}': ")
    assert message in str(caught.value)


def test_unknown_placeholder_lists_the_known_ones(tmp_path: Path) -> None:
    broken = tmp_path / "d.toml"
    broken.write_text(HOTELS.read_text().replace("{Item}: {summary}", "{Item}: {summry}"))
    with pytest.raises(InputError, match=r"known: .*customer.*review.*summary"):
        load_domain(broken)


def test_invalid_toml_names_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "d.toml"
    broken.write_text('name = "x"\nnouns = = 3\ndescription = "y"\n')
    with pytest.raises(InputError, match=rf"^{broken}:2: not valid TOML"):
        load_domain(broken)


def test_unknown_domain_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown domain 'hotel' \(known: amazon, "
                                          r"amazon-beauty, amazon-books, yelp"):
        get_domain("hotel")


def _dataset(root: Path, kind: str | None, metadata: dict[str, Any],
             item_id: str = "B00012345X") -> Path:
    write_jsonl(root / "items.jsonl", [{"item_id": item_id, "title": "t", "metadata": metadata}])
    if kind is not None:
        (root / "prepare.json").write_text(json.dumps({"dataset": "x", "kind": kind}))
    return root


@pytest.mark.parametrize(("kind", "metadata", "expected"), [
    ("amazon2023", {"main_category": "Books", "store": "Penguin"}, "amazon-books"),
    ("amazon2023", {"main_category": "All Beauty"}, "amazon-beauty"),
    ("amazon2023", {"main_category": "Electronics"}, "amazon"),
    ("amazon2018", {"review_count": 3}, "amazon"),
    ("yelp", {"categories": ["Amazon Books"]}, "yelp"),
    (None, {"categories": "Cafe", "city": "Riverton"}, "yelp"),
])
def test_detection_uses_the_recorded_kind_and_metadata(tmp_path: Path, kind: str | None,
                                                       metadata: dict[str, Any],
                                                       expected: str) -> None:
    item_id = "B00012345X" if kind else "cafe-lumen"
    assert detect_domain(_dataset(tmp_path, kind, metadata, item_id)).name == expected


def test_equally_likely_domains_are_an_error_not_a_guess(tmp_path: Path) -> None:
    # no recorded kind, Yelp-like metadata keys but Amazon-like ids: 2 points each
    _dataset(tmp_path, None, {"categories": "Cafe", "city": "Riverton"}, "B00012345X")
    with pytest.raises(ConfigError, match=r"fits several domains equally \(yelp, amazon"):
        detect_domain(tmp_path)


def test_undetectable_dataset_lists_the_known_domains(tmp_path: Path) -> None:
    _dataset(tmp_path, "movielens", {"genres": "Drama"}, item_id="m1")
    with pytest.raises(ConfigError, match=r"cannot tell the domain.*kind 'movielens'.*"
                                          r"--domain \(amazon, amazon-beauty, amazon-books, "
                                          r"yelp\) or --domain-file"):
        detect_domain(tmp_path)


def test_a_user_domain_is_detected_when_offered(tmp_path: Path) -> None:
    _dataset(tmp_path, None, {"hotel_class": 4, "amenities": ["pool"]}, item_id="h1")
    hotels = load_domain(HOTELS)
    assert detect_domain(tmp_path, {**builtin_domains(), "hotels": hotels}) is hotels


def test_real_all_beauty_is_detected_as_beauty(tmp_path: Path) -> None:
    from p4r.datasets.prepare import prepare_dataset

    source = require_shared(SHARED / "amazon-2018-all-beauty" / "All_Beauty_5.json.gz")
    prepare_dataset("beauty", source, kcore=5, dedupe_text=True, out=tmp_path / "beauty")
    assert detect_domain(tmp_path / "beauty").name == "amazon-beauty"


def test_cli_domain_file_end_to_end(tmp_path: Path, llm_server: ScriptedLLM,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from p4r.cli.reason import main as reason_cli

    root = tmp_path / "hotels"
    write_jsonl(root / "items.jsonl", [{"item_id": "h1", "title": "Harbour Inn",
                                        "metadata": {"hotel_class": 3}, "summary": ""}])
    write_jsonl(root / "reviews.jsonl", [
        {"user_id": f"u{n}", "item_id": "h1", "timestamp": n, "rating": 4,
         "text": f"Stayed {n} nights with the kids; breakfast was great."} for n in range(3)])
    user_file = tmp_path / "my-hotels.toml"
    shutil.copy(HOTELS, user_file)

    def respond(request: dict[str, Any]) -> str:
        system = system_text(request)
        if system.startswith("You describe hotels"):
            return json.dumps({"summary": "A three-star harbour inn with breakfast."})
        if "guest review" in system:
            return json.dumps({"trip_purpose": "family holiday", "travel_party": "children",
                               "room_and_amenities": "breakfast, liked",
                               "quality_criteria": None})
        return json.dumps({"personas": [
            {"name": "Family Holidaymaker", "description": "A parent travelling with kids.",
             "rationale": "Great breakfast and room for children."},
            {"name": "Breakfast Lover", "description": "Chooses hotels by their breakfast.",
             "rationale": "Reviews praise the breakfast buffet."}]})

    llm_server.responder = respond
    monkeypatch.setenv("P4R_LLM__BASE_URL", llm_server.base_url)
    for stage in ("summary", "aspects", "personas"):
        result = CliRunner().invoke(reason_cli, [stage, "-d", "hotels", "--data-dir", str(root),
                                                 "--domain-file", str(user_file), "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["domain"] == "hotels"
    aspects_request = next(r for r in llm_server.requests if "guest review" in system_text(r))
    schema = aspects_request["response_format"]["json_schema"]["schema"]
    assert "travel_party" in schema["properties"] and "cuisine_category" not in schema[
        "properties"]
    assert "Guest review (rating 4)" in user_text(aspects_request)
    reviews = [json.loads(x) for x in (root / "reviews.jsonl").read_text().splitlines()]
    assert reviews[0]["aspects"]["trip_purpose"] == "family holiday"
    personas = json.loads((root / "personas.jsonl").read_text())
    assert [p["name"] for p in personas["personas"]] == ["Family Holidaymaker",
                                                         "Breakfast Lover"]


def test_encoder_reads_aspects_in_the_domain_files_order() -> None:
    from p4r.encoder.templates import format_aspects

    beauty = get_domain("amazon-beauty")
    values = {slot: f"v{n}" for n, slot in enumerate(beauty.slots)}
    answer = aspects_model(beauty).model_validate(dict(reversed(values.items())))
    text = format_aspects(answer.model_dump())
    assert text == "; ".join(f"{s.replace('_', ' ')}: {values[s]}" for s in beauty.slots)
