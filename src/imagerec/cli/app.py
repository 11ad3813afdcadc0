"""The Typer application object; command modules add themselves to it."""

from __future__ import annotations

import typer
from typer.core import TyperGroup

#: ``imagerec --help`` lists the commands in the order the README tells the story: data -> train -> evaluate ->
#: predict / serve / video -> export (commands not named here follow, alphabetically).
COMMAND_ORDER = (
    "demo", "data", "train", "lr-find", "models", "evaluate", "calibrate", "explain", "compare", "report",
    "predict", "embed", "serve", "monitor", "review", "video", "export", "benchmark",
)  # fmt: skip


class PipelineOrder(TyperGroup):
    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


app = typer.Typer(
    name="imagerec",
    cls=PipelineOrder,
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
    verbose: bool = typer.Option(
        False,
        "--verbose",
        help="Show TensorFlow's start-up messages and library warnings (hidden by default).",
    ),
) -> None:
    pass  # --verbose is acted on in imagerec.cli.main, before anything imports TensorFlow


data_app = typer.Typer(help="Inspect, clean and materialise datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
