"""Shared CLI plumbing: one group class, one error boundary, and one option per idea.

Every command spells a shared idea the same way, through the decorators below:

* ``--dataset/-d``, ``--data-dir``: which dataset, and the folder holding its files;
* ``--backend``: the vector store, only on commands that open one; its choices are the
  store's registry (:func:`p4r.store.backends`);
* ``--k``: how many items a ranked list keeps (rerank output, a generator's candidates);
  ``--ks``: the cut-offs metrics are reported at (``HR@K``), a comma-separated list;
* ``--candidates``: candidate item ids; ``--candidates-file``: a reference-format candidates
  jsonl; ``--n-candidates``: how many candidates a benchmark draws per user;
* ``--out``: a file written; ``--out-dir``: a folder written; ``--work-dir``: a folder for
  intermediate files;
* ``--rounds``: how often a benchmark repeats its measurements (the median is reported);
* ``--json``: print the report as one JSON document.

An option that was renamed keeps its old spelling as a hidden alias (:class:`RenamedOption`),
so scripts written against the old names keep working.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import os
import select
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from p4r.datasets.registry import validate_name
from p4r.errors import P4RError, mask_credentials
from p4r.settings import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


# -- broken pipes: `p4r … | head` ---------------------------------------------------------------
def stdout_gone() -> bool:
    """True when nobody reads our stdout any more (a pipe whose reader exited).

    Asked before a ``BrokenPipeError`` is taken as the reader leaving: a broken socket (the
    serve benchmark talks HTTP) is a real error and must still be reported.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # Click's test runner: not a real pipe
        return False
    if not hasattr(select, "poll"):  # no poll (Windows): trust the error
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def exit_quietly() -> NoReturn:
    """The reader left: send what is still buffered to /dev/null and exit with status 0.

    The Python documentation's recipe (``signal`` module, "Note on SIGPIPE"): without the
    redirect, the interpreter's last flush of stdout fails again and prints a traceback.
    """
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """Exit quietly when the reader of stdout has gone; re-raise any other broken pipe."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        if stdout_gone():
            exit_quietly()
        raise


class Group(click.Group):
    """A p4r command group: ``-h`` for help, and ``p4r … | head`` exits quietly.

    Subcommands' help and bodies run inside the group's ``invoke``, the group's own help inside
    its ``make_context``; both are guarded, so every group, run as ``p4r GROUP`` or as its
    ``p4r-GROUP`` alias, handles a closed pipe in one place.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", dict(CONTEXT_SETTINGS))
        super().__init__(*args, **kwargs)

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        with quiet_broken_pipe():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with quiet_broken_pipe():
            return super().invoke(ctx)


def moved(command: click.Command, new_place: str) -> click.Command:
    """``command`` under its old name: still runs, hidden from help, says where it lives now."""
    alias = copy.copy(command)
    alias.hidden = True
    alias.deprecated = f"Use `{new_place}`."
    return alias


# -- the error boundary ------------------------------------------------------------------------
def friendly_errors(fn: F) -> F:
    """Turn p4r and file-system errors into ``Error: <one line>`` with exit status 1, Ctrl-C
    into status 130; a closed stdout pipe is left to :class:`Group` (a quiet exit)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except P4RError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError as exc:
            if stdout_gone():
                raise
            raise click.ClickException(_os_error_line(exc)) from None
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


# -- options -----------------------------------------------------------------------------------
class RenamedOption(click.Option):
    """An option whose old spellings (``old_names``) still parse but are not shown in --help."""

    def __init__(self, param_decls: Sequence[str], *, old_names: Sequence[str] = (),
                 **attrs: Any) -> None:
        self.old_names = tuple(old_names)
        super().__init__([*param_decls, *self.old_names], **attrs)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        every = self.opts
        self.opts = [name for name in every if name not in self.old_names]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = every


def renamed_option(*param_decls: str, old_names: Sequence[str] = (),
           **attrs: Any) -> Callable[[F], F]:
    """``click.option`` that also accepts the option's former spellings, undocumented."""
    if not old_names:
        return click.option(*param_decls, **attrs)
    return click.option(*param_decls, cls=RenamedOption, old_names=old_names, **attrs)


def _dataset_name(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Dataset names become collection names: refuse a bad one before anything runs."""
    if value is None:
        return None
    try:
        return validate_name(value)
    except P4RError as exc:
        raise click.BadParameter(str(exc)) from None


def dataset_option(*, required: bool = True, checked: bool = True,
                   help: str = "Dataset name, e.g. demo or yelp.") -> Callable[[F], F]:
    """``--dataset/-d``, checked as a collection name unless the command checks it itself
    (``checked=False``: ``p4r serve`` reports it as an error of its settings)."""
    return click.option("--dataset", "-d", required=required,
                        callback=_dataset_name if checked else None, help=help)


def data_dir_option(fn: F) -> F:
    """``--data-dir``: where the dataset's files are, when not in the data directory."""
    return click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
                        default=None,
                        help="Folder holding the dataset's files (default: "
                             "$P4R_DATA_DIR/datasets/NAME).")(fn)


