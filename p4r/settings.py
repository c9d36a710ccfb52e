"""The one place that reads the environment: typed settings with the P4R_ prefix.

Nested settings use a double underscore, e.g. ``P4R_QDRANT__URL`` or ``P4R_QUERY__GAMMA``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from p4r.errors import ConfigError, mask_credentials


def _default_data_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "share") / "p4r"


def _split_list(value: Any) -> Any:
    """A list setting from the environment: a JSON list, or comma-separated words."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON list ({exc.msg}); or write a,b,c") from None
    return [part.strip() for part in text.split(",") if part.strip()]


# Every list setting takes ``a,b,c`` as well as ``["a","b","c"]``: NoDecode stops
# pydantic-settings from demanding JSON (and failing outside validation, with no variable name).
StrList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


class _Section(BaseModel):
    """A settings group whose repr never shows a credential (URLs are masked, secrets are
    ``SecretStr``): settings objects end up in logs, tracebacks and debuggers."""

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_credentials(value) if isinstance(value, str) else value



# How the engine stores vectors: float16 halves their memory; scores move by up to ~1e-4.
VectorDatatype = Literal["float32", "float16"]
_LAYOUT_KINDS = ("personas", "summaries", "items", "interactions", "profiles")
# Read by id or scanned, never searched per request: their vectors can stay on disk.
_ON_DISK_BY_DEFAULT = ("items", "interactions")


class CollectionLayout(_Section):
    """Layout of one kind of server collection (``P4R_QDRANT__<KIND>__…``): shards, replicas,
    write consistency, vectors on disk, and their datatype (None: the engine default)."""

    shard_number: int | None = Field(default=None, ge=1)
    replication_factor: int | None = Field(default=None, ge=1)
    write_consistency_factor: int | None = Field(default=None, ge=1)
    on_disk: bool | None = None
    datatype: VectorDatatype | None = None


class QdrantSettings(_Section):
    """Connection and collection layout for the ``server`` backend."""

    url: str = "http://localhost:6333"
    api_key: SecretStr | None = None
    prefer_grpc: bool = False
    grpc_port: int = 6334
    timeout: int = 10
    shard_number: int | None = Field(default=None, ge=1)
    replication_factor: int | None = Field(default=None, ge=1)
    write_consistency_factor: int | None = Field(default=None, ge=1)
    # Replicas a profile read consults: "majority" with a majority write consistency factor
    # gives read-your-writes across hosts on a replicated cluster (README, "cluster").
    read_consistency: Literal["all", "majority", "quorum"] | int | None = "majority"
    # Seconds a writer's lease (upsert, prune, drop, migrate) lives without a heartbeat: a
    # crashed writer blocks others at most this long. Keep it well above the hosts' clock skew.
    lease_ttl: float = Field(default=60.0, gt=1.0)
    # Per kind of collection; unset fields take the values above.
    personas: CollectionLayout = Field(default_factory=lambda: CollectionLayout())
    summaries: CollectionLayout = Field(default_factory=lambda: CollectionLayout())
    items: CollectionLayout = Field(default_factory=lambda: CollectionLayout())
    interactions: CollectionLayout = Field(default_factory=lambda: CollectionLayout())
    profiles: CollectionLayout = Field(default_factory=lambda: CollectionLayout())

    def for_kind(self, kind: str) -> CollectionLayout:
        """The layout of one kind of collection, every field resolved."""
        own = getattr(self, kind, None) if kind in _LAYOUT_KINDS else None
        own = own or CollectionLayout()
        return CollectionLayout(
            shard_number=own.shard_number or self.shard_number,
            replication_factor=own.replication_factor or self.replication_factor,
            write_consistency_factor=own.write_consistency_factor
            or self.write_consistency_factor,
            on_disk=own.on_disk if own.on_disk is not None else kind in _ON_DISK_BY_DEFAULT,
            datatype=own.datatype)


