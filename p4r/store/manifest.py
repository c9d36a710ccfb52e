"""The typed record of one catalog version: the only code that knows its metadata keys.

A version's manifest is stored with every collection of the version (plus the collection's
``kind``); readers take it from the personas collection. :meth:`VersionManifest.from_metadata`
is the one place where versions written by older p4r releases get their defaults (no
``id_scheme`` means uuid ids, no ``profile`` means a version without profile points, …), so no
other module reads a metadata key or guesses a fallback.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from p4r.encoder.fingerprint import Fingerprint
from p4r.settings import ProfileParams, VectorDatatype
from p4r.store.naming import ID_SCHEME

VersionState = Literal["building", "complete"]
_LEGACY_ID_SCHEME = 1  # versions that do not record a scheme predate integer ids


@dataclass(frozen=True)
class VersionManifest:
    """What a catalog version is: identity, content digest, encoder, counts and layout.

    Attributes:
        dataset: dataset name.
        version: version number (collections ``p4r_<dataset>_<kind>_v<version>``).
        state: ``building`` until every point is in, counted and sealed, then ``complete``.
        digest: hash of every planned point (equal digests: an identical index).
        encoder: the encoder fingerprint as stored (``Fingerprint.as_dict``), or None.
        counts: points per kind, checked by readers and ``check``.
        shape: personas, items and users (the shrink guard compares them).
        id_scheme: how point ids are derived (see :mod:`p4r.store.naming`).
        profile: γ and n the stored profile points were built with (None: no profiles).
        vector_datatype: how the engine stores vectors.
        log_seq: the Edge event-log position folded into the version.
        created_at, completed_at: epoch seconds.
        migrated_from: the version a migration copied this one from.
        base: for an overlay version (a catalog delta on Edge, whose published shards are
            never written), the version it overlays: its items come from the base except the
            ``masked`` ones, which come from the overlay's own collections (or are gone).
        masked: the item ids the overlay replaces or removes.
        delta_seq: catalog deltas applied in place (server) or stacked (Edge) since the last
            full build.
        delta_pending: a delta is being written in place: counts may not match yet.
    """

    dataset: str
    version: int
    state: VersionState = "building"
    digest: str = ""
    encoder: Mapping[str, Any] | None = None
    counts: Mapping[str, int] = field(default_factory=dict)
    shape: Mapping[str, int] = field(default_factory=dict)
    id_scheme: int = ID_SCHEME
    profile: ProfileParams | None = None
    vector_datatype: VectorDatatype = "float32"
    log_seq: int = 0
    created_at: float = 0.0
    completed_at: float | None = None
    migrated_from: int | None = None
    base: int | None = None
    masked: tuple[str, ...] = ()
    delta_seq: int = 0
    delta_pending: bool = False

    @property
    def complete(self) -> bool:
        """Whether the version was finished (counted and sealed)."""
        return self.state == "complete"

    @property
    def fingerprint(self) -> Fingerprint | None:
        """The encoder fingerprint as an object (None for a version without one)."""
        return Fingerprint.from_dict(dict(self.encoder)) if self.encoder else None

    def same_encoder(self, fingerprint: Fingerprint) -> bool:
        """Whether this version was built with ``fingerprint``'s weights and length."""
        stored = self.fingerprint
        return stored is not None and stored.accepts(fingerprint)

    def completed(self, at: float | None = None) -> VersionManifest:
        """This manifest marked complete."""
        return replace(self, state="complete", completed_at=time.time() if at is None else at)

    # -- storage -----------------------------------------------------------------------------
    def to_metadata(self) -> dict[str, Any]:
        """The JSON-able metadata stored with each collection of the version."""
        return {
            "dataset": self.dataset, "version": self.version, "state": self.state,
            "digest": self.digest, "encoder": dict(self.encoder) if self.encoder else None,
            "counts": dict(self.counts), "shape": dict(self.shape), "id_scheme": self.id_scheme,
            "profile": {"gamma": self.profile.gamma, "last_n": self.profile.last_n}
            if self.profile else None,
            "vector_datatype": self.vector_datatype, "log_seq": self.log_seq,
            "created_at": self.created_at, "completed_at": self.completed_at,
            "migrated_from": self.migrated_from, "base": self.base,
            "masked": list(self.masked), "delta_seq": self.delta_seq,
            "delta_pending": self.delta_pending,
        }

    def collection_metadata(self, kind: str) -> dict[str, Any]:
        """Metadata of the version's ``kind`` collection: the manifest plus its kind."""
        return {**self.to_metadata(), "kind": kind}

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], *, dataset: str = "",
                      version: int = 0) -> VersionManifest:
        """Read a manifest from stored metadata, with the defaults of older versions.

        ``dataset`` and ``version`` are used when the metadata lacks them (collections
        written by hand in old tests and tools). Unknown keys (the engine's own, such as the
        vector size) are ignored.
        """
        counts = {str(k): int(v) for k, v in (meta.get("counts") or {}).items()}
        shape = meta.get("shape") or {"personas": counts.get("personas", 0)}
        profile = meta.get("profile")
        completed = meta.get("completed_at")
        migrated = meta.get("migrated_from")
        return cls(
            dataset=str(meta.get("dataset") or dataset),
            version=int(meta.get("version") or version),
            state="complete" if meta.get("state") == "complete" else "building",
            digest=str(meta.get("digest") or ""),
            encoder=dict(meta["encoder"]) if meta.get("encoder") else None,
            counts=counts,
            shape={str(k): int(v) for k, v in shape.items()},
            id_scheme=int(meta.get("id_scheme") or _LEGACY_ID_SCHEME),
            profile=ProfileParams(float(profile["gamma"]), int(profile["last_n"]))
            if profile else None,
            vector_datatype="float16" if meta.get("vector_datatype") == "float16"
            else "float32",
            log_seq=int(meta.get("log_seq") or 0),
            created_at=float(meta.get("created_at") or 0.0),
            completed_at=float(completed) if completed is not None else None,
            migrated_from=int(migrated) if migrated is not None else None,
            base=int(meta["base"]) if meta.get("base") is not None else None,
            masked=tuple(str(m) for m in meta.get("masked") or ()),
            delta_seq=int(meta.get("delta_seq") or 0),
            delta_pending=bool(meta.get("delta_pending")),
        )


def collection_kind(meta: Mapping[str, Any]) -> str | None:
    """Which kind of a version a collection's metadata says it is."""
    kind = meta.get("kind")
    return str(kind) if kind else None
