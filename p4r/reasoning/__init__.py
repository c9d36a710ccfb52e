"""Offline LLM reasoning: prompts, the OpenAI-compatible client, and the four stages."""
