"""``regularize-completed-orders``: the operator CLI, mirroring the original artisan command.

    regularize-completed-orders [run] --limit 50 --sleep 2 --hours H --dry-run --mode auto
    regularize-completed-orders migrate
    regularize-completed-orders regularize-order --order-id N [--dry-run]
    regularize-completed-orders release --order-id N
    regularize-completed-orders list-orphans [--hours H | --since T --until T] [--format table|csv]
    regularize-completed-orders list-inconsistencies [--hours H | --since T --until T] [--format table|csv]
    regularize-completed-orders deliver
    regularize-completed-orders redeliver --event-id ID [ID ...] | --all-dead [--since T --until T]
    regularize-completed-orders prune --older-than-days 90 [--dry-run]
    regularize-completed-orders doctor

``run`` (the default command) runs the Dagster job once against the instance in
``$DAGSTER_HOME``, so the run, its logs and its metadata show up in the UI like
a scheduled one. It refuses to start while another run of the job is queued or
in progress. Exit codes: 0 done, 1 some orders failed or the run failed,
2 bad input, 3 another run is in flight.

Each command is declared once in ``commands.COMMANDS`` (name, help, options, handler);
``arguments`` holds the flag types and the exit codes, ``launching`` runs the job and reports
it, ``environment`` builds what the job would build from the environment, and
``run_commands`` / ``operator_commands`` are the handlers. The operator tools call ``core`` directly against
REGULARIZATION_DATABASE_URL (the same checks as the UI's ops jobs, in
``core.operations.operator_tools`` and ``core.operations.retention``); the lists are read-only.
A malformed time or an unknown id is a usage error (2) that changes nothing.
Dagster and the definitions are imported inside the commands that need them,
so a usage error answers at once.
"""

from regularization_pipeline.cli.arguments import (
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    RUN_FLAGS,
    run_config_from_args,
)
from regularization_pipeline.cli.commands import COMMANDS, DEFAULT_COMMAND, build_parser, main


def __getattr__(name: str):
    """``launch_job`` and ``print_report`` (the launcher loads Dagster's instance): on first use."""
    if name in ("launch_job", "print_report"):
        from regularization_pipeline.cli import launching

        return getattr(launching, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "COMMANDS",
    "DEFAULT_COMMAND",
    "EXIT_BUSY",
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "RUN_FLAGS",
    "build_parser",
    "launch_job",
    "main",
    "print_report",
    "run_config_from_args",
]
