"""Settings: env prefix, nested delimiter, masking and errors naming the variable."""

from __future__ import annotations

import pytest

from p4r.errors import ConfigError
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
