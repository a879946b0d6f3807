"""Start-up: what loading the code location costs, and an empty run against a trivial Dagster job.

    python -m bench.startup [--checkout PATH ...] [--repeat 5]

Prints, from fresh interpreters (medians of ``--repeat``):

- ``import regularization_pipeline.definitions``: its wall time, and the packages costing most
  of it by ``python -X importtime`` (cumulative);
- an empty-backlog run (``regularize-completed-orders`` with the job's defaults on a migrated
  SQLite shop with nothing due) beside a trivial four-asset Dagster job launched the same way
  (one process, the same kind of instance, materialized in process): our own share is the
  difference;
- a CLI usage error (``--bogus``).

Wall and CPU time both: CPU time is what a loaded machine changes least.

``--checkout`` (repeatable) measures a checkout's code with this interpreter: give the commit
before a change (in a worktree of its own) and this one for a before-and-after, interleaved.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOP = 8

# Four assets in a chain doing nothing, materialized as the CLI runs the job: in process, on
# the instance in $DAGSTER_HOME.
TRIVIAL_JOB = """
import dagster as dg

@dg.asset
def a(): return 1
@dg.asset
def b(a): return a
@dg.asset
def c(b): return b
@dg.asset
def d(c): return c

with dg.DagsterInstance.get() as instance:
    assert dg.materialize([a, b, c, d], instance=instance).success
"""


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``args`` in a fresh process: CPU time (user + system) is what a
    loaded machine changes least. A process that fails raises."""
    with tempfile.TemporaryFile() as errors:
        started = time.perf_counter()
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        if code not in (0, 2) or (code == 2 and "--bogus" not in args):
            errors.seek(0)
            raise AssertionError(f"{' '.join(args)} exited {code}: {errors.read()[-2000:]!r}")
    return wall, usage.ru_utime + usage.ru_stime


def import_costs(cwd: Path, env: dict[str, str]) -> list[tuple[str, float]]:
    """The top-level packages costing most of loading the code location (cumulative ms)."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import regularization_pipeline.definitions"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    costs: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.split("|")
        if not cumulative.strip().isdigit():  # the header line
            continue
        package = name.strip().split(".")[0]
        if name.strip() == package:  # a top-level entry: its cumulative time counts once
            costs[package] = costs.get(package, 0.0) + int(cumulative.strip()) / 1000
    return sorted(costs.items(), key=lambda item: -item[1])[:TOP]


def empty_shop(directory: Path) -> str:
    """A migrated SQLite shop with nothing due: what an empty-backlog run reads."""
    from regularization_pipeline.core.shop import migrations
    from regularization_pipeline.core.shop.engine import create_app_engine
    from regularization_pipeline.demo.shop import shop_tables

    url = f"sqlite:///{directory / 'shop.db'}"
    engine = create_app_engine(url)
    shop_tables().metadata.create_all(engine)
    migrations.upgrade(engine, "regularization_")
    engine.dispose()
    return url


COMMANDS = {
    "import regularization_pipeline.definitions": [
        "-c",
        "import regularization_pipeline.definitions",
    ],
    "empty-backlog run": ["-m", "regularization_pipeline.cli"],
    "trivial four-asset job": ["-c", TRIVIAL_JOB],
    "CLI usage error (--bogus)": ["-m", "regularization_pipeline.cli", "--bogus"],
}


def measure(checkouts: list[Path], repeat: int) -> dict[Path, dict[str, tuple[float, float]]]:
    """Median (wall, CPU) of every command for every checkout, the checkouts interleaved in each
    repetition so that a machine's load falls on all of them alike."""
    samples: dict[Path, dict[str, list[tuple[float, float]]]] = {c: {} for c in checkouts}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "dagster_home"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "REGULARIZATION_DATABASE_URL": empty_shop(Path(tmp)),
            "REGULARIZATION_PUBLISHERS": "outbox",
        }
        for _ in range(repeat):
            for checkout in checkouts:
                for name, args in COMMANDS.items():
                    sample = timed(
                        [sys.executable, *args], checkout, {**env, "PYTHONPATH": str(checkout)}
                    )
                    samples[checkout].setdefault(name, []).append(sample)
    return {
        checkout: {
            name: (
                statistics.median(wall for wall, _ in runs),
                statistics.median(cpu for _, cpu in runs),
            )
            for name, runs in by_name.items()
        }
        for checkout, by_name in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkout", type=Path, action="append", help="the code to measure (repeatable)"
    )
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    checkouts = [c.resolve() for c in args.checkout or [ROOT]]
    for checkout in checkouts:
        print(f"{checkout}: import regularization_pipeline.definitions, cumulative")
        for package, ms in import_costs(checkout, {**os.environ, "PYTHONPATH": str(checkout)}):
            print(f"  {package:<28} {ms:8.0f} ms")
    figures = measure(checkouts, args.repeat)
    print(f"\nmedians of {args.repeat}, wall / CPU seconds:")
    print("| command | " + " | ".join(str(c) for c in checkouts) + " |")
    print("| --- |" + " ---: |" * len(checkouts))
    for name in COMMANDS:
        cells = [f"{figures[c][name][0]:.2f} / {figures[c][name][1]:.2f}" for c in checkouts]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for checkout in checkouts:
        run, trivial = (
            figures[checkout]["empty-backlog run"],
            figures[checkout]["trivial four-asset job"],
        )
        print(
            f"{checkout}: our own share of an empty run {run[0] - trivial[0]:.2f} s wall, "
            f"{run[1] - trivial[1]:.2f} s CPU ({run[0] / trivial[0]:.2f}x the trivial job)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
