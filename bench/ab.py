"""A/B: one benchmark, run on a git revision and on the working tree, alternating, side by side in one invocation.

For a change that must keep performance (a refactor): each round runs the benchmark script of revision A (checked
out into a temporary git worktree, its own ``src/`` on PYTHONPATH) and then of the working tree B (order swapped on
odd rounds, so that drifting machine load hits both alike). Named metrics are read from each run's output with a
regular expression; the medians and the ratio B / A are printed as a Markdown table.

    python bench/ab.py --rev HEAD~5 --rounds 3 \
        --metric 'rps="rps": ([0-9.]+)' --metric 'p99_ms="p99_ms": ([0-9.]+)' \
        -- bench/serve_load.py --only imagerec --seconds 15

The script path after ``--`` is taken from each tree (``A/bench/serve_load.py``, ``B/bench/serve_load.py``), so a
benchmark whose imports moved between the two revisions still runs against its own code.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_once(tree: Path, command: list[str], timeout: float) -> str:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    script, *rest = command
    proc = subprocess.run(
        [sys.executable, str(tree / script), *rest],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode:
        raise SystemExit(f"{tree}: {script} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return proc.stdout


def parse(output: str, metrics: dict[str, re.Pattern]) -> dict[str, float]:
    values = {}
    for name, pattern in metrics.items():
        found = pattern.search(output)
        if not found:
            raise SystemExit(f"metric {name!r}: {pattern.pattern!r} not found in:\n{output[-2000:]}")
        values[name] = float(found.group(1))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the baseline revision (A)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--metric", action="append", required=True, help="NAME=REGEX with one group")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per benchmark run")
    parser.add_argument("command", nargs="+", help="bench script (relative to the repo) and its arguments")
    args = parser.parse_args()
    metrics = {m.split("=", 1)[0]: re.compile(m.split("=", 1)[1]) for m in args.metric}
    base = Path(tempfile.mkdtemp(prefix="imagerec-ab-")) / "a"
    subprocess.run(["git", "worktree", "add", "--detach", str(base), args.rev], cwd=ROOT, check=True)
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    try:
        for round_ in range(args.rounds):
            order = [("A", base), ("B", ROOT)]
            for name, tree in order if round_ % 2 == 0 else order[::-1]:
                values = parse(run_once(tree, args.command, args.timeout), metrics)
                results[name].append(values)
                print(f"round {round_ + 1} {name}: {values}", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
    rev = subprocess.run(["git", "rev-parse", "--short", args.rev], cwd=ROOT, capture_output=True, text=True)
    print(f"\nA = {args.rev} ({rev.stdout.strip()}), B = working tree; median of {args.rounds} rounds; "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("\n| metric | A | B | B / A | runs A | runs B |\n|---|---|---|---|---|---|")
    for name in metrics:
        a = [r[name] for r in results["A"]]
        b = [r[name] for r in results["B"]]
        ma, mb = statistics.median(a), statistics.median(b)
        ratio = mb / ma if ma else float("nan")
        print(f"| {name} | {ma:g} | {mb:g} | {ratio:.3f} | {', '.join(f'{v:g}' for v in a)} | "
              f"{', '.join(f'{v:g}' for v in b)} |")  # fmt: skip


if __name__ == "__main__":
    main()
