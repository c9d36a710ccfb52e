"""``p4r reason plan``: what each stage would ask, and cost, before anything is spent.

Requests are counted after the cache (identical prompts once). Input tokens are counted with
the model's tokenizer when ``tiktoken`` is installed and its encoding file is already cached
(it would otherwise download it), else estimated at four characters per token. Output tokens
are typical answer lengths measured on the Persona4Rec reference outputs (gpt-4o-mini, Yelp).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from p4r.datasets.models import ItemRow, PersonaEntry
from p4r.errors import NotFoundError
from p4r.reasoning.batch import uncached
from p4r.reasoning.client import Request, token_cost
from p4r.reasoning.rows import read_rows
from p4r.reasoning.runner import STAGES, Context
from p4r.reasoning.stages import AlignStage

# Mean answer length in tokens (characters / 4) of the reference pipeline's outputs in
# ../shared/data/persona4rec-yelp-sample: 2_summary, 1_aspects, 3_personas, 4_selected.
TYPICAL_OUTPUT_TOKENS = {"summary": 170, "aspects": 200, "personas": 940, "align": 150}
# Stand-in persona set for planning ``align`` before ``personas`` ran (reference averages:
# 6.5 personas, names of 20 characters, descriptions of 300, rationales of 200).
_STAND_IN = [PersonaEntry(persona_id=f"P{n}", name="Typical Persona Name",
                          description="word " * 60, rationale="word " * 40)
             for n in range(1, 7)]
_BPE_URL = "https://openaipublic.blob.core.windows.net/encodings/{}.tiktoken"


@dataclass
class StagePlan:
    """The cost outlook of one stage."""

    stage: str
    requests: int
    cached: int
    input_tokens: int
    output_tokens: int
    cost_sync: float
    cost_batch: float
    note: str = ""


def token_counter(model: str) -> tuple[Callable[[str], int], str]:
    """Count with tiktoken when it loads offline, else estimate; says which was used."""
    try:
        import tiktoken  # type: ignore[import-not-found]
        from tiktoken.model import encoding_name_for_model  # type: ignore[import-not-found]
    except ImportError:
        return _estimate, "estimated at 4 characters per token (tiktoken is not installed)"
    try:
        name = encoding_name_for_model(model)
    except KeyError:
        name = "o200k_base"
    cache_dir = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get(
        "DATA_GYM_CACHE_DIR") or str(Path(tempfile.gettempdir()) / "data-gym-cache")
    cached = Path(cache_dir) / hashlib.sha1(_BPE_URL.format(name).encode()).hexdigest()
    if not cached.exists():
        return _estimate, (f"estimated at 4 characters per token (tiktoken's {name} file is "
                           f"not cached and loading it would download it)")
    encoding = tiktoken.get_encoding(name)
    return (lambda text: len(encoding.encode(text, disallowed_special=()))), \
        f"counted with tiktoken ({name})"


def _estimate(text: str) -> int:
    return (len(text) + 3) // 4


def _input_tokens(request: Request, count: Callable[[str], int]) -> int:
    """System + user + the response schema, with the chat format's few tokens per message."""
    schema = json.dumps(request.schema.model_json_schema())
    return count(request.system) + count(request.user) + count(schema) + 3 * 2 + 3


class _PlannedAlign(AlignStage):
    """``align`` before ``personas`` ran: every item stands in with a typical persona set."""

    def _load_personas(self) -> dict[str, list[PersonaEntry]]:
        if (self.ctx.root / "personas.jsonl").exists():
            return super()._load_personas()
        self.stand_in = True
        return {r.item_id: _STAND_IN for r in read_rows(self.ctx.root / "items.jsonl", ItemRow)}


def plan_stage(ctx: Context, stage: str, count: Callable[[str], int]) -> StagePlan:
    """Requests after the cache, tokens and cost of one stage on the current files."""
    settings = ctx.client.settings
    runner = _PlannedAlign(ctx) if stage == "align" else STAGES[stage](ctx)
    try:
        jobs = runner.pending().jobs
    except NotFoundError as exc:
        return StagePlan(stage, 0, 0, 0, 0, 0.0, 0.0, f"cannot plan yet: {exc}")
    note = ("personas.jsonl does not exist yet: every item counted with a typical set of 6 "
            "personas" if getattr(runner, "stand_in", False) else "")
    jobs = jobs if ctx.limit is None else jobs[:ctx.limit]
    requests = [j.request for j in jobs if j.request is not None]
    todo = uncached(ctx.client, requests)
    tokens_in = sum(_input_tokens(r, count) for r in todo.values())
    tokens_out = TYPICAL_OUTPUT_TOKENS.get(stage, 200) * len(todo)
    return StagePlan(stage, len(todo), len(requests) - len(todo), tokens_in, tokens_out,
                     token_cost(settings, tokens_in, tokens_out),
                     token_cost(settings, tokens_in, tokens_out, batch=True), note)


def plan(ctx: Context, stages: Sequence[str]) -> tuple[list[StagePlan], str]:
    """Plans of ``stages`` on the current files, and how tokens were counted."""
    count, method = token_counter(ctx.client.settings.model)
    return [plan_stage(ctx, s, count) for s in stages], method


def as_dicts(plans: Sequence[StagePlan]) -> list[dict[str, object]]:
    """JSON-ready plans."""
    return [asdict(p) for p in plans]