class EncoderSettings(_Section):
    """Which sentence-transformers model embeds texts, and how it runs."""

    model: str = "all-MiniLM-L6-v2"
    device: str = "cpu"
    batch_size: int = Field(default=64, ge=1)
    precision: Literal["fp32", "bf16"] = "fp32"
    threads: int | None = Field(default=None, ge=1)
    max_seq_length: int | None = Field(default=256, ge=8)
    # "onnx" serves a folder written by p4r.encoder.onnx_export (no torch at query time).
    backend: Literal["torch", "onnx"] = "torch"
    onnx_path: str | None = None


# How a user with a history is scored, and whether a list is re-ranked for taste proportions.
UserMode = Literal["default", "interests"]
Diversify = Literal["none", "proportional"]


@dataclass(frozen=True)
class ProfileParams:
    """How a user's profile averages the last ``last_n`` interactions: weight γ^(age)."""

    gamma: float = 0.65
    last_n: int = 10


# The one place the profile defaults live: settings, the indexer, migrations and training
# all read them from here.
DEFAULT_PROFILE = ProfileParams()


class QuerySettings(_Section):
    """Online user-profile aggregation."""

    gamma: float = Field(default=DEFAULT_PROFILE.gamma, gt=0.0, le=1.0)
    last_n: int = Field(default=DEFAULT_PROFILE.last_n, ge=1)
    persona_cache_size: int = Field(default=100_000, ge=0)
    # Bounded LRU of user profile vectors per serving process (~1.7 KB each at 384-d).
    profile_cache_size: int = Field(default=50_000, ge=0)
    # Server backend: seconds a host may answer from its cached copy of a profile that
    # another host has changed since (0: read the profile on every request, so every host
    # reads its own and the others' writes at once). Edge ignores it: its cache is dropped
    # as soon as any process changes a user.
    profile_ttl: float = Field(default=0.0, ge=0.0)
    # Serve top k through the per-item MaxSim collection when the version has one (built with
    # P4R_INDEX__MAXSIM); off answers it with the bounded persona query instead.
    maxsim: bool = True
    # How a user with a history is scored when a request does not say (README, "Ranking
    # modes"): "default" scores each item by its best persona's cosine with the decayed-mean
    # profile; "interests" by attention over the last n interaction vectors (τ = 10, recency
    # prior). Opt-in: it was flat on Yelp and better only on Amazon, and costs more per request.
    user_mode: UserMode = "default"
    # "proportional" shares the top k positions among the user's interests by weight
    # (p4r.query.diversify) when a request does not say; "none" keeps the score order.
    diversify: Diversify = "none"
    # Number of interests (spherical k-means over the last n vectors) the proportional
    # re-rank shares positions among.
    interests: int = Field(default=3, ge=1)
    # Name the past interaction behind each item in the default mode ("because"): it reads
    # the recent interaction vectors with the profile and the winning persona vectors (README,
    # "Benchmark", for its cost). The interests mode names its attention winner regardless.
    because: bool = True
    # Winning persona and summary vectors kept per serving process (~1.5 KB each at 384-d):
    # "because" in the default mode and proportional lists read them for the returned items.
    vector_cache_size: int = Field(default=20_000, ge=0)

    @property
    def profile(self) -> ProfileParams:
        """γ and n as one value (what a version's profile points were built with)."""
        return ProfileParams(self.gamma, self.last_n)


class LLMSettings(_Section):
    """The OpenAI-compatible endpoint used offline (never at query time)."""

    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str = "gpt-4o-mini"
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)
    max_tokens: int = Field(default=1200, ge=16)
    concurrency: int = Field(default=4, ge=1)
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=3, ge=0)
    http_retries: int = Field(default=5, ge=0)
    backoff_seconds: float = Field(default=1.0, ge=0)
    max_backoff_seconds: float = Field(default=60.0, ge=0)
    response_format: Literal["json_schema", "json_object"] = "json_schema"
    price_input_per_mtok: float = Field(default=0.15, ge=0)
    price_output_per_mtok: float = Field(default=0.60, ge=0)
    # OpenAI's Batch API bills half the synchronous price; vLLM run_batch costs what you pay.
    batch_price_factor: float = Field(default=0.5, ge=0)
    batch_poll_seconds: float = Field(default=30.0, gt=0)


