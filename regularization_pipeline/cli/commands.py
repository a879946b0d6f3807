"""The command table: every sub-command declared once (its name, help, options and handler),
the parser built from it, and ``main``, which runs a command under one error contract.

Each handler's module is imported when its command runs: building the parser and refusing a
usage error load neither Dagster, SQLAlchemy, Alembic nor pydantic."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from regularization_pipeline.cli.arguments import (
    DEBUG,
    EXIT_BUSY,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    add_format,
    add_run_options,
    add_time_filter,
    number,
    order_id,
    utc_time,
    whole_number,
)
from regularization_pipeline.core.alerting.alert import SEVERITIES
from regularization_pipeline.core.operations.retention_period import DEFAULT_RETENTION_DAYS

Command = Callable[[argparse.Namespace, argparse.ArgumentParser], int]
Options = Callable[[argparse.ArgumentParser], None]
DEFAULT_COMMAND = "run"


def handler(module: str, name: str) -> Command:
    """``name`` of ``regularization_pipeline.cli.<module>``, imported when the command runs."""

    def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
        commands = importlib.import_module(f"regularization_pipeline.cli.{module}")
        return getattr(commands, name)(args, parser)

    return run


def flag(*names: str, **kwargs) -> Options:
    """One option, as ``add_argument`` takes it."""
    return lambda parser: parser.add_argument(*names, **kwargs)


def one_of(*options: Options, required: bool = True) -> Options:
    """Options of which exactly one is given."""

    def add(parser: argparse.ArgumentParser) -> None:
        group = parser.add_mutually_exclusive_group(required=required)
        for option in options:
            option(group)

    return add


def time_filter(what: str) -> Options:
    return lambda parser: add_time_filter(parser, what)


def min_age(help_text: str) -> Options:
    return flag("--min-age", type=number, metavar="MINUTES", help=help_text)


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    description: str
    run: Command
    options: tuple[Options, ...] = ()


COMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "run",
        "run the regularization job once (the default)",
        "Run the Dagster job once against $DAGSTER_HOME's instance.",
        handler("run_commands", "cmd_run"),
        (add_run_options,),
    ),
    Subcommand(
        "migrate",
        "create or upgrade this project's tables in REGULARIZATION_DATABASE_URL",
        "Alembic `upgrade head` for the audit, outbox and attempts tables.",
        handler("run_commands", "cmd_migrate"),
    ),
    Subcommand(
        "regularize-order",
        "regularize one orphaned order now, with every guarantee of a run",
        "Lock, re-verify and complete one order, writing its outbox and audit rows. "
        "Refuses (exit 2, nothing changed) an unknown order or one that is not an orphan.",
        handler("operator_commands", "cmd_regularize_order"),
        (
            flag(
                "--order-id", required=True, type=order_id, help="the order's id in the application"
            ),
            min_age("grace period left to the webhook (default 10)"),
            flag(
                "--max-attempts",
                type=whole_number,
                help="failures before the order is quarantined (default 5)",
            ),
            flag(
                "--dry-run",
                action="store_true",
                default=None,
                help="decide and audit, change nothing",
            ),
        ),
    ),
    Subcommand(
        "explain",
        "say what a run would do with one order, and why (read-only)",
        "The order's status, total and currency, each completed transaction's id, amount, "
        "currency and time (UTC), and the decision a run would take on it now: regularize, "
        "leave, hold for a human, or skip a quarantine. Changes nothing.",
        handler("operator_commands", "cmd_explain"),
        (
            flag(
                "--order-id", required=True, type=order_id, help="the order's id in the application"
            ),
            min_age("grace period left to the webhook (default 10)"),
        ),
    ),
    Subcommand(
        "release",
        "lift an order's quarantine so the next run retries it",
        "Reset the failure count of a quarantined order and audit the release.",
        handler("operator_commands", "cmd_release"),
        (flag("--order-id", required=True, type=order_id, help="the quarantined order's id"),),
    ),
    Subcommand(
        "list-orphans",
        "list orphaned orders (read-only)",
        "Pending orders with a completed payment older than the grace period, "
        "oldest payment first. Times are UTC.",
        handler("operator_commands", "cmd_list_orphans"),
        (time_filter("payments completed"), min_age("grace period (default 10)"), add_format),
    ),
    Subcommand(
        "list-inconsistencies",
        "list what the pipeline reports and never fixes (read-only)",
        "Amount or currency mismatches, double charges, payments on cancelled "
        "or missing orders, quarantined orders: one row per kind, order and completed payment, "
        "with the figures to settle it (order status, total and currency; the payment's id, "
        "amount, currency and completion time, UTC).",
        handler("operator_commands", "cmd_list_inconsistencies"),
        (time_filter("payments completed"), add_format),
    ),
    Subcommand(
        "deliver",
        "deliver every OrderCompleted event due in the outbox now",
        "What the job deliver_order_completed_events does: new events, retries that are due and "
        "redelivered ones, to the configured publishers, each with its idempotency key. Exits 1 "
        "when every delivery failed.",
        handler("operator_commands", "cmd_deliver"),
    ),
    Subcommand(
        "redeliver",
        "put dead-lettered OrderCompleted events back in the queue and deliver them",
        "Dead events become pending with a fresh attempt count, then the outbox is delivered "
        "at once (as `deliver`), each event with its idempotency key.",
        handler("operator_commands", "cmd_redeliver"),
        (
            one_of(
                flag(
                    "--event-id",
                    nargs="+",
                    metavar="EVENT_ID",
                    help="these dead events (all must be dead)",
                ),
                flag(
                    "--all-dead",
                    action="store_true",
                    help="every dead event (narrow with --since/--until)",
                ),
            ),
            flag(
                "--since",
                type=utc_time,
                metavar="ISO_TIME",
                help="events created at or after this time",
            ),
            flag(
                "--until",
                type=utc_time,
                metavar="ISO_TIME",
                help="events created at or before this time",
            ),
        ),
    ),
    Subcommand(
        "prune",
        "delete audit rows and settled outbox events older than the retention",
        "Audit rows (inconsistency reports excepted) and delivered or dead events "
        "with their delivery rows; pending events are never pruned.",
        handler("operator_commands", "cmd_prune"),
        (
            flag(
                "--older-than-days",
                type=number,
                default=DEFAULT_RETENTION_DAYS,
                metavar="DAYS",
                help=f"retention period (default {DEFAULT_RETENTION_DAYS})",
            ),
            flag(
                "--dry-run", action="store_true", help="count what would be pruned, delete nothing"
            ),
        ),
    ),
    Subcommand(
        "send-test-alert",
        "send a test alert to every alert channel, through its real format and address",
        "Opens and resolves a test incident on each channel of the alert routes "
        "(REGULARIZATION_ALERT_*; the routes file). With --severity, only the channels that "
        "take it, as a real alert is routed. Exits 1 when a channel did not take it.",
        handler("operator_commands", "cmd_send_test_alert"),
        (
            flag(
                "--severity",
                choices=SEVERITIES,
                help="only the channels taking this severity (default: every channel)",
            ),
        ),
    ),
    Subcommand(
        "doctor",
        "check the mapping against the shop before the first run (read-only)",
        "Every order and transaction status with how the mapping classifies it, "
        "the mapping's dangerous combinations, the recommended indexes, the server, the time "
        "zone, and what a run would do now. Exits 2 when the mapping would act wrongly.",
        handler("operator_commands", "cmd_doctor"),
    ),
)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line (the usage is in --help)."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> tuple[
    argparse.ArgumentParser, dict[str, tuple[argparse.ArgumentParser, Command]]
]:
    """The parser, and for each command name its own sub-parser and handler."""
    parser = _Parser(
        prog="regularize-completed-orders",
        description="Complete orders left pending after a lost payment webhook. "
        f"Without a command, runs `{DEFAULT_COMMAND}`. With a shops file "
        "(REGULARIZATION_SHOPS_FILE), --shop NAME before or after the command picks the shop.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, tuple[argparse.ArgumentParser, Command]] = {}
    for command in COMMANDS:
        command_parser = sub.add_parser(
            command.name, help=command.help, description=command.description
        )
        for add in command.options:
            add(command_parser)
        commands[command.name] = (command_parser, command.run)
    return parser, commands


def _take_shop(args: list[str]) -> tuple[str | None, list[str]]:
    """``--shop NAME`` (or ``--shop=NAME``), anywhere: the shops file's shop every command works on."""
    rest, shop = [], None
    it = iter(args)
    for arg in it:
        if arg == "--shop":
            shop = next(it, "")
        elif arg.startswith("--shop="):
            shop = arg.split("=", 1)[1]
        else:
            rest.append(arg)
    return shop, rest


