"""``imagerec monitor DIR --run RUN``: the drift of a ``--record DIR`` (imagerec.monitoring.monitor)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from imagerec.cli.app import app
from imagerec.cli.options import option
from imagerec.settings import DriftSettings


@app.command("monitor")
def monitor(
    records: Path = typer.Argument(..., help="The directory a server or video wrote with --record DIR."),
    run: Path = typer.Option(..., "--run", help="The run that answered (its drift.json is the baseline)."),
    out: Path = typer.Option(None, "--out", "-o", help="Where to write the page (default DIR/monitor.html)."),
    window: int = option(DriftSettings, "window", "--window", help="Answers per drift window."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of a table."),
) -> None:
    """Print the drift of the recorded answers against the run's validation answers and write monitor.html.

    Exit code 0 whether or not the alarm is up (read "alarm" in --json); 2 on bad input.
    """
    from imagerec.monitoring.drift import GAUGES
    from imagerec.monitoring.monitor import monitor as run_monitor

    result = run_monitor(records, run, DriftSettings(window=window))
    page = result.write_html(out or records / "monitor.html")
    summary = result.summary()
    if as_json:
        typer.echo(json.dumps({**summary, "html": str(page)}, indent=2, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    latest, first = result.latest or {}, result.first_alarm
    table = Table(
        title=f"drift of the last {latest.get('window', 0)} of {summary['records']} recorded answers"
    )
    for column in ("gauge", "value", "threshold", ""):
        table.add_column(column)
    for name in GAUGES:
        value, limit = latest["gauges"][name], latest["thresholds"][name]
        table.add_row(name, _num(value), _num(limit), "[red]past[/red]" if name in latest["past"] else "")
    console = Console()
    console.print(table)
    state = "[bold red]ALARM[/bold red]" if latest.get("alarm") else "[green]no alarm[/green]"
    since = f"; first alarm at answer {first['answers']} ({', '.join(first['past'])})" if first else ""
    console.print(f"{state} now{since}; {summary['alarm_windows']} of {len(result.points)} windows in alarm")
    console.print(f"wrote {page}")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
