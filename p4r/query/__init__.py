"""Online reranking (no LLM, no torch at import time)."""

from p4r.query.reranker import (
    PersonaInfo,
    RankedItem,
    Reranker,
    RerankRequest,
    RerankResult,
    UnknownCandidatesError,
)

__all__ = ["PersonaInfo", "RankedItem", "RerankRequest", "RerankResult", "Reranker",
           "UnknownCandidatesError"]
