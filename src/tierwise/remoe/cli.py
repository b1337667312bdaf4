"""`tierwise remoe ...` commands. Each command is a thin wrapper: parse flags, call the library, print/write results."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)
