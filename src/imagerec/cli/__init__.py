"""``imagerec`` command line: one Typer command = one facade call. Errors become one line and exit code 2."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from imagerec.cli import data, embed, evaluate, export, monitor, predict, review, serve, train, video  # noqa: E402,F401
from imagerec.cli.app import app  # noqa: E402
from imagerec.errors import ImagerecError  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``imagerec`` console script."""
    import warnings

    from imagerec.quiet import ENV, quiet_tensorflow

    if "--verbose" in (sys.argv[1:] if argv is None else argv):
        os.environ[ENV] = "0"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        # inherited by worker processes (decoders, uvicorn workers, video capture)
        os.environ.setdefault(ENV, "1")
    quiet_tensorflow()

    if os.environ.get(ENV) == "1":
        warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    try:
        app(args=argv, prog_name="imagerec")
    except ImagerecError as exc:
        print(f"imagerec: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("imagerec: interrupted", file=sys.stderr)
        sys.exit(130)


__all__ = ["app", "main"]