HEAD_TEMPERATURE = 0.2  # best of the temperatures in the README's cross-validation


class TrainSettings(_Section):
    """Encoder training; defaults chosen by user-disjoint cross-validation on the real Yelp
    sample (README, "Training the encoder"), and to finish on a 2-core CPU.

    ``method``: ``head`` trains a linear map on top of the frozen encoder (from cached
    embeddings: seconds per epoch), ``lora`` trains peft adapters, ``full`` every weight.
    ``None`` for ``learning_rate``/``temperature``/``epochs``/``max_seq_length`` means the
    method's default
    (and the encoder's ``max_seq_length``: one length for training, indexing and serving).
    """

    method: Literal["head", "lora", "full"] = "head"
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: StrList = ["query", "key", "value"]
    head_rank: int = Field(default=0, ge=0)  # 0: a full d×d map; r > 0: identity + rank r
    temperature: float | None = Field(default=None, gt=0.0)
    learning_rate: float | None = Field(default=None, gt=0.0)
    weight_decay: float = Field(default=0.01, ge=0.0)
    batch_size: int = Field(default=16, ge=2)
    grad_accum: int = Field(default=1, ge=1)
    chunk_size: int = Field(default=4, ge=1)  # texts per checkpointed forward (lora/full)
    epochs: int | None = Field(default=None, ge=1)
    warmup_ratio: float = Field(default=0.1, ge=0.0, lt=1.0)
    max_seq_length: int | None = Field(default=None, ge=8)
    val_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)  # share of users held out
    val_candidates: int = Field(default=19, ge=1)  # sampled negatives per validation event
    patience: int = Field(default=3, ge=1)
    seed: int = 0
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def lr(self) -> float:
        """The learning rate, or the method's default."""
        defaults = {"head": 1e-3, "lora": 2e-4, "full": 2e-5}
        return self.learning_rate or defaults[self.method]

    def tau(self) -> float:
        """The softmax temperature, or the method's default."""
        return self.temperature or {"head": HEAD_TEMPERATURE, "lora": 0.05, "full": 0.05}[
            self.method]

    def n_epochs(self) -> int:
        """The epoch count, or the method's default."""
        return self.epochs or {"head": 10, "lora": 3, "full": 3}[self.method]


class IndexSettings(_Section):
    """Indexer behaviour."""

    batch_size: int = Field(default=256, ge=1)
    # Seconds a writer (upsert, prune, drop, migrate) waits for another one on the Edge store.
    lock_timeout: float = Field(default=0.0, ge=0.0)
    # Also build the per-item MaxSim collection and serve top k through it. Off: the bounded
    # persona query measured faster, and MaxSim doubles the vector bytes a server maps.
    maxsim: bool = False
    # How the engine stores vectors. float16 halves the vector memory a server maps; scores
    # move by up to ~1e-4 and near-tied items may swap (a new version; opt-in).
    vector_datatype: VectorDatatype = "float32"
    # A changed catalog (same encoder and layout) is written as a delta unless it touches more
    # than this share of the items; then a new version is built (--full forces that).
    delta_limit: float = Field(default=0.3, ge=0.0, le=1.0)


# Hard caps of the HTTP request models (p4r.query.models): the serve limits below may be set
# up to these, never above, so the schema's own bounds never refuse what a setting allows.
MAX_CANDIDATES_CAP = 10_000
MAX_BATCH_CAP = 1_000
MAX_HISTORY_CAP = 1_000
MAX_INTERACTIONS_CAP = 10_000
MAX_TEXT_CHARS_CAP = 100_000
LOOPBACK_HOSTS = ["localhost", "127.0.0.1", "::1"]


