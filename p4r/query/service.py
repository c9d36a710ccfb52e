"""Wiring for serving processes: a Reranker with the dataset's event log, from settings."""

from __future__ import annotations

from p4r.collections import open_backend
from p4r.datasets.events import EventLog, log_path
from p4r.query.reranker import Reranker
from p4r.settings import Settings


def open_reranker(settings: Settings, dataset: str) -> Reranker:
    """A Reranker on the configured backend, with live interactions enabled.

    The event log lives at ``$P4R_DATA_DIR/events/<dataset>.sqlite`` and is shared by every
    process on this machine that serves the dataset, and by ``p4r-index upsert``.
    """
    backend = open_backend(settings)
    events = EventLog(log_path(settings.data_dir, dataset))
    return Reranker(dataset, backend, settings.query, settings.encoder, events=events)
