"""LLM client on the ``openai`` package: structured JSON, validation retries, backoff, cache.

Retries come in two kinds. Transport failures (429, 5xx, timeouts, dropped connections) back
off exponentially and honour ``Retry-After``. Answers that are not valid JSON or fail
validation are retried with the error fed back to the model, up to ``max_retries`` times.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import openai
from pydantic import BaseModel, ValidationError

from p4r.errors import BackendError, P4RError
from p4r.reasoning.cache import ResponseCache, cache_key
from p4r.settings import LLMSettings

T = TypeVar("T", bound=BaseModel)


class LLMOutputError(P4RError):
    """The model kept answering with invalid output after every retry."""


@dataclass
class Usage:
    """Requests, tokens and cost accumulated over a run (thread-safe)."""

    requests: int = 0
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    retries: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def cost(self, settings: LLMSettings) -> float:
        """US dollars at the configured per-million-token prices."""
        return (self.prompt_tokens * settings.price_input_per_mtok
                + self.completion_tokens * settings.price_output_per_mtok) / 1e6

    def report(self, settings: LLMSettings) -> str:
        """One line for the end of a run."""
        return (f"{self.requests} request(s), {self.cache_hits} from cache, {self.retries} "
                f"retried; tokens in {self.prompt_tokens:,}, out {self.completion_tokens:,}; "
                f"cost ${self.cost(settings):.4f} ({settings.model})")


def _retry_after(exc: openai.APIStatusError) -> float | None:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class LLMClient:
    """Sends one structured request at a time; use it from many threads for concurrency."""

    def __init__(self, settings: LLMSettings, cache: ResponseCache | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.cache = cache
        self.usage = Usage()
        self._sleep = sleep
        self._key_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        api_key = settings.api_key.get_secret_value() if settings.api_key else None
        if api_key is None and settings.base_url is None:
            from p4r.errors import ConfigError

            raise ConfigError("P4R_LLM__API_KEY is not set (or point P4R_LLM__BASE_URL at a "
                              "local OpenAI-compatible server)")
        self._client = openai.OpenAI(api_key=api_key or "not-needed",
                                     base_url=settings.base_url, timeout=settings.timeout,
                                     max_retries=0)

    def _response_format(self, schema: type[BaseModel]) -> dict[str, Any]:
        json_schema = schema.model_json_schema()
        if self.settings.response_format == "json_schema":
            return {"type": "json_schema",
                    "json_schema": {"name": schema.__name__, "schema": json_schema}}
        # llama.cpp's server accepts a schema only inside json_object
        return {"type": "json_object", "schema": json_schema}

    def _send(self, messages: list[dict[str, str]], schema: type[BaseModel]) -> str:
        """One completion with transport retries; returns the message content."""
        attempt = 0
        while True:
            try:
                response = self._client.chat.completions.create(
                    model=self.settings.model, messages=messages,  # type: ignore[arg-type]
                    temperature=self.settings.temperature, max_tokens=self.settings.max_tokens,
                    response_format=self._response_format(schema),  # type: ignore[arg-type]
                )
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as exc:
                delay = None
                if isinstance(exc, openai.APIStatusError):
                    delay = _retry_after(exc)
                if attempt >= self.settings.http_retries:
                    raise BackendError(
                        f"LLM at {self.settings.base_url or 'api.openai.com'} failed after "
                        f"{attempt + 1} attempt(s): {type(exc).__name__}: {exc}") from None
                if delay is None:
                    delay = min(self.settings.max_backoff_seconds,
                                self.settings.backoff_seconds * 2 ** attempt)
                self.usage.add(retries=1)
                self._sleep(delay)
                attempt += 1
                continue
            except openai.APIStatusError as exc:
                raise BackendError(f"LLM request rejected ({exc.status_code}): {exc}") from None
            self.usage.add(requests=1)
            if response.usage is not None:
                self.usage.add(prompt_tokens=response.usage.prompt_tokens or 0,
                               completion_tokens=response.usage.completion_tokens or 0)
            content = response.choices[0].message.content if response.choices else None
            return content or ""

    def complete(
        self,
        *,
        system: str,
        user: str,
        schema: type[T],
        prompt_version: str,
        cache_inputs: Any,
        check: Callable[[T], None] | None = None,
    ) -> T:
        """Ask for JSON matching ``schema``; ``check`` adds rules pydantic cannot express.

        The answer is cached under (model, prompt version, inputs) only once it is valid.
        """
        key = cache_key(self.settings.model, prompt_version, cache_inputs)
        with self._locks_guard:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        # Identical prompts in flight on several threads are sent once; the others wait and
        # read the cached answer.
        with key_lock:
            if self.cache is not None:
                cached = self.cache.get(key)
                if cached is not None:
                    self.usage.add(cache_hits=1)
                    return schema.model_validate(cached)
            return self._ask(key, system, user, schema, prompt_version, check)

    def _ask(self, key: str, system: str, user: str, schema: type[T], prompt_version: str,
             check: Callable[[T], None] | None) -> T:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        last_error = ""
        for attempt in range(self.settings.max_retries + 1):
            content = self._send(messages, schema)
            try:
                # strict=False: small models put raw newlines inside strings; harmless here
                parsed = schema.model_validate(json.loads(content, strict=False))
                if check is not None:
                    check(parsed)
            except (json.JSONDecodeError, ValidationError, ValueError) as exc:
                last_error = _describe(exc)
                if attempt < self.settings.max_retries:
                    self.usage.add(retries=1)
                messages = [*messages, {"role": "assistant", "content": content},
                            {"role": "user", "content":
                             f"Your answer was invalid: {last_error}. Reply again with only "
                             "the corrected JSON object."}]
                continue
            if self.cache is not None:
                self.cache.put(key, parsed.model_dump(mode="json"), self.settings.model,
                               prompt_version)
            return parsed
        raise LLMOutputError(f"{schema.__name__}: invalid output after "
                             f"{self.settings.max_retries + 1} attempt(s): {last_error}")


def _describe(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at position {exc.pos})"
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'root'}: {e['msg']}"
                 for e in exc.errors()[:5]]
        return "; ".join(parts)
    return str(exc)
