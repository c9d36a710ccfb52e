"""Live reviews, as the paper does them: aspects extracted after the fact, then re-embedded.

A live interaction with text and no aspects is answered at once from its text
(:meth:`p4r.query.users.UserVectors.add_interactions`). Where an LLM is configured,
:func:`extract_live_aspects` (``p4r reason live``) asks the domain's aspects prompt and schema
for each pending live interaction, exactly as the aspects stage asks for a file review
(:func:`p4r.reasoning.stages.aspects_request`, the LLM client and its response cache); it then
re-embeds the interaction from its aspects and the item's summary with the template training
used (:func:`p4r.encoder.templates.interaction_text`) and replaces it in the user state, so
its vector and its user's profile follow on every process.

* **Idempotent**: an interaction with aspects is no longer pending. An answer too empty to
  keep (more than 75% of its slots null, which the aspects stage drops too) is stored as
  every slot null: done, and still embedded from its text.
* **Resumable**: each batch is written to the user state before the next is asked, and every
  valid answer is cached the moment it arrives, so an interrupted run loses at most the batch
  in flight and asks the LLM nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from p4r.datasets.models import Interaction
from p4r.encoder.cache import text_hash
from p4r.encoder.templates import interaction_text
from p4r.errors import ConfigError
from p4r.query.reranker import Reranker
from p4r.query.users import encoder_for
from p4r.reasoning.runner import Context, StageReport, ask_sync
from p4r.reasoning.stages import aspects_request, kept_aspects
from p4r.store.users import InteractionRecord

BATCH = 32  # interactions asked, embedded and committed together


@dataclass
class LiveAspectsReport:
    """What one run did.

    Attributes:
        extracted: interactions re-embedded from their new aspects.
        empty: answers too empty to keep: stored as all-null aspects, embedded from the text.
        failed: interactions whose answers stayed invalid after every retry (still pending:
            the next run asks again).
        skipped: interactions whose user was forgotten meanwhile (left alone).
        batches: batches committed.
        notes: the first failure messages.
    """

    extracted: int = 0
    empty: int = 0
    failed: int = 0
    skipped: int = 0
    batches: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        """Pending interactions this run took up, whatever became of them."""
        return self.extracted + self.empty + self.failed + self.skipped

    def as_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"extracted": self.extracted, "empty": self.empty, "failed": self.failed,
                "skipped": self.skipped, "batches": self.batches, "notes": self.notes}


def extract_live_aspects(reranker: Reranker, ctx: Context, *, limit: int | None = None,
                         batch_size: int = BATCH,
                         on_batch: Callable[[LiveAspectsReport], None] | None = None
                         ) -> LiveAspectsReport:
    """Extract aspects for the pending live interactions of the reranker's dataset and
    re-embed them (see the module doc).

    Args:
        reranker: the served version (its user state, encoder and item summaries).
        ctx: the domain and the LLM client (``p4r reason``'s context).
        limit: at most this many interactions (None: every pending one).
        batch_size: interactions per committed batch.
        on_batch: called after each committed batch with the report so far.

    Raises:
        ConfigError: no LLM endpoint is configured, or the version has no user state.
    """
    if not ctx.client.configured:
        raise ConfigError("no LLM is configured: set P4R_LLM__BASE_URL (a local "
                          "OpenAI-compatible server) or P4R_LLM__API_KEY")
    served = reranker.served
    store = served.users
    if store is None:
        raise ConfigError(f"the served version of {reranker.dataset!r} records no encoder, so "
                          "it has no user state; re-index it")
    report = LiveAspectsReport()
    failed: set[int] = set()
    while limit is None or report.seen < limit:
        room = batch_size if limit is None else min(batch_size, limit - report.seen)
        pending = [r for r in store.pending_live(room + len(failed))
                   if r.key(reranker.dataset) not in failed][:room]
        if not pending:
            break
        answered = _answered(reranker, ctx, pending, report, failed)
        # A user forgotten meanwhile stays forgotten: writing would bring their data back.
        kept = [r for r, _ in answered if not store.forgotten(r.user_id)]
        report.skipped += len(answered) - len(kept)
        report.empty += sum(1 for r, empty in answered if empty and r in kept)
        report.extracted += sum(1 for r, empty in answered if not empty and r in kept)
        if kept:
            summaries = reranker.users.summaries(served, [r.item_id for r in kept])
            texts = [interaction_text(Interaction(
                user_id=r.user_id, item_id=r.item_id, timestamp=r.timestamp, rating=r.rating,
                text=r.text, aspects=r.aspects, item_summary=summaries.get(r.item_id, "")))
                for r in kept]
            vectors = encoder_for(served).encode(texts)
            store.replace_vectors([replace(r, text_hash=text_hash(t))
                                   for r, t in zip(kept, texts, strict=True)], vectors)
        report.batches += 1
        if on_batch is not None:
            on_batch(report)
    return report


def _answered(reranker: Reranker, ctx: Context, pending: list[InteractionRecord],
              report: LiveAspectsReport,
              failed: set[int]) -> list[tuple[InteractionRecord, bool]]:
    """The pending interactions with their aspects, and whether the answer was too empty to
    keep (then every slot is null); those whose answers stayed invalid are counted as failed
    and left out."""
    summaries = reranker.users.summaries(reranker.served, [r.item_id for r in pending])
    requests = [aspects_request(ctx.dom, summaries.get(r.item_id, ""), r.rating, r.text)
                for r in pending]
    stage = StageReport("live")
    answers = ask_sync(ctx, requests, stage, "live aspects")
    report.notes += stage.notes[:max(0, 5 - len(report.notes))]
    out = []
    for record, answer in zip(pending, answers, strict=True):
        if answer is None:
            report.failed += 1
            failed.add(record.key(reranker.dataset))
            continue
        aspects = kept_aspects(answer, ctx.dom.slots)
        out.append((replace(record, aspects=aspects or dict.fromkeys(ctx.dom.slots)),
                    aspects is None))
    return out
