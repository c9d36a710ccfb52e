"""p4r: Persona4Rec on Qdrant — offline LLM personas, online LLM-free reranking."""

__version__ = "0.1.0"
