"""Which catalog version a reranker answers from, bound once from the aliases and its manifest.

A :class:`ServedVersion` holds the version's collection names, what its manifest says, and
the caches that belong to it (profiles, explanations, live events). A refresh builds a new one
and swaps one reference, so a request never mixes two versions. Every choice that depends on
how old the version is (profile points or a scan of the interactions) is made here, once, not
on the serving path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from p4r.datasets.events import Event
from p4r.encoder.base import TextEncoder
from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import DamagedStoreError
from p4r.query.lru import LRU
from p4r.settings import EncoderSettings, QuerySettings
from p4r.store import catalog
from p4r.store.base import Backend
from p4r.store.manifest import ID_SCHEME, VersionManifest
from p4r.store.naming import alias_name


@dataclass
class ServedVersion:
    """One index version a reranker answers from, with the caches that belong to it.

    Attributes:
        manifest: the version's manifest.
        personas, summaries, interactions, profiles, items: collection names (None where the
            version has no such collection, or, for ``items``, MaxSim is switched off).
        profile_points: whether a user's vector is the stored profile point (integer ids, and
            profiles built with the γ and n this reranker uses); else it is computed from the
            interactions collection.
        encoder_settings: settings of the encoder that embeds text for this version.
        users, personas_lru: LRUs of profile vectors and explanations.
        live: live events per user that arrived after the version was built.
        polled: the event-log position applied so far.
    """

    manifest: VersionManifest
    personas: str
    summaries: str | None
    interactions: str | None
    profiles: str | None
    items: str | None
    profile_points: bool
    encoder_settings: EncoderSettings
    users: LRU
    personas_lru: LRU
    encoder: TextEncoder | None = None
    live: dict[str, list[Event]] = field(default_factory=dict)
    polled: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def version(self) -> int | None:
        """The version number."""
        return self.manifest.version or None

    @property
    def fingerprint(self) -> Fingerprint | None:
        """The encoder fingerprint the version records."""
        return self.manifest.fingerprint


def bind_version(backend: Backend, dataset: str, query: QuerySettings,
                 encoder: EncoderSettings) -> ServedVersion:
    """Resolve the aliases once (all from one read) and check the version is whole.

    Raises:
        NotIndexedError: the dataset has no published version.
        DamagedStoreError: a collection does not hold what the manifest recorded.
    """
    aliases = backend.get_aliases()
    personas = aliases.get(alias_name(dataset, "personas"))
    if personas is None:
        catalog.live_collection(backend, dataset, "personas")  # raises NotIndexedError
        return bind_version(backend, dataset, query, encoder)  # published in between
    manifest = VersionManifest.from_metadata(backend.get_metadata(personas), dataset=dataset)
    _verify_counts(backend, dataset, aliases, manifest)
    # Profile points are looked up by integer id: only id scheme 2 has them.
    profiles = aliases.get(alias_name(dataset, "profiles")) \
        if manifest.id_scheme >= ID_SCHEME else None
    served = ServedVersion(
        manifest=manifest, personas=personas,
        summaries=aliases.get(alias_name(dataset, "summaries")),
        interactions=aliases.get(alias_name(dataset, "interactions")),
        profiles=profiles,
        items=aliases.get(alias_name(dataset, "items")) if query.maxsim else None,
        profile_points=profiles is not None and manifest.profile == query.profile,
        encoder_settings=encoder, users=LRU(query.profile_cache_size),
        personas_lru=LRU(query.persona_cache_size))
    served.polled = manifest.log_seq
    return served


def _verify_counts(backend: Backend, dataset: str, aliases: dict[str, str],
                   manifest: VersionManifest) -> None:
    """Refuse to serve a version whose collections do not hold what was recorded (a damaged
    store would otherwise answer with missing explanations)."""
    for kind, recorded in manifest.counts.items():
        name = aliases.get(alias_name(dataset, kind))
        if name is None:
            continue
        stored = backend.count(name)
        if stored != int(recorded):
            raise DamagedStoreError(
                f"{name} holds {stored} points, {recorded} were recorded; run "
                f"`p4r-index check --dataset {dataset}`, then "
                f"`p4r-index upsert --dataset {dataset}` to rebuild it")