def _to_terminal(text: str) -> None:
    print(f"debug: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command under one error contract: bad input exits 2 with one line naming the
    problem, a run with failed orders exits 1, another run in flight 3; a traceback only
    with --debug; a closed pipe (``| head``) ends quietly."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    DEBUG.on = "--debug" in args_list
    args_list = [arg for arg in args_list if arg != "--debug"]
    shop, args_list = _take_shop(args_list)
    if not DEBUG.on:
        # Dagster's beta and deprecation warnings are noise on an operator's terminal.
        warnings.filterwarnings("ignore")
    parser, commands = build_parser()
    if not args_list or (args_list[0] not in commands and args_list[0] not in ("-h", "--help")):
        args_list.insert(0, DEFAULT_COMMAND)
    args = parser.parse_args(args_list)
    # Past the usage errors: what every command needs.
    from regularization_pipeline.cli.environment import select_shop
    from regularization_pipeline.core.errors import (
        DEBUG_TERMINAL,
        BusyError,
        RegularizationError,
        describe_error,
    )
    from regularization_pipeline.logging_json import quiet_http_client_loggers

    quiet_http_client_loggers()
    command_parser, command = commands[args.command]
    # --debug shows a database's own message on this terminal, and nowhere else: not in the
    # audit, the attempts table, the outbox, the event log or a log file (describe_error).
    # Not during a Dagster run (`run`): its steps' output is captured into the compute logs.
    DEBUG_TERMINAL.show = _to_terminal if DEBUG.on and args.command != DEFAULT_COMMAND else None
    try:
        select_shop(shop)
        return command(args, command_parser)
    except BrokenPipeError:
        # The reader went away (`| head`): nothing more to say, and nothing to say it to.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except BusyError as exc:  # "busy: run R since T"
        print(str(exc), file=sys.stderr)
        return EXIT_BUSY
    except RegularizationError as exc:
        if DEBUG.on:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if DEBUG.on:
            raise
        print(
            f"error: {describe_error(exc)} (again with --debug for the traceback)", file=sys.stderr
        )
        return EXIT_FAILED
