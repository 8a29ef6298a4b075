"""Start-up time of the ``newsletter`` command: ``--help`` and ``--version`` against
``python -c pass`` (the interpreter alone), in the same run, interleaved.

    .venv/bin/python bench/cli_startup.py [--runs 10]

Prints the median and min-max wall time of each (a fresh process each time) and what the
command adds to the bare interpreter. The goal: under 0.25 s for both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

GOAL = 0.25  # seconds, the whole command


def newsletter_command() -> list[str]:
    """The installed console script beside this interpreter (else ``python -m``-style)."""
    script = Path(sys.executable).with_name("newsletter")
    if script.exists():
        return [str(script)]
    found = shutil.which("newsletter")
    if found:
        return [found]
    return [sys.executable, "-c", "from newsletter.cli import main; main()"]


def timed(argv: list[str]) -> float:
    """Wall seconds of one run of ``argv`` (output discarded; it must succeed)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=environment)
    return time.perf_counter() - started


def measure(runs: int = 10) -> dict[str, list[float]]:
    """Seconds per run of each command, interleaved so load affects them alike."""
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "newsletter --help": [*newsletter_command(), "--help"],
        "newsletter --version": [*newsletter_command(), "--version"],
    }
    for argv in commands.values():
        timed(argv)  # warm the file cache
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(timed(argv))
    return times


def rows(times: dict[str, list[float]]) -> list[tuple[str, str, str, str]]:
    """Table rows: (measure, median (range), target, met)."""
    base = statistics.median(times["python -c pass"])
    out = []
    for name, values in times.items():
        median = statistics.median(values)
        extra = "" if name == "python -c pass" else f"; {median - base:.3f} s over the interpreter"
        goal = name != "python -c pass"
        out.append(
            (
                f"`{name}`, {len(values)} runs",
                f"{median:.3f} s ({min(values):.3f}–{max(values):.3f}){extra}",
                f"< {GOAL} s" if goal else "",
                ("yes" if median < GOAL else "**NO**") if goal else "",
            )
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("| command | wall time, median (min–max) | target | met |\n| --- | --- | --- | --- |")
    for row in rows(measure(args.runs)):
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
