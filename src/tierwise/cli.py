"""The `tierwise` command: `tierwise remoe ...`, `tierwise nemo ...`, `tierwise demo`."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tierwise import __version__
from tierwise.common.errors import TierwiseError
from tierwise.nemo.cli import app as nemo_app
from tierwise.remoe.cli import app as remoe_app

app = typer.Typer(
    help="Caches at the memory/flash boundary: ReMoE (expert reuse for offloaded MoE LLMs) and Nemo (tiny-object flash cache).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(remoe_app, name="remoe", help="MoE routing analysis, router fine-tuning (ReMoE), expert offloading.")
app.add_typer(nemo_app, name="nemo", help="Tiny-object flash cache (Nemo), baselines, zoned devices, traces, server.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"tierwise {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    pass


@app.command()
def demo(
    out: Path = typer.Option(Path("reports/demo"), "--out", help="Report folder (Markdown summary, JSON, PNG plots)."),
    remoe: bool = typer.Option(True, "--remoe/--no-remoe", help="Run the ReMoE half."),
    nemo: bool = typer.Option(True, "--nemo/--no-nemo", help="Run the Nemo half."),
) -> None:
    """Run both halves on the embedded defaults and write one report folder."""
    from tierwise.demo import run_demo

    run_demo(out, remoe=remoe, nemo=nemo)


def main() -> None:
    try:
        app()
    except TierwiseError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
