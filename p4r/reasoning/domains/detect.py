"""Tell a dataset's domain from what ``p4r data prepare`` recorded and from its items, or take
the one the user named (:func:`resolve_domain`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p4r.datasets.jsonl import read_jsonl
from p4r.errors import ConfigError
from p4r.reasoning.domains import Domain, builtin_domains, get_domain, known_names, load_domain

SAMPLE_ITEMS = 200
_CATEGORY_KEYS = ("main_category", "category", "categories")


@dataclass
class Evidence:
    """What a dataset folder says about itself."""

    kind: str | None = None
    categories: set[str] = field(default_factory=set)
    metadata_keys: set[str] = field(default_factory=set)
    item_ids: list[str] = field(default_factory=list)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _category_values(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield from (v for v in re.split(r",|\|", value) if v.strip())
    elif isinstance(value, list):
        for entry in value:
            yield from _category_values(entry)


def gather(root: Path) -> Evidence:
    """The recorded source kind (``prepare.json``) and a sample of the items' metadata."""
    evidence = Evidence()
    manifest = root / "prepare.json"
    if manifest.exists():
        try:
            evidence.kind = json.loads(manifest.read_text(encoding="utf-8")).get("kind")
        except (json.JSONDecodeError, OSError, AttributeError):
            evidence.kind = None
    items = root / "items.jsonl"
    if items.exists():
        for n, (_, obj) in enumerate(read_jsonl(items)):
            if n >= SAMPLE_ITEMS:
                break
            evidence.item_ids.append(str(obj.get("item_id", "")))
            meta = obj.get("metadata")
            if not isinstance(meta, dict):
                continue
            evidence.metadata_keys.update(k for k, v in meta.items() if v not in (None, ""))
            for key in _CATEGORY_KEYS:
                evidence.categories.update(_norm(c) for c in _category_values(meta.get(key)))
    return evidence


def score(domain: Domain, evidence: Evidence) -> int | None:
    """How well ``domain`` fits; None when it is ruled out."""
    rules, points = domain.detect, 0
    if rules.kinds and evidence.kind is not None:
        if evidence.kind not in rules.kinds:
            return None
        points += 10
    if rules.categories:
        if not evidence.categories & {_norm(c) for c in rules.categories}:
            return None
        points += 5
    points += sum(1 for key in rules.metadata_keys if key in evidence.metadata_keys)
    if rules.item_id_pattern and evidence.item_ids:
        pattern = re.compile(rules.item_id_pattern)
        if sum(bool(pattern.match(i)) for i in evidence.item_ids) * 2 > len(evidence.item_ids):
            points += 2
    return points or None


def detect_domain(root: Path, domains: dict[str, Domain] | None = None) -> Domain:
    """The single best-scoring domain; none or a tie is an error listing the known ones."""
    domains = builtin_domains() if domains is None else domains
    evidence = gather(root)
    scored = sorted(((s, name) for name, d in domains.items()
                     if (s := score(d, evidence)) is not None), reverse=True)
    hint = (f"pass --domain ({', '.join(known_names())}) or --domain-file FILE.toml")
    seen = f"kind {evidence.kind!r}" if evidence.kind else "no prepare.json kind"
    if not scored:
        raise ConfigError(f"cannot tell the domain of {root} ({seen}, metadata keys "
                          f"{sorted(evidence.metadata_keys)[:6]}): {hint}")
    if len(scored) > 1 and scored[0][0] == scored[1][0]:
        tied = [name for s, name in scored if s == scored[0][0]]
        raise ConfigError(f"{root} fits several domains equally ({', '.join(tied)}): {hint}")
    return domains[scored[0][1]]


def resolve_domain(name: str | None, domain_file: Path | None, root: Path) -> Domain:
    """``--domain-file`` wins, then ``--domain NAME``; ``auto`` or None detects from ``root``."""
    if domain_file is not None:
        return load_domain(domain_file)
    if name and name != "auto":
        return get_domain(name)
    return detect_domain(root)
