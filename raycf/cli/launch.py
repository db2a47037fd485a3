"""The `raycf` command's entry point: one line saying what the command does, before the seconds it takes to
import torch, Ray and the rest (raycf.cli.main)."""

from __future__ import annotations

import sys

DOING = {
    "tune": "running a study",
    "score": "scoring a run's users",
    "serve": "serving a run's model",
    "train": "training one model",
    "report": "writing a run's report",
    "compare": "comparing scored runs",
}
"""What each command does, in the words of its first line."""
QUIET_FLAGS = frozenset({"-h", "--help", "--version"})
"""Command lines whose whole output is what they ask for: no first line."""


def first_line(args: list[str]) -> str | None:
    """`raycf tune: running a study (loading torch and the rest first)`; None for help, a version, an unknown
    command or none."""
    if not args or QUIET_FLAGS.intersection(args) or args[0] not in DOING:
        return None
    return f"raycf {args[0]}: {DOING[args[0]]} (loading its libraries first, a few seconds)"


def main(argv: list[str] | None = None) -> None:
    """Print the first line, then run the command (raycf.cli.main.main)."""
    args = sys.argv[1:] if argv is None else argv
    line = first_line(args)
    if line is not None:
        print(line, flush=True)
    from raycf.cli.main import main as run

    run(args)
