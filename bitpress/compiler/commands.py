"""The `bitpress` command line's subcommand registry (bitpress/cli.py builds the parser from it).

Pass packages add subcommands here (e.g. `merge`, bitpress/passes/merge/cli.py), so they
need not import the command line module above them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from bitpress.compiler.registry import Registry

__all__ = ["COMMANDS", "register_command"]

Configure = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]

COMMANDS: Registry[tuple[Configure, Run]] = Registry("command")


def register_command(name: str, configure: Configure, run: Run) -> None:
    """Add a subcommand: `configure(parser)` adds its arguments, `run(args)` returns the exit status."""
    COMMANDS.register(name, (configure, run))
