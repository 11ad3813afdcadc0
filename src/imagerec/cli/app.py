"""The Typer application object; command modules add themselves to it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="imagerec",
    help="Image recognition with TensorFlow/Keras: data -> train -> evaluate -> predict/serve/video -> export.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from imagerec.version import __version__

        typer.echo(f"imagerec {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the imagerec version and exit.",
    ),
) -> None:
    pass


data_app = typer.Typer(help="Inspect, clean and materialise datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
