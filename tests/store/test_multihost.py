"""Several serving hosts and writers on one Qdrant: each host is a Reranker with its own data
dir and backend, all sharing one client (``QdrantClient(":memory:")``, or the server or cluster
at ``QDRANT_URL`` when it is set: the module runs unchanged there).

What must hold: a write on any host is read by every other host at once; two hosts writing
one user lose nothing; a new user or a new host breaks nothing; a re-index from another
machine keeps every live interaction; one writer at a time, named; prune never touches a
build; a forgotten user stays forgotten; a catalog delta answers what a rebuild answers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from qdrant_client import QdrantClient

from p4r.errors import ForgottenUserError, LockedError, UnknownUserError
from p4r.indexer import BuildOptions, index_dataset
from p4r.query import Reranker, open_reranker
from p4r.settings import EncoderSettings, QuerySettings, Settings
from p4r.store.lifecycle import prune_versions
from p4r.store.server import ServerBackend
from tests.conftest import open_test_backend

CANDS = ["cafe-lumen", "tide-sushi", "taqueria-sol", "noodle-harbor", "crumb-and-co",
         "sunny-side-diner", "ironwood-steakhouse", "polar-scoop-gelato"]


@pytest.fixture
def client() -> Iterator[QdrantClient]:
    """The one Qdrant every host talks to."""
    kind = "server-real" if os.environ.get("QDRANT_URL") else "server-memory"
    backend = open_test_backend(kind, Path("."))  # a real server is cleaned of p4r_* first
    assert isinstance(backend, ServerBackend)
    yield backend.client
    backend.client.close()


class Cluster:
    """Hosts and build machines of one deployment: each has its own data dir and backend."""

    def __init__(self, client: QdrantClient, root: Path, model: Path) -> None:
        self.client = client
        self.root = root
        self.model = model

    def settings(self, host: str, **query: object) -> Settings:
        return Settings(data_dir=self.root / host, backend="server",
                        encoder=EncoderSettings(model=str(self.model)),
                        query=QuerySettings(**query))  # type: ignore[arg-type]

    def backend(self, host: str) -> ServerBackend:
        return ServerBackend(self.client, url="shared", layout=self.settings(host).qdrant)

    def host(self, name: str, **query: object) -> Reranker:
        return open_reranker(self.settings(name, **query), "demo", backend=self.backend(name))

    def index(self, machine: str, dataset, encoder, **options: object):  # type: ignore[no-untyped-def]
        settings = self.settings(machine)
        return index_dataset(settings, dataset, backend=self.backend(machine), encoder=encoder,
                             cache=None, options=BuildOptions(**options))  # type: ignore[arg-type]


@pytest.fixture
def cluster(client: QdrantClient, tmp_path: Path, tiny_models, demo_dataset,  # type: ignore[no-untyped-def]
            tiny_encoder) -> Cluster:
    cluster = Cluster(client, tmp_path, tiny_models["a"])
    cluster.index("build", demo_dataset, tiny_encoder)
    return cluster


def _top(reranker: Reranker, user: str) -> list[tuple[str, float | None]]:
    return [(i.item_id, i.score) for i in reranker.rerank(user_id=user, candidates=CANDS).items]


def test_an_interaction_on_one_host_is_read_on_the_others(cluster: Cluster) -> None:
    a, b = cluster.host("a"), cluster.host("b")
    before = _top(b, "u-ben")  # b has read (and may hold) the profile
    a.add_interactions([{"user_id": "u-ben", "item_id": "taqueria-sol", "timestamp": 1.75e9,
                         "text": "Fiery al pastor, late at night"}])
    after_a, after_b = _top(a, "u-ben"), _top(b, "u-ben")
    assert after_a == after_b != before
    assert b.user_profile("u-ben").interactions[-1].item_id == "taqueria-sol"


def test_two_hosts_writing_one_user_lose_nothing(cluster: Cluster) -> None:
    hosts = [cluster.host("a"), cluster.host("b")]
    errors: list[BaseException] = []

    def write(host: Reranker, offset: int) -> None:
        try:
            for i in range(6):
                host.add_interactions([{"user_id": "u-dev", "item_id": CANDS[(i + offset) % 8],
                                        "timestamp": 1.74e9 + 10 * i + offset,
                                        "text": f"visit {i} from host {offset}"}])
        except BaseException as exc:  # reported below, never hidden
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(h, n)) for n, h in enumerate(hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    written = sorted(1.74e9 + 10 * i + n for i in range(6) for n in (0, 1))
    profile = cluster.host("c").user_profile("u-dev")
    # The profile averages the last n = 10 interactions: the newest 10 of both hosts' 12.
    assert [e.timestamp for e in profile.interactions] == written[-10:]
    assert profile.live == 10


def test_a_new_user_and_a_new_host(cluster: Cluster) -> None:
    a = cluster.host("a")
    a.add_interactions([{"user_id": "u-new", "item_id": "cafe-lumen", "timestamp": 1.7e9,
                         "text": "quiet corner to work"}])
    fresh = cluster.host("new-host")  # starting a host after a new user arrived: no damage
    assert fresh.user_profile("u-new").live == 1
    assert _top(fresh, "u-new") == _top(a, "u-new")


def test_a_reindex_on_another_machine_keeps_every_event(cluster: Cluster, demo_dataset,  # type: ignore[no-untyped-def]
                                                        tiny_encoder, tiny_models) -> None:
    a, b = cluster.host("a"), cluster.host("b")
    a.add_interactions([{"user_id": "u-ana", "item_id": "tide-sushi", "timestamp": 1.75e9,
                         "text": "omakase"}])
    b.add_interactions([{"user_id": "u-new", "item_id": "crumb-and-co", "timestamp": 1.7e9,
                         "text": "cardamom buns"}])
    report = cluster.index("third", demo_dataset, tiny_encoder)
    assert report.action == "unchanged" and report.user_counts == {"interactions": 20,
                                                                   "profiles": 5}
    from p4r.encoder.model import Encoder

    other = Encoder(EncoderSettings(model=str(tiny_models["b"])))
    moved = cluster.index("third", demo_dataset, other, reindex=True)
    assert moved.version == 2 and moved.user_counts == {"interactions": 20, "profiles": 5}
    c = Reranker("demo", cluster.backend("c"), encoder=EncoderSettings(model=str(tiny_models["b"])))
    assert c.version == 2
    assert c.user_profile("u-new").interactions[-1].item_id == "crumb-and-co"
    assert c.user_profile("u-ana").interactions[-1].item_id == "tide-sushi"


def test_one_writer_at_a_time_and_prune_never_touches_a_build(cluster: Cluster, demo_dataset,  # type: ignore[no-untyped-def]
                                                              tiny_encoder) -> None:
    holder = cluster.backend("builder")
    with holder.writer("p4r index upsert --dataset demo"):
        with pytest.raises(LockedError, match=r"another p4r process is writing to .*"
                                              r"\(p4r index upsert --dataset demo\)|host .* pid"):
            cluster.index("other", demo_dataset, tiny_encoder, full=True)
        with pytest.raises(LockedError):
            prune_versions(cluster.backend("pruner"), "demo")
    # Released: the same commands go through, and version names never collide.
    demo_dataset.personas.pop("tide-sushi")
    assert cluster.index("other", demo_dataset, tiny_encoder, full=True).version == 2
    assert [v.version for v in prune_versions(cluster.backend("pruner"), "demo")] == [1]


def test_a_forgotten_user_stays_forgotten(cluster: Cluster, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    a, b = cluster.host("a"), cluster.host("b")
    _top(b, "u-chloe")
    report = a.forget("u-chloe")
    assert (report.interactions, report.profiles) == (4, 1)
    for host in (a, b, cluster.host("c")):
        with pytest.raises(UnknownUserError):
            host.rerank(user_id="u-chloe", candidates=CANDS)
    with pytest.raises(ForgottenUserError):
        b.add_interactions([{"user_id": "u-chloe", "item_id": "cafe-lumen", "timestamp": 1.7e9,
                             "text": "back again"}])
    again = cluster.index("third", demo_dataset, tiny_encoder)
    assert again.users is not None and again.users.skipped_forgotten == 4
    with pytest.raises(UnknownUserError):
        cluster.host("d").rerank(user_id="u-chloe", candidates=CANDS)


def test_a_delta_from_another_machine_is_what_every_host_serves(cluster: Cluster, demo_dataset,  # type: ignore[no-untyped-def]
                                                                tiny_encoder) -> None:
    from dataclasses import replace

    a = cluster.host("a")
    changed = demo_dataset
    changed.personas["cafe-lumen"][0] = replace(changed.personas["cafe-lumen"][0],
                                                rationale="A quiet table and a flat white.")
    report = cluster.index("third", changed, tiny_encoder)
    assert report.action == "delta" and report.version == 1
    assert a.refresh(), "an in-place delta is picked up at the next refresh"
    fresh = open_test_backend("server-memory", Path("."))
    index_dataset(Settings(), changed, backend=fresh, encoder=tiny_encoder, cache=None)
    rebuilt = Reranker("demo", fresh)
    for user in ("u-ana", "u-ben", "u-dev"):
        mine = a.rerank(user_id=user, candidates=CANDS).items
        theirs = rebuilt.rerank(user_id=user, candidates=CANDS).items
        assert [(i.item_id, i.persona) for i in mine] == [(i.item_id, i.persona) for i in theirs]
        assert all(abs((x.score or 0) - (y.score or 0)) <= 1e-6
                   for x, y in zip(mine, theirs, strict=True))


def test_a_cached_profile_is_stale_at_most_the_ttl(cluster: Cluster) -> None:
    """A host may cache profiles only with a staleness bound (P4R_QUERY__PROFILE_TTL)."""
    import time

    writer, reader = cluster.host("a"), cluster.host("b", profile_ttl=0.4)
    reader.user_vector("u-ben")  # cached now
    writer.add_interactions([{"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": 1.75e9,
                              "text": "omakase"}])
    deadline = time.monotonic() + 5
    while reader.user_profile("u-ben").interactions[-1].item_id != "tide-sushi":
        assert time.monotonic() < deadline, "the cached profile outlived its ttl"
        time.sleep(0.05)
    assert cluster.host("c").user_profile("u-ben").interactions[-1].item_id == "tide-sushi", \
        "a host without a cache reads the write at once"