def dataset_options(fn: F) -> F:
    """``--dataset`` and ``--data-dir``, for commands that read a dataset but no store."""
    return dataset_option()(data_dir_option(fn))


class BackendChoice(click.Choice):  # type: ignore[type-arg]
    """The registered backends, read from the store's registry when first needed (importing
    the store loads the engines, which commands without ``--backend`` should not pay for)."""

    def __init__(self) -> None:
        super().__init__((), case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from p4r.store import backends

        return tuple(entry.name for entry in backends())

    @choices.setter
    def choices(self, value: Sequence[str]) -> None:
        """Click sets the choices in its constructor; the registry is the only source."""


class BackendOption(click.Option):
    """``--backend``, whose help lists each registered backend with the registry's own line."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        from p4r.store import backends

        self.help = "Vector store (overrides P4R_BACKEND): " + "; ".join(
            f"{entry.name}, {entry.help}" for entry in backends()) + "."
        return super().get_help_record(ctx)


def backend_option(fn: F) -> F:
    """``--backend``: which vector store, for commands that open one."""
    return click.option("--backend", cls=BackendOption, type=BackendChoice(), default=None)(fn)


def _ignored_backend(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        click.echo(f"note: --backend is ignored: `{ctx.command_path}` does not open a store",
                   err=True)


def no_backend_option(fn: F) -> F:
    """A hidden ``--backend`` on commands that used to show one but open no store: accepted,
    ignored with a note, so old scripts keep running."""
    return click.option("--backend", default=None, hidden=True, expose_value=False,
                        callback=_ignored_backend)(fn)


def store_options(fn: F) -> F:
    """``--dataset``, ``--data-dir`` and ``--backend``, for commands that open a store."""
    return dataset_options(backend_option(fn))


def json_option(help: str = "Print the report as JSON.") -> Callable[[F], F]:
    """``--json``: one JSON document on stdout instead of the human report."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def k_option(*, default: int | None, help: str,
             old_names: Sequence[str] = ()) -> Callable[[F], F]:
    """``--k``: how many items a ranked list keeps."""
    return renamed_option("--k", "k", type=click.IntRange(min=1), default=default,
                          show_default=default is not None, old_names=old_names, help=help)


def _cutoffs(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    return tuple(positive_ints(value, "--ks"))


def ks_option(fn: F) -> F:
    """``--ks``: metric cut-offs, parsed into a tuple of positive ints."""
    return click.option("--ks", default="5,10,20", show_default=True, callback=_cutoffs,
                        help="Cut-offs the metrics are reported at (HR@K, MRR@K, NDCG@K), "
                             "comma-separated.")(fn)


def out_file_option(*, help: str) -> Callable[[F], F]:
    """``--out``: a file the command writes."""
    return click.option("--out", type=click.Path(path_type=Path, dir_okay=False),
                        default=None, help=help)


def out_dir_option(*, help: str, default: Path | None = None,
                   old_names: Sequence[str] = ("--out",)) -> Callable[[F], F]:
    """``--out-dir``: a folder the command writes (formerly ``--out`` there)."""
    return renamed_option("--out-dir", "out_dir",
                          type=click.Path(path_type=Path, file_okay=False), default=default,
                          show_default=default is not None, old_names=old_names, help=help)


def work_dir_option(*, help: str, old_names: Sequence[str] = ()) -> Callable[[F], F]:
    """``--work-dir``: a folder for intermediate files."""
    return renamed_option("--work-dir", "work_dir",
                          type=click.Path(path_type=Path, file_okay=False), default=None,
                          old_names=old_names, help=help)


def rounds_option(*, default: int, help: str,
                  old_names: Sequence[str] = ()) -> Callable[[F], F]:
    """``--rounds``: how often a benchmark repeats its measurements."""
    return renamed_option("--rounds", "rounds", type=click.IntRange(min=1), default=default,
                          show_default=True, old_names=old_names, help=help)


def n_candidates_option(*, default: str | int, help: str,
                        old_names: Sequence[str] = ("--candidates",)) -> Callable[[F], F]:
    """``--n-candidates``: how many candidates per user (a count, or comma-separated counts
    when ``default`` is a string); ``--candidates`` is kept for the item ids themselves."""
    kind: Any = str if isinstance(default, str) else click.IntRange(min=1)
    return renamed_option("--n-candidates", "n_candidates", type=kind, default=default,
                          show_default=True, old_names=old_names, help=help)


# -- helpers -----------------------------------------------------------------------------------
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
