"""Shared CLI plumbing: settings from options, errors as one actionable line."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from p4r.errors import P4RError, mask_credentials
from p4r.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn p4r and file-system errors into ``Error: <one line>`` with exit status 1, Ctrl-C
    into status 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except P4RError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a path we cannot read or write: the user can act on one line
            raise click.ClickException(_os_error_line(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing half-written is live. Re-run the same command to "
                       "resume.", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def _os_error_line(exc: OSError) -> str:
    """``<path>: <reason>`` for file-system errors, with a hint when a file blocks a folder."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if isinstance(exc, FileExistsError | NotADirectoryError):
        reason += " (a file is where a folder is needed)"
    where = f"{exc.filename}: " if exc.filename is not None else ""
    return mask_credentials(where + reason)


def dataset_options(fn: F) -> F:
    """``--dataset``, ``--data-dir`` and ``--backend``, shared by every command."""
    fn = click.option("--backend", type=click.Choice(["edge", "server"]), default=None,
                      help="Vector store: 'edge' (embedded, default) or 'server' "
                           "(P4R_QDRANT__URL). Overrides P4R_BACKEND.")(fn)
    fn = click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
                      default=None,
                      help="Folder holding the dataset's files (default: "
                           "$P4R_DATA_DIR/datasets/NAME).")(fn)
    fn = click.option("--dataset", "-d", required=True, callback=_dataset_name,
                      help="Dataset name, e.g. demo or yelp.")(fn)
    return fn


def _dataset_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Dataset names become collection names: refuse a bad one before anything runs."""
    from p4r.datasets.registry import validate_name

    try:
        return validate_name(value)
    except P4RError as exc:
        raise click.BadParameter(str(exc)) from None


def settings_for(backend: str | None, **extra: Any) -> Settings:
    """Settings with command-line overrides applied on top of the environment."""
    settings = load_settings()
    updates: dict[str, Any] = {k: v for k, v in extra.items() if v is not None}
    if backend:
        updates["backend"] = backend
    return settings.model_copy(update=updates) if updates else settings


def preview(values: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` values and how many more: a note about 10,000 ids stays one line."""
    shown = ", ".join(values[:limit])
    rest = len(values) - limit
    return f"{shown} … and {rest:,} more" if rest > 0 else shown


def positive_ints(text: str, option: str) -> list[int]:
    """A comma-separated list of positive whole numbers, or a usage error naming the option."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of whole numbers",
                                 param_hint=option) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: every value must be at least 1", param_hint=option)
    return values


def echo_json(data: Any) -> None:
    """Print one JSON document on stdout."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))
