"""Online reranking (no LLM, no torch at import time)."""

from p4r.query.reranker import Reranker, open_reranker
from p4r.query.results import (
    Because,
    PersonaInfo,
    RankedItem,
    RerankRequest,
    RerankResult,
    UnknownCandidatesError,
)

__all__ = ["Because", "PersonaInfo", "RankedItem", "RerankRequest", "RerankResult", "Reranker",
           "UnknownCandidatesError", "open_reranker"]
