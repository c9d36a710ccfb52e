"""Which catalog version a reranker answers from, bound once from the aliases and its manifest.

A :class:`ServedVersion` holds the version's collection names, what its manifest says, the
explanation cache that belongs to it, and the user state of its encoder (which is not
versioned: interactions and profiles are shared by every version of that encoder). A refresh
builds a new one and swaps one reference, so a request never mixes two catalog versions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from p4r.encoder.base import TextEncoder
from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import DamagedStoreError
from p4r.settings import EncoderSettings, QuerySettings
from p4r.store import catalog
from p4r.store.base import Backend
from p4r.store.deltas import View, view_of
from p4r.store.lru import LRU
from p4r.store.manifest import VersionManifest
from p4r.store.naming import CATALOG_KINDS, alias_name
from p4r.store.users import UserStore


@dataclass
class ServedVersion:
    """One catalog version a reranker answers from, with the caches that belong to it, and
    the user state of its encoder.

    Attributes:
        manifest: the version's manifest.
        personas, summaries, items: collection names (None where the version has no such
            collection, or, for ``items``, MaxSim is switched off).
        views: what each kind is queried through: the collection, or an overlay (a catalog
            delta on Edge) over its base.
        users: the user state under the version's encoder (interactions, profiles).
        encoder_settings: settings of the encoder that embeds text for this version.
        personas_lru: LRU of explanations.
        vectors_lru: LRU of winning persona and summary vectors, by (kind, point id).
    """

    manifest: VersionManifest
    personas: str
    summaries: str | None
    items: str | None
    users: UserStore | None
    views: dict[str, View]
    encoder_settings: EncoderSettings
    personas_lru: LRU
    vectors_lru: LRU
    encoder: TextEncoder | None = None

    @property
    def version(self) -> int | None:
        """The version number."""
        return self.manifest.version or None

    @functools.cached_property
    def fingerprint(self) -> Fingerprint | None:
        """The encoder fingerprint the version records (built once: requests read it)."""
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
    if not manifest.delta_pending:  # a delta being written in place: counts move meanwhile
        _verify_counts(backend, dataset, aliases, manifest)
    fingerprint = manifest.fingerprint
    users = backend.user_store(dataset, fingerprint, query.profile,
                               cache_size=query.profile_cache_size,
                               ttl=query.profile_ttl) if fingerprint else None
    names = {"personas": personas, "summaries": aliases.get(alias_name(dataset, "summaries")),
             "items": aliases.get(alias_name(dataset, "items")) if query.maxsim else None}
    views = {kind: view for kind, name in names.items()
             if (view := view_of(backend, dataset, kind, name, manifest)) is not None}
    return ServedVersion(
        manifest=manifest, personas=personas, summaries=names["summaries"],
        items=names["items"], users=users, views=views, encoder_settings=encoder,
        personas_lru=LRU(query.persona_cache_size), vectors_lru=LRU(query.vector_cache_size))


def _verify_counts(backend: Backend, dataset: str, aliases: dict[str, str],
                   manifest: VersionManifest) -> None:
    """Refuse to serve a version whose collections do not hold what was recorded (a damaged
    store would otherwise answer with missing explanations)."""
    for kind, recorded in manifest.counts.items():
        name = aliases.get(alias_name(dataset, kind))
        if name is None or kind not in CATALOG_KINDS:
            continue
        stored = backend.count(name)
        if stored != int(recorded):
            raise DamagedStoreError(
                f"{name} holds {stored} points, {recorded} were recorded; run "
                f"`p4r index check --dataset {dataset}`, then "
                f"`p4r index upsert --dataset {dataset}` to rebuild it")
