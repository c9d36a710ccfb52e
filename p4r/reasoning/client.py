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
    batch_requests: int = 0
    batch_prompt_tokens: int = 0
    batch_completion_tokens: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        """Add to the named counters."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def cost(self, settings: LLMSettings) -> float:
        """US dollars at the configured per-million-token prices; batch tokens at the batch
        price (``batch_price_factor`` of the synchronous one)."""
        return (token_cost(settings, self.prompt_tokens, self.completion_tokens)
                + token_cost(settings, self.batch_prompt_tokens, self.batch_completion_tokens,
                             batch=True))

    def report(self, settings: LLMSettings) -> str:
        """One line for the end of a run."""
        batch = (f" + {self.batch_requests} in batches (tokens in "
                 f"{self.batch_prompt_tokens:,}, out {self.batch_completion_tokens:,})"
                 if self.batch_requests else "")
        return (f"{self.requests} request(s){batch}, {self.cache_hits} from cache, "
                f"{self.retries} retried; tokens in {self.prompt_tokens:,}, out "
                f"{self.completion_tokens:,}; cost ${self.cost(settings):.4f} ({settings.model})")


def token_cost(settings: LLMSettings, prompt_tokens: float, completion_tokens: float, *,
               batch: bool = False) -> float:
    """US dollars for these tokens, synchronous or at the batch price."""
    dollars = (prompt_tokens * settings.price_input_per_mtok
               + completion_tokens * settings.price_output_per_mtok) / 1e6
    return dollars * (settings.batch_price_factor if batch else 1.0)


@dataclass(frozen=True)
class Request:
    """One structured question: messages, the answer schema, and what identifies it.

    ``check`` adds rules pydantic cannot express; it may normalise the parsed answer in place
    and raises ``ValueError`` to have the answer retried. The same request is sent
    synchronously or written into a batch file, and its answer is validated the same way.
    """

    system: str
    user: str
    schema: type[BaseModel]
    prompt_version: str
    cache_inputs: Any
    check: Callable[[Any], None] | None = None

    def key(self, model: str) -> str:
        """The cache key (also the batch ``custom_id``)."""
        return cache_key(model, self.prompt_version, self.cache_inputs)

    def messages(self) -> list[dict[str, str]]:
        """The chat messages of the first attempt."""
        return [{"role": "system", "content": self.system},
                {"role": "user", "content": self.user}]


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
        self._openai: openai.OpenAI | None = None

    @property
    def configured(self) -> bool:
        """Whether an endpoint is set (writing or reading batch files needs none)."""
        return self.settings.api_key is not None or self.settings.base_url is not None

    @property
    def openai(self) -> openai.OpenAI:
        """The ``openai`` client, built on first use; no endpoint is a ConfigError."""
        if self._openai is None:
            if not self.configured:
                from p4r.errors import ConfigError

                raise ConfigError("P4R_LLM__API_KEY is not set (or point P4R_LLM__BASE_URL at "
                                  "a local OpenAI-compatible server)")
            key = self.settings.api_key
            self._openai = openai.OpenAI(
                api_key=key.get_secret_value() if key else "not-needed",
                base_url=self.settings.base_url, timeout=self.settings.timeout, max_retries=0)
        return self._openai

    def _response_format(self, schema: type[BaseModel]) -> dict[str, Any]:
        json_schema = schema.model_json_schema()
        if self.settings.response_format == "json_schema":
            return {"type": "json_schema",
                    "json_schema": {"name": schema.__name__, "schema": json_schema}}
        # llama.cpp's server accepts a schema only inside json_object
        return {"type": "json_object", "schema": json_schema}

    def body(self, messages: list[dict[str, str]], schema: type[BaseModel]) -> dict[str, Any]:
        """The chat-completions request body, as sent and as written into batch files."""
        return {"model": self.settings.model, "messages": messages,
                "temperature": self.settings.temperature, "max_tokens": self.settings.max_tokens,
                "response_format": self._response_format(schema)}

    def _send(self, messages: list[dict[str, str]], schema: type[BaseModel]) -> str:
        """One completion with transport retries; returns the message content."""
        attempt = 0
        while True:
            try:
                response = self.openai.chat.completions.create(**self.body(messages, schema))
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

    def complete(self, *, system: str, user: str, schema: type[T], prompt_version: str,
                 cache_inputs: Any, check: Callable[[T], None] | None = None) -> T:
        """Ask for JSON matching ``schema``; ``check`` adds rules pydantic cannot express."""
        return self.answer(Request(system, user, schema, prompt_version, cache_inputs,
                                   check))  # type: ignore[return-value]

    def cached(self, request: Request) -> BaseModel | None:
        """The cached answer to ``request`` (not counted as a hit), or None."""
        if self.cache is None:
            return None
        stored = self.cache.get(request.key(self.settings.model))
        return None if stored is None else request.schema.model_validate(stored)

    def answer(self, request: Request) -> BaseModel:
        """The cached answer, else ask; an answer is cached only once it is valid."""
        key = request.key(self.settings.model)
        with self._locks_guard:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        # Identical prompts in flight on several threads are sent once; the others wait and
        # read the cached answer.
        with key_lock:
            if self.cache is not None:
                cached = self.cache.get(key)
                if cached is not None:
                    self.usage.add(cache_hits=1)
                    return request.schema.model_validate(cached)
            return self._ask(request, request.messages())

    def validate(self, request: Request, content: str) -> BaseModel:
        """Parse and check one answer exactly as every path does; raises on invalid output."""
        # strict=False: small models put raw newlines inside strings; harmless here
        parsed = request.schema.model_validate(json.loads(content, strict=False))
        if request.check is not None:
            request.check(parsed)
        return parsed

    def accept(self, request: Request, parsed: BaseModel) -> None:
        """Cache a valid answer under the request's key."""
        if self.cache is not None:
            self.cache.put(request.key(self.settings.model), parsed.model_dump(mode="json"),
                           self.settings.model, request.prompt_version)

    def repair(self, request: Request, content: str, error: Exception) -> BaseModel:
        """Retry an invalid answer (e.g. from a batch) synchronously, feeding the error back."""
        self.usage.add(retries=1)
        return self._ask(request, _feedback(request.messages(), content, _describe(error)))

    def _ask(self, request: Request, messages: list[dict[str, str]]) -> BaseModel:
        last_error = ""
        for attempt in range(self.settings.max_retries + 1):
            content = self._send(messages, request.schema)
            try:
                parsed = self.validate(request, content)
            except (json.JSONDecodeError, ValidationError, ValueError) as exc:
                last_error = _describe(exc)
                if attempt < self.settings.max_retries:
                    self.usage.add(retries=1)
                messages = _feedback(messages, content, last_error)
                continue
            self.accept(request, parsed)
            return parsed
        raise LLMOutputError(f"{request.schema.__name__}: invalid output after "
                             f"{self.settings.max_retries + 1} attempt(s): {last_error}")


def _feedback(messages: list[dict[str, str]], content: str,
              error: str) -> list[dict[str, str]]:
    """The conversation extended with the invalid answer and what was wrong with it."""
    return [*messages, {"role": "assistant", "content": content},
            {"role": "user", "content": f"Your answer was invalid: {error}. Reply again with "
                                        "only the corrected JSON object."}]


def _describe(exc: Exception) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON ({exc.msg} at position {exc.pos})"
    if isinstance(exc, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc']) or 'root'}: {e['msg']}"
                 for e in exc.errors()[:5]]
        return "; ".join(parts)
    return str(exc)