class ServeSettings(_Section):
    """The HTTP API (``p4r serve``); the CLI passes its options to worker processes here.

    Keys follow Qdrant's model: a read-write key and a read-only key, sent as ``api-key`` or
    ``Authorization: Bearer``. With no write key, write routes are refused unless
    ``allow_anonymous_writes``. Limits bound what one client can make a worker hold or do:
    the defaults sit well above what an app sends (a rerank of 1,000 candidates is ~25 KB).
    """

    dataset: str | None = None
    reload_interval: float = Field(default=5.0, gt=0.0)
    # -- keys and origins
    api_key: SecretStr | None = None
    read_only_api_key: SecretStr | None = None
    api_key_file: Path | None = None  # the key's first line, e.g. a mounted secret
    read_only_api_key_file: Path | None = None
    allow_anonymous_writes: bool = False
    # /metrics needs no key by default (like /healthz); true: it needs the read key.
    metrics_require_key: bool = False
    # Host headers answered (DNS rebinding): names, "*.example.com" or "*" for any.
    trusted_hosts: StrList = Field(default_factory=lambda: list(LOOPBACK_HOSTS))
    # Browser origins allowed to call the API (CORS); none by default.
    cors_origins: StrList = Field(default_factory=list)
    # -- request limits (413 beyond them)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_candidates: int = Field(default=1_000, ge=1, le=MAX_CANDIDATES_CAP)
    max_batch: int = Field(default=100, ge=1, le=MAX_BATCH_CAP)
    max_history: int = Field(default=100, ge=1, le=MAX_HISTORY_CAP)
    max_interactions: int = Field(default=1_000, ge=1, le=MAX_INTERACTIONS_CAP)
    max_text_chars: int = Field(default=20_000, ge=1, le=MAX_TEXT_CHARS_CAP)
    # -- connections (p4r serve's uvicorn protocol)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024)
    header_timeout: float = Field(default=10.0, gt=0.0)  # seconds to send a request's head
    body_timeout: float = Field(default=30.0, gt=0.0)  # seconds to send a request's body
    keep_alive_timeout: int = Field(default=5, ge=1)  # idle seconds before a close
    max_connections: int = Field(default=2048, ge=8)
    # The two rerank routes answered by the lean ASGI path (p4r.serve.lean); false: through
    # FastAPI like every other route (same answers, more CPU). For comparison and as a fallback.
    lean_rerank: bool = True
    # Single rerank requests read in the same turn of the event loop (concurrent clients) are
    # answered by one batched rerank: the same answers, less CPU per request under load
    # (p4r.serve.lean.Coalescer). False: each request reranks alone.
    coalesce: bool = True
    # Microseconds the event loop keeps polling (not sleeping) after each answer, so a request
    # that follows soon finds the CPU caches warm (p4r.serve.busy); 0: sleep at once.
    busy_poll_us: int = Field(default=300, ge=0, le=10_000)
    # -- encoding work (history reranks; interactions and forgets): queued or running, per
    # worker; beyond it the request answers 429 at once instead of waiting behind others.
    history_queue: int = Field(default=4, ge=1)
    write_queue: int = Field(default=64, ge=1)


class FileLimits(_Section):
    """Bounds on what one line of a data file may hold, so a damaged or hostile file fails with
    one line naming file, line and field instead of exhausting memory.

    The defaults sit far above the real data: the longest line of the shared samples is
    394,009 bytes (a reference ``2.5_grouped.jsonl`` item with all its reviews; a
    ``3.5_history.jsonl`` user with every review is 188,441), the longest text field 5,214
    characters (an Amazon review).
    """

    # Bytes per line (without its newline). A reference history puts a user's whole history
    # on one line; 16 MiB holds ~80x the longest measured. A longer line is refused before it
    # is read whole, so a 1 GB record costs at most this much memory.
    max_line_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Characters per text field (any string value or key of a line): ~20x the longest review
    # measured; the encoder reads only the first few hundred tokens of a text anyway.
    max_text_chars: int = Field(default=100_000, ge=1)


# Engines p4r can store collections in; each is registered in p4r.store.registry.
BackendName = Literal["edge", "server"]


