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
data_app = typer.Typer(help="Inspect, clean and materialise datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
