"""Domains as data: one TOML file says what an item, a customer and an interaction are called,
which aspect slots a review fills, what a summary focuses on and how to recognise a dataset.

Built-in domains ship as ``*.toml`` beside this module; a user's file loads the same way
(``p4r reason STAGE --domain-file hotels.toml``). Every placeholder in a domain file is
checked when the file is loaded, and errors name the file, the line and the key.

This module holds the model, its loading and the filling of domain placeholders into the
stage templates of :mod:`p4r.reasoning.templates`; :mod:`p4r.reasoning.prompts` versions the
result, and :mod:`p4r.reasoning.domains.detect` picks a domain for a dataset.
"""

from __future__ import annotations

import re
import string
import tomllib
from functools import cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from p4r.errors import ConfigError, InputError
from p4r.reasoning.templates import STAGES, TEMPLATES

BUILTIN_DIR = Path(__file__).resolve().parent
_SLOT = re.compile(r"^[a-z][a-z0-9_]*$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Nouns(_Spec):
    """How the domain names things, e.g. place/places/customer/visit/visits/visits/Name."""

    item: str = Field(min_length=1, description="one item: 'place', 'product', 'hotel'")
    items: str = Field(min_length=1, description="several items: 'places'")
    customer: str = Field(min_length=1, description="who reviews: 'customer', 'guest'")
    interaction: str = Field(min_length=1, description="one interaction: 'visit', 'stay'")
    interactions: str = Field(min_length=1, description="several: 'visits', 'stays'")
    interacts: str = Field(min_length=1, description="the verb: 'visits', 'books'")
    title_label: str = Field(default="Name", min_length=1,
                             description="label of the item's title in prompts")


class AspectSlot(_Spec):
    """One slot the aspect stage fills from a review, with the one line that explains it."""

    slot: str
    description: str = Field(min_length=3)

    @field_validator("slot")
    @classmethod
    def _slot_name(cls, value: str) -> str:
        if not _SLOT.match(value) or value.endswith("_reason"):
            raise ValueError(f"slot {value!r} must be snake_case and not end in '_reason'")
        return value


class SummarySpec(_Spec):
    """What an item summary covers and in which register it is written."""

    focus: str = Field(min_length=3)
    style: str = Field(default="a catalogue entry with no opinions", min_length=3)


class PersonaSpec(_Spec):
    """Which concrete aspects personas are grounded in."""

    grounding: str = Field(min_length=3)


class Detection(_Spec):
    """How to recognise a dataset of this domain.

    ``kinds`` are the source kinds ``p4r data prepare`` records (``yelp``, ``amazon2018``,
    ``amazon2023``); ``categories`` match item metadata (``main_category``, ``category``,
    ``categories``); ``metadata_keys`` and ``item_id_pattern`` are weaker hints for datasets
    made by hand. A domain that lists categories is chosen only when one of them matches.
    """

    kinds: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    metadata_keys: tuple[str, ...] = ()
    item_id_pattern: str | None = None


class PromptOverride(_Spec):
    """Replace a stage's system and/or user template for this domain."""

    system: str | None = None
    user: str | None = None


class Domain(_Spec):
    """A validated domain file."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    nouns: Nouns
    summary: SummarySpec
    personas: PersonaSpec
    aspects: tuple[AspectSlot, ...] = Field(min_length=1)
    detect: Detection = Detection()
    prompts: dict[str, PromptOverride] = Field(default_factory=dict)
    source: Path | None = Field(default=None, exclude=True)

    @field_validator("aspects")
    @classmethod
    def _unique_slots(cls, value: tuple[AspectSlot, ...]) -> tuple[AspectSlot, ...]:
        names = [a.slot for a in value]
        if len(set(names)) != len(names):
            raise ValueError(f"aspect slots repeat: {names}")
        return value

    @property
    def slots(self) -> list[str]:
        """Aspect slot names in file order."""
        return [a.slot for a in self.aspects]

    def values(self) -> dict[str, str]:
        """The domain texts a prompt template may use, with every placeholder filled."""
        nouns = self.nouns.model_dump()
        values = {**nouns, **_capitalised(nouns)}
        values.update(
            summary_focus=self.summary.focus, summary_style=self.summary.style,
            persona_grounding=self.personas.grounding, domain=self.description or self.name,
            slots="\n".join(f"- {a.slot}: {a.description}" for a in self.aspects))
        return values


# -- placeholders ----------------------------------------------------------------------------
def _capitalised(nouns: dict[str, str]) -> dict[str, str]:
    """``{Item}`` → "Place": each noun capitalised, for the start of a sentence or label."""
    return {k[:1].upper() + k[1:]: v[:1].upper() + v[1:] for k, v in nouns.items()
            if k != "title_label"}


def render(text: str, values: dict[str, str], runtime: tuple[str, ...], *, where: str,
           source: Path | None) -> str:
    """Fill domain placeholders in ``text`` and keep ``runtime`` ones as ``{name}``.

    The result is a ``str.format`` template whose only fields are runtime ones, so filling it
    per request cannot fail. An unknown placeholder raises naming the file, line and key.
    """
    out: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise _placeholder_error(f"bad braces ({exc}); write {{{{ and }}}} for literal braces",
                                 text, where, source) from None
    for literal, name, spec, conversion in parsed:
        out.append(literal.replace("{", "{{").replace("}", "}}"))
        if name is None:
            continue
        if spec or conversion:
            raise _placeholder_error(f"placeholder {{{name}}} takes no format spec", text,
                                     where, source, needle="{" + name)
        if name in values:
            out.append(values[name].replace("{", "{{").replace("}", "}}"))
        elif name in runtime:
            out.append("{" + name + "}")
        else:
            known = ", ".join(sorted({*values, *runtime}))
            raise _placeholder_error(f"unknown placeholder {{{name}}} (known: {known})", text,
                                     where, source, needle="{" + name + "}")
    return "".join(out)


def _placeholder_error(message: str, text: str, where: str, source: Path | None,
                       needle: str | None = None) -> InputError:
    return InputError(message, file=source, line=_line_of(source, needle or text[:40]),
                      field=where)


def _line_of(source: Path | None, needle: str) -> int | None:
    """The first line of ``source`` containing ``needle`` (None when not found)."""
    if source is None or not needle:
        return None
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except OSError:
        return None
    return next((n for n, line in enumerate(lines, start=1) if needle in line), None)


def _checked(domain: Domain) -> Domain:
    """Render every domain text once so placeholder mistakes surface at load time."""
    nouns = domain.nouns.model_dump()
    plain = {**nouns, **_capitalised(nouns)}
    for key, value in nouns.items():
        render(value, {}, (), where=f"nouns.{key}", source=domain.source)

    def fill(text: str, where: str) -> str:
        return render(text, plain, (), where=where, source=domain.source).format()

    return domain.model_copy(update={
        "summary": SummarySpec(focus=fill(domain.summary.focus, "summary.focus"),
                               style=fill(domain.summary.style, "summary.style")),
        "personas": PersonaSpec(grounding=fill(domain.personas.grounding,
                                               "personas.grounding")),
        "aspects": tuple(AspectSlot(slot=a.slot, description=fill(
            a.description, f"aspects[{n}].description")) for n, a in enumerate(domain.aspects)),
    })


def stage_texts(domain: Domain) -> dict[str, tuple[str, str]]:
    """Each stage's system text (filled) and user template (runtime fields left as
    ``{name}``) for ``domain``, its overrides replacing the built-in texts.

    Raises an InputError naming the domain file for an override of an unknown stage or an
    unknown placeholder.
    """
    unknown = set(domain.prompts) - set(TEMPLATES)
    if unknown:
        raise InputError(f"no stage {sorted(unknown)[0]!r} to override (stages: "
                         f"{', '.join(STAGES)})", file=domain.source, field="prompts")
    values = domain.values()
    texts = {}
    for stage, template in TEMPLATES.items():
        override = domain.prompts.get(stage)
        system = (override.system if override and override.system else template.system)
        user = (override.user if override and override.user else template.user)
        where = f"prompts.{stage}" if override else f"(built-in {stage} template)"
        system = render(system, values, (), where=f"{where}.system",
                        source=domain.source).format()
        user = render(user, values, template.runtime, where=f"{where}.user",
                      source=domain.source)
        texts[stage] = (system, user)
    return texts


# -- loading ---------------------------------------------------------------------------------
def load_domain(path: Path) -> Domain:
    """Read, validate and placeholder-check a domain file; errors name the file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"domain file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the domain file ({exc})", file=path) from None
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        raise InputError(f"not valid TOML ({exc})", file=path,
                         line=int(line.group(1)) if line else None) from None
    try:
        domain = Domain.model_validate({**data, "source": path})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        value, key = first.get("input"), first["loc"][-1]
        needle = value if isinstance(value, str) and len(value) >= 3 else f"{key} ="
        raise InputError(first["msg"], file=path, line=_line_of(path, needle),
                         field=field) from None
    domain = _checked(domain)
    stage_texts(domain)  # prompt overrides are checked here too
    return domain


@cache
def builtin_domains() -> dict[str, Domain]:
    """The domains shipped with p4r, by name."""
    domains = [load_domain(p) for p in sorted(BUILTIN_DIR.glob("*.toml"))]
    return {d.name: d for d in domains}


def known_names() -> list[str]:
    """Names of the built-in domains."""
    return sorted(builtin_domains())


def get_domain(name: str) -> Domain:
    """A built-in domain by name; an unknown name is an error listing the known ones."""
    domains = builtin_domains()
    if name not in domains:
        raise ConfigError(f"unknown domain {name!r} (known: {', '.join(known_names())}; or "
                          f"pass --domain-file FILE.toml)")
    return domains[name]


def as_domain(value: Domain | str) -> Domain:
    """Accept a Domain or the name of a built-in one."""
    return value if isinstance(value, Domain) else get_domain(value)


__all__ = ["AspectSlot", "Detection", "Domain", "Nouns", "as_domain", "builtin_domains",
           "get_domain", "known_names", "load_domain", "render", "stage_texts"]