class Settings(BaseSettings):
    """Every setting of p4r; values come from arguments, ``P4R_*`` variables or ``.env``."""

    model_config = SettingsConfigDict(
        env_prefix="P4R_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
    )

    data_dir: Path = Field(default_factory=_default_data_dir)
    backend: BackendName = "edge"
    qdrant: QdrantSettings = QdrantSettings()
    encoder: EncoderSettings = EncoderSettings()
    query: QuerySettings = QuerySettings()
    index: IndexSettings = IndexSettings()
    llm: LLMSettings = LLMSettings()
    train: TrainSettings = TrainSettings()
    serve: ServeSettings = ServeSettings()
    files: FileLimits = FileLimits()

    @field_validator("data_dir")
    @classmethod
    def _data_dir_is_a_folder(cls, value: Path) -> Path:
        """Fail at load time, not deep inside a store, when the path cannot be a folder.

        ``~`` is expanded: a ``.env`` line is not seen by a shell, and a literal ``~`` folder
        in the working directory is never what was meant.
        """
        value = value.expanduser()
        for path in (value, *value.parents):
            if path.exists():
                if not path.is_dir():
                    raise ValueError(f"{path} is a file, not a folder")
                break
        return value

    def masked(self) -> dict[str, Any]:
        """Settings as plain JSON-able data for ``config`` output and logs.

        Every secret (a ``SecretStr``, or a set field whose name says key, token, password or
        secret) is ``'***'``; every other string has its URL credentials masked (userinfo and
        query-string keys such as ``?api-key=``), wherever in the settings it sits.
        """
        return _masked(self.model_dump(mode="json"), self)

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, mask_credentials(value) if isinstance(value, str) else value


_SECRET_NAME = ("key", "token", "password", "secret")


def _masked(data: Any, model: Any) -> Any:
    """``data`` (a dump of ``model``) with secrets replaced and URL credentials masked."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            field = getattr(model, key, None) if isinstance(model, BaseModel) else None
            secret = isinstance(field, SecretStr) or (
                isinstance(value, str) and any(w in key.lower() for w in _SECRET_NAME))
            out[key] = "***" if secret and value is not None else _masked(value, field)
        return out
    if isinstance(data, list):
        return [_masked(v, None) for v in data]
    return mask_credentials(data) if isinstance(data, str) else data


def _variable(loc: tuple[int | str, ...]) -> str:
    """``("train", "target_modules", 0)`` → ``P4R_TRAIN__TARGET_MODULES`` (list indexes dropped)."""
    names = [str(p) for p in loc if not isinstance(p, int)]
    return "P4R_" + "__".join(names).upper() if names else "P4R_* settings"


def _unparsable_variable(exc: SettingsError) -> str:
    """The variable behind a pydantic-settings parse failure, which names only the field."""
    field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else ""
    name = f"P4R_{field}".upper()
    present = sorted(k for k in os.environ
                     if k.upper() == name or k.upper().startswith(name + "__"))
    return " / ".join(present) or f"{name} (or one of {name}__*)"


def load_settings(**overrides: Any) -> Settings:
    """Build settings; any unreadable or invalid value is a one-line ConfigError naming it."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        name = _variable(first["loc"])
        given = first.get("input")
        if isinstance(given, str | int | float) and not any(
                w.upper() in name for w in _SECRET_NAME):
            name = f"{name}={given!r}"
        msg = first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"invalid setting {name}: {msg}") from None
    except UnicodeDecodeError as exc:  # only the .env file is read as text here
        env_file = Path(str(Settings.model_config.get("env_file") or ".env")).resolve()
        raise ConfigError(f"{env_file}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                          f"at offset {exc.start})") from None
    except SettingsError as exc:
        cause = exc.__cause__
        reason = f"not valid JSON ({cause.msg})" if isinstance(
            cause, json.JSONDecodeError) else str(cause or exc)
        raise ConfigError(f"invalid setting {_unparsable_variable(exc)}: {reason}") from None
