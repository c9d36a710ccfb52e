"""Each stage's prompt for a domain: rendered texts, a version, and the per-request fill.

The templates are in :mod:`p4r.reasoning.templates`. A template mixes two kinds of
placeholders: domain ones (``{item}``, ``{customer}``, ``{slots}``, ...; see
:meth:`Domain.values`) are filled once when the domain is loaded, and runtime ones
(``{summary}``, ``{review}``, ...) per request. A domain file may override a stage's
``system`` or ``user`` text under ``[prompts.<stage>]``; its placeholders are checked at load
time like every other text of the file.

The prompt version is a hash of the rendered system text, user template and answer schema, so
the cache can never serve an answer to a prompt that has since changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from p4r.reasoning.domains import Domain, as_domain, stage_texts
from p4r.reasoning.schemas import schema_fingerprint
from p4r.reasoning.templates import STAGES, TEMPLATES


@dataclass(frozen=True)
class Prompt:
    """System text, a ``str.format`` user template with runtime fields only, and a version."""

    stage: str
    version: str
    system: str
    user: str
    runtime: tuple[str, ...]

    def fill(self, **values: object) -> str:
        """The user message for one request (every runtime field must be given)."""
        missing = set(self.runtime) - set(values)
        if missing:
            raise ValueError(f"{self.stage} prompt needs {sorted(missing)}")
        return self.user.format(**values)


def _version(stage: str, domain: Domain, system: str, user: str) -> str:
    body = json.dumps([system, user, schema_fingerprint(stage, domain)], sort_keys=True)
    return f"{stage}-{domain.name}-{hashlib.sha256(body.encode()).hexdigest()[:12]}"


def render_prompts(domain: Domain) -> dict[str, Prompt]:
    """Every stage's prompt for ``domain``; placeholder errors name the domain file."""
    return {stage: Prompt(stage, _version(stage, domain, system, user), system, user,
                          TEMPLATES[stage].runtime)
            for stage, (system, user) in stage_texts(domain).items()}


_RENDERED: dict[str, dict[str, Prompt]] = {}


def _cached(domain: Domain) -> dict[str, Prompt]:
    key = domain.model_dump_json()  # domains hold dicts, so they are not hashable
    if key not in _RENDERED:
        _RENDERED[key] = render_prompts(domain)
    return _RENDERED[key]


def load_prompt(stage: str, domain: Domain | str) -> Prompt:
    """The prompt of ``stage`` for ``domain`` (a Domain or a built-in name)."""
    if stage not in TEMPLATES:
        raise ValueError(f"no prompt for stage {stage!r} (stages: {', '.join(STAGES)})")
    return _cached(as_domain(domain))[stage]
