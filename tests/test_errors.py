"""Secrets never show, wherever a URL is printed; anonymous clients see no hosts or paths;
full disks are recognised from the OS and from sqlite."""

from __future__ import annotations

import errno
import sqlite3
import traceback

import pytest

from p4r.errors import (
    BackendError,
    ConfigError,
    DamagedStoreError,
    InputError,
    NotFoundError,
    P4RError,
    StorageFullError,
    is_storage_full,
    mask_credentials,
    public_message,
)
from p4r.settings import load_settings

SECRET = "s3cr3t-Value"


# -- class: credentials in a URL's query string, fragment or userinfo ---------------------------
@pytest.mark.parametrize(("url", "masked"), [
    (f"http://host:6333/?api-key={SECRET}", "http://host:6333/?api-key=***"),
    (f"http://host:6333?apikey={SECRET}&timeout=5", "http://host:6333?apikey=***&timeout=5"),
    (f"https://h/x?a=1&api_key={SECRET}", "https://h/x?a=1&api_key=***"),
    (f"https://h/x?token={SECRET}", "https://h/x?token=***"),
    (f"https://h/x?key={SECRET}", "https://h/x?key=***"),
    (f"https://h/x?password={SECRET}", "https://h/x?password=***"),
    (f"https://h/x?Access_Token={SECRET}", "https://h/x?Access_Token=***"),
    (f"https://h/x?X-Api-Key={SECRET}#frag", "https://h/x?X-Api-Key=***#frag"),
    (f"https://h/cb#access_token={SECRET}", "https://h/cb#access_token=***"),
    (f"https://h/x?sig={SECRET};secret={SECRET}", "https://h/x?sig=***;secret=***"),
    (f"http://admin:{SECRET}@h:6333/?api-key={SECRET}", "http://***@h:6333/?api-key=***"),
    (f"Authorization: Bearer {SECRET}", "Authorization: Bearer ***"),
])
def test_every_credential_in_a_url_is_masked(url: str, masked: str) -> None:
    assert mask_credentials(url) == masked
    assert mask_credentials(masked) == masked, "masking twice changes nothing"


def test_harmless_urls_are_left_alone() -> None:
    text = "http://localhost:6333/collections?limit=10&offset=20 and a@b.c"
    assert mask_credentials(text) == text
    assert mask_credentials("Basic authentication failed") == "Basic authentication failed"


def test_a_url_secret_shows_in_none_of_the_places_a_url_is_printed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"http://qdrant.internal:6333/?api-key={SECRET}"
    monkeypatch.setenv("P4R_QDRANT__URL", url)
    monkeypatch.setenv("P4R_LLM__BASE_URL", f"https://llm.example/v1?token={SECRET}")
    settings = load_settings()
    assert settings.qdrant.url == url, "the real value is kept for use"

    errors: list[P4RError] = [
        P4RError(f"failed at {url}"),
        BackendError(f"cannot reach Qdrant at {url}"),
        ConfigError(f"check {url}"),
        InputError(f"see {url}", file="f.jsonl", line=3, field="x"),
        NotFoundError(f"no collection at {url}"),
    ]
    monkeypatch.setenv("P4R_BACKEND", url)  # an invalid value is echoed in the ConfigError
    with pytest.raises(ConfigError) as invalid:
        load_settings()
    errors.append(invalid.value)

    places = {
        "str of errors": [str(e) for e in errors],
        "repr of errors": [repr(e) for e in errors],
        "tracebacks": ["".join(traceback.format_exception(e)) for e in errors],
        "config output": [str(settings.masked())],
        "repr of settings": [repr(settings), repr(settings.qdrant), repr(settings.llm)],
        "str of settings": [str(settings), str(settings.qdrant)],
        "public messages": [public_message(e) for e in errors],
        "settings errors": [str(invalid.value)],
    }
    for place, texts in places.items():
        for text in texts:
            assert SECRET not in text, f"{place}: {text}"
    assert settings.masked()["qdrant"]["url"] == "http://qdrant.internal:6333/?api-key=***"
    assert settings.masked()["llm"]["base_url"] == "https://llm.example/v1?token=***"


def test_masked_settings_hide_every_secret_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_QDRANT__API_KEY", SECRET)
    monkeypatch.setenv("P4R_LLM__API_KEY", SECRET)
    masked = load_settings().masked()
    assert masked["qdrant"]["api_key"] == "***" and masked["llm"]["api_key"] == "***"
    assert masked["llm"]["max_tokens"] == 1200, "numbers named like secrets are not secrets"
    assert SECRET not in str(masked)


# -- class: internal hosts, ports and paths in answers to anonymous clients -------------------
def test_public_messages_keep_the_sentence_and_drop_locations() -> None:
    exc = BackendError("cannot reach Qdrant at http://10.1.2.3:6333 (P4R_QDRANT__URL): "
                       "connection refused")
    assert public_message(exc) == ("cannot reach Qdrant at <qdrant> (P4R_QDRANT__URL): "
                                   "connection refused")
    grpc = BackendError("failed to connect to all addresses; last error: ipv4:10.0.0.5:6334: "
                        "Connection refused, [::1]:6334 and localhost:6333 too")
    assert public_message(grpc) == ("failed to connect to all addresses; last error: <host>: "
                                    "Connection refused, <host> and <host> too")
    damaged = DamagedStoreError("/var/lib/p4r/stores/yelp/aliases.json is unreadable; restore "
                                "it from a backup")
    assert public_message(damaged) == "aliases.json is unreadable; restore it from a backup"
    named = BackendError("qdrant-0.prod.svc:6333 timed out, then qdrant-0.prod.svc did")
    assert public_message(named, hide=["http://qdrant-0.prod.svc:6333"]) == (
        "<host> timed out, then <host> did")


def test_public_messages_keep_file_lines_and_hide_credentials() -> None:
    exc = InputError("bad value", file="/srv/data/reviews.jsonl", line=12, field="text")
    assert public_message(exc) == "reviews.jsonl:12: field 'text': bad value"
    assert SECRET not in public_message(BackendError(f"at http://h/?api-key={SECRET}"))


def test_unexpected_errors_say_only_their_class() -> None:
    assert public_message(RuntimeError("/etc/secret at http://10.0.0.1")) == (
        "internal error (RuntimeError); the server log has the details")


# -- class: a full disk is told from every other failure ----------------------------------------
def test_full_disks_are_recognised_from_the_os_and_from_sqlite() -> None:
    assert is_storage_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_storage_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_storage_full(OSError(errno.EACCES, "Permission denied"))
    db = sqlite3.connect(":memory:")
    db.execute("PRAGMA max_page_count=2")  # sqlite answers SQLITE_FULL, as on a full disk
    with pytest.raises(sqlite3.OperationalError) as full:
        db.execute("CREATE TABLE t (x)")
        db.executemany("INSERT INTO t VALUES (?)", [("x" * 4000,)] * 10)
    assert is_storage_full(full.value)
    assert not is_storage_full(sqlite3.OperationalError("database is locked"))
    error = StorageFullError("/data/events/yelp.sqlite", "the interactions were not logged")
    assert isinstance(error, BackendError) and error.path == "/data/events/yelp.sqlite"
    assert str(error).startswith("/data/events/yelp.sqlite: no space left on the device")
