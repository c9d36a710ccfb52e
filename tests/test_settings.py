"""Settings: env prefix, nested delimiter, masking and errors naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from p4r.errors import ConfigError, InputError, mask_credentials
from p4r.settings import load_settings


def test_nested_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_BACKEND", "server")
    monkeypatch.setenv("P4R_QDRANT__URL", "http://qdrant:6333")
    monkeypatch.setenv("P4R_QUERY__GAMMA", "0.5")
    monkeypatch.setenv("P4R_QUERY__LAST_N", "3")
    settings = load_settings()
    assert settings.backend == "server"
    assert settings.qdrant.url == "http://qdrant:6333"
    assert (settings.query.gamma, settings.query.last_n) == (0.5, 3)


def test_defaults_match_the_paper() -> None:
    settings = load_settings()
    assert settings.backend == "edge"
    assert (settings.query.gamma, settings.query.last_n) == (0.65, 10)
    assert settings.encoder.model == "all-MiniLM-L6-v2"


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_QDRANT__API_KEY", "s3cret")
    settings = load_settings()
    assert settings.qdrant.api_key is not None
    assert settings.qdrant.api_key.get_secret_value() == "s3cret"
    assert settings.masked()["qdrant"]["api_key"] == "***"
    assert "s3cret" not in repr(settings)


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_QUERY__GAMMA", "1.5")
    with pytest.raises(ConfigError, match="P4R_QUERY__GAMMA"):
        load_settings()


def test_dotenv_is_read(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_text("P4R_QUERY__LAST_N=4\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().query.last_n == 4


# -- class: values pydantic-settings cannot parse, and paths that cannot be the data folder --
@pytest.mark.parametrize(("value", "expected"), [
    ("query,value", ["query", "value"]),              # the form the README documents
    (" query , dense ", ["query", "dense"]),
    ('["query", "key"]', ["query", "key"]),           # JSON lists still work
    ("value", ["value"]),
])
def test_list_settings_take_commas_or_json(monkeypatch: pytest.MonkeyPatch, value: str,
                                           expected: list[str]) -> None:
    monkeypatch.setenv("P4R_TRAIN__TARGET_MODULES", value)
    assert load_settings().train.target_modules == expected


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("P4R_TRAIN__TARGET_MODULES", '["query"', "invalid setting P4R_TRAIN__TARGET_MODULES="),
    ("P4R_TRAIN", "{not json", "invalid setting P4R_TRAIN: not valid JSON"),
    ("P4R_QDRANT", "http://x", "invalid setting P4R_QDRANT: not valid JSON"),
    ("P4R_ENCODER__BATCH_SIZE", "lots", "invalid setting P4R_ENCODER__BATCH_SIZE='lots'"),
    ("P4R_BACKEND", "mongo", "invalid setting P4R_BACKEND='mongo'"),
])
def test_unreadable_values_are_config_errors_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(message), str(info.value)
    assert "\n" not in str(info.value)


def test_data_dir_must_be_a_folder(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for value in (blocker, blocker / "below"):
        monkeypatch.setenv("P4R_DATA_DIR", str(value))
        with pytest.raises(ConfigError, match=rf"P4R_DATA_DIR=.*{blocker} is a file, not a "
                                              "folder"):
            load_settings()
    monkeypatch.setenv("P4R_DATA_DIR", str(tmp_path / "not-yet" / "created"))
    assert load_settings().data_dir == tmp_path / "not-yet" / "created"


def test_a_dotenv_that_is_not_utf8_is_one_line(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / ".env").write_bytes(b"P4R_QUERY__LAST_N=\xff\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"\.env: not UTF-8 text \(byte 0xff"):
        load_settings()


# -- class: credentials inside URLs ----------------------------------------------------------
def test_url_credentials_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_QDRANT__URL", "https://admin:hunter2@qdrant.example:6333")
    monkeypatch.setenv("P4R_LLM__BASE_URL", "http://me:p@ss@llm.local:8000/v1")
    settings = load_settings()
    assert settings.qdrant.url == "https://admin:hunter2@qdrant.example:6333", "kept for use"
    masked = settings.masked()
    assert masked["qdrant"]["url"] == "https://***@qdrant.example:6333"
    assert masked["llm"]["base_url"] == "http://***@llm.local:8000/v1"
    error = ConfigError("cannot use https://admin:hunter2@qdrant.example:6333 now")
    assert str(error) == "cannot use https://***@qdrant.example:6333 now"
    assert "hunter2" not in str(InputError("see http://a:hunter2@h/x", file="f", line=1))
    assert mask_credentials("http://localhost:6333 and a@b.c") == "http://localhost:6333 and a@b.c"


def test_data_dir_expands_the_home_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P4R_DATA_DIR", "~/p4r-data")
    assert load_settings().data_dir == Path.home() / "p4r-data"
