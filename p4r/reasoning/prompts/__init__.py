"""Prompts, one module per stage and domain. Each has a VERSION that enters the cache key:
change the wording, bump the version, and only the changed stage is asked again."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

STAGES = ("summary", "aspects", "personas", "align")
DOMAINS = ("yelp", "amazon")


@dataclass(frozen=True)
class Prompt:
    """System text, a ``str.format`` user template, and the version string."""

    version: str
    system: str
    user: str


def load_prompt(stage: str, domain: str) -> Prompt:
    """The prompt of ``stage`` for ``domain`` (e.g. ``personas``, ``yelp``)."""
    if stage not in STAGES or domain not in DOMAINS:
        raise ValueError(f"no prompt for stage {stage!r} and domain {domain!r}")
    module = importlib.import_module(f"p4r.reasoning.prompts.{stage}_{domain}")
    return module.PROMPT  # type: ignore[no-any-return]
