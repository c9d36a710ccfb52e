"""Offline LLM reasoning: domains (TOML files) rendered into prompts and answer schemas, the
OpenAI-compatible client with its cache, one stage runner with a registry of stages, the
Batch API mode and cost planning."""
