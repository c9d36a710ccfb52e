"""``p4r``: the one command line of Persona4Rec on Qdrant (layer 6, the only click code).

A thin click group in the style of simonw/llm: each subcommand group is a module of this
package (``p4r index`` is :mod:`p4r.cli.index`, ...) and only parses, calls the library and
prints. The ``p4r-index``, ``p4r-query``, ... console scripts are the same groups under their
old names. Groups are imported when used, so ``p4r data`` does not load the vector store.
"""

from __future__ import annotations

import importlib

import click

from p4r.cli.common import Group

# Name → module of each subcommand group, in the order ``p4r --help`` lists them (the data
# flow: prepare, reason, train, index, query, serve, evaluate, benchmark).
GROUPS = {
    "data": "p4r.cli.data",
    "reason": "p4r.cli.reason",
    "train": "p4r.cli.train",
    "index": "p4r.cli.index",
    "query": "p4r.cli.query",
    "serve": "p4r.cli.serve",
    "eval": "p4r.cli.evaluation",
    "bench": "p4r.cli.bench",
}


class LazyGroup(Group):
    """The ``p4r`` group: subgroups come from :data:`GROUPS`, imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = GROUPS.get(cmd_name)
        if module is None:
            return None
        command: click.Command = importlib.import_module(module).main
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="p4r", message="%(prog)s %(version)s")
def main() -> None:
    """p4r: Persona4Rec on Qdrant — LLM-written item personas, LLM-free reranking.

    Settings come from P4R_* variables or a .env file (`p4r index config` prints them). The
    p4r-data, p4r-reason, p4r-train, p4r-index, p4r-query and p4r-eval commands are aliases of
    the groups below.
    """


__all__ = ["GROUPS", "main"]
