"""docs/reference.md, generated from the code: ``python -m tools.reference``.

Every table is read from the object it describes (argparse, the pydantic models, the
resources' ``from_env``, the Definitions, a real run of the job on a throwaway SQLite demo
shop), so the reference cannot say what the code does not do; tests/docs/test_reference.py
fails when the file in docs/ is not what this writes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "reference.md"
PREFIX = "REGULARIZATION_"

# What each exit code means: the CLI's contract (cli.main). A new EXIT_* constant without a
# meaning here stops the generator, so the reference never lists a code it cannot explain.
EXIT_MEANINGS = {
    "EXIT_OK": "done: every order acted on, or nothing to do",
    "EXIT_FAILED": "orders failed (or the run failed); the others were done",
    "EXIT_USAGE": "bad input (option, mapping, id, database): one line names it, nothing changed",
    "EXIT_BUSY": "busy: another run holds the shop's run lock (`busy: run R since T`), nothing changed",
}


def _cell(value: Any) -> str:
    """A table cell: one line, pipes escaped, empty for nothing."""
    if value is None or value == "":
        return ""
    text = " ".join(str(value).split())
    return text.replace("|", "\\|")


def _code(value: Any) -> str:
    # Pipes are escaped once, by _table, even inside a code span (GitHub's tables ask it).
    return f"`{' '.join(str(value).split())}`" if value not in (None, "") else ""


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n\n")[0].replace("\n", " ")


# --- CLI -------------------------------------------------------------------------------


def cli_section() -> list[str]:
    from regularization_pipeline import cli
    from regularization_pipeline.core.run import RunOptions
    from regularization_pipeline.defs.config import DEFAULT_OVERRIDES

    parser, commands = cli.build_parser()
    # A run option's default is its run config field's: argparse leaves it unset.
    field_of = {flag: field for field, flag in cli.RUN_FLAGS.items()}
    lines = [
        "## CLI: `regularize-completed-orders`",
        "",
        _first_line(parser.description) + " `--debug` (any command) shows tracebacks, "
        "Dagster's own log lines, and a database's or a handler's own error message "
        "(operator commands, on the terminal only: it is never stored).",
        "",
    ]
    helps = {
        choice.dest: choice.help
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for choice in action._choices_actions
    }
    for name, (command_parser, _) in commands.items():
        lines += [f"### `{name}`", "", _first_line(helps.get(name) or ""), ""]
        if command_parser.description:
            lines += [_first_line(command_parser.description), ""]
        rows = []
        for action in command_parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            default = action.default
            field = field_of.get(action.option_strings[0]) if action.option_strings else None
            if default is None and name == cli.DEFAULT_COMMAND and field:
                default = DEFAULT_OVERRIDES.get(field, RunOptions.model_fields[field].default)
            if isinstance(action, argparse._StoreTrueAction) or default in (None, False):
                default = ""
            choices = ", ".join(map(str, action.choices)) if action.choices else ""
            rows.append(
                [
                    ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}`",
                    "yes" if action.required else "",
                    _code(default),
                    _code(choices),
                    (action.help or "").replace("%(default)s", str(action.default)),
                ]
            )
        if rows:
            lines += _table(["option", "required", "default", "choices", "meaning"], rows)
    return lines


def exit_codes_section() -> list[str]:
    from regularization_pipeline import cli

    codes = {name: value for name, value in vars(cli).items() if name.startswith("EXIT_")}
    unexplained = set(codes) - set(EXIT_MEANINGS)
    if unexplained:
        raise SystemExit(f"exit codes without a meaning in reference.py: {sorted(unexplained)}")
    rows = [[f"`{code}`", f"`{name}`", EXIT_MEANINGS[name]] for name, code in codes.items()]
    return ["## Exit codes (every CLI command)", "", *_table(["code", "name", "meaning"], rows)]


# --- run config ----------------------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) or str(annotation)
    return text.replace("typing.", "").replace("datetime.datetime", "datetime")


def run_config_section() -> list[str]:
    from regularization_pipeline.cli import RUN_FLAGS
    from regularization_pipeline.core.run import RunOptions
    from regularization_pipeline.defs.config import DEFAULT_OVERRIDES
    from regularization_pipeline.defs.config_fields import bounds_of

    rows = [
        [
            f"`{name}`",
            _code(RUN_FLAGS.get(name)),
            _code(_type_name(field.annotation)),
            _code(DEFAULT_OVERRIDES.get(name, field.default)),
            bounds_of(name, RunOptions),
            field.description,
        ]
        for name, field in RunOptions.model_fields.items()
    ]
    return [
        "## Run config of `regularized_orders` (the Launchpad form) and the `run` options",
        "",
        "`ops: regularized_orders: config:` in the Launchpad; unknown fields are refused. The",
        "defaults are the job's (and the CLI's `run`).",
        "",
        *_table(["field", "CLI option", "type", "default", "bounds", "meaning"], rows),
    ]


# --- environment variables -----------------------------------------------------------------


def _modules() -> Iterator[Any]:
    import regularization_pipeline.cli
    import regularization_pipeline.core
    import regularization_pipeline.defs

    for package in (
        regularization_pipeline.cli,
        regularization_pipeline.core,
        regularization_pipeline.defs,
    ):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if not info.name.endswith(".__main__"):  # running it is not reading it
                yield importlib.import_module(info.name)


def environment_variables() -> dict[str, tuple[Any, str]]:
    """Every variable named by a module constant ending in ``_ENV`` (or a ``*_ENVS`` mapping),
    with the module and constant that name it."""
    found: dict[str, tuple[Any, str]] = {}
    for module in _modules():
        for attr, value in vars(module).items():
            if attr.endswith("_ENV") and isinstance(value, str) and value.startswith(PREFIX):
                found.setdefault(value, (module, attr))
            elif attr.endswith("_ENVS") and isinstance(value, dict):
                for field, name in value.items():
                    if isinstance(name, str) and name.startswith(PREFIX):
                        found.setdefault(name, (module, f"{attr}[{field!r}]"))
    return dict(sorted(found.items()))


@contextlib.contextmanager
def _clean_environment() -> Iterator[None]:
    saved = {k: v for k, v in os.environ.items() if k.startswith(PREFIX)}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


def _resources() -> list[type]:
    from regularization_pipeline.defs import resources as r

    return [
        r.AppDatabaseResource,
        r.EventPublisherResource,
        r.PaymentGatewayResource,
        r.AlertResource,
    ]


def _snapshot() -> dict[tuple[type, str], Any]:
    values = {}
    for cls in _resources():
        resource = cls.from_env()
        for field in cls.model_fields:
            values[(cls, field)] = getattr(resource, field)
    return values


def _field_set_by(name: str, base: dict) -> tuple[type, str] | None:
    """The resource field a variable sets: the one that changes when only it is set."""
    for probe in ("7", "0.5", "true", "json"):
        os.environ[name] = probe
        try:
            changed = [key for key, value in _snapshot().items() if value != base[key]]
        finally:
            del os.environ[name]
        if changed:
            return changed[0]
    # Read at run time through dg.EnvVar (always set): the field whose description names it.
    for cls in _resources():
        for field, info in cls.model_fields.items():
            if name in (info.description or ""):
                return cls, field
    return None


def environment_section() -> list[str]:
    rows = []
    with _clean_environment():
        base = _snapshot()
        for name, (module, attr) in environment_variables().items():
            target = _field_set_by(name, base)
            if target:
                cls, field = target
                info = cls.model_fields[field]
                default = "(required)" if info.is_required() else info.default
                meaning = info.description or ""
                where = f"`{cls.__name__}.{field}`"
            else:
                stem = attr.removesuffix("_ENV")
                default = getattr(module, f"DEFAULT_{stem}", None)
                meaning = _comment_above(module, attr)
                where = f"`{module.__name__.removeprefix('regularization_pipeline.')}.{attr}`"
            if default in (None, [], ""):
                default = "unset"
            rows.append([f"`{name}`", _code(default), where, meaning])
    return [
        "## Environment variables",
        "",
        "Every variable the code location and the CLI read (module constants ending in `_ENV`),",
        "with its default while unset and the setting it fills. A value that cannot be read",
        "leaves the default in use and is named in one line: a delivery setting fails the runs,",
        "an alert setting is reported by every alert sensor's tick.",
        "",
        *_table(["variable", "default", "sets", "meaning"], rows),
    ]


def _comment_above(module: Any, attr: str) -> str:
    """The ``#`` comment right above a constant: its meaning, said once in the code."""
    source = Path(module.__file__).read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(source):
        if line.startswith(f"{attr} ="):
            comment = []
            for above in reversed(source[:index]):
                if not above.startswith("#"):
                    break
                comment.insert(0, above.lstrip("# "))
            return " ".join(comment)
    return ""


# --- Dagster definitions -----------------------------------------------------------------


def definitions_section() -> list[str]:
    from regularization_pipeline.definitions import defs

    lines = ["## Dagster definitions", ""]
    assets = []
    for asset in defs.assets or []:
        for key in asset.keys:
            spec = asset.specs_by_key[key] if hasattr(asset, "specs_by_key") else None
            kind = "observable source" if asset.is_observable else "asset"
            description = (spec.description if spec else None) or asset.descriptions_by_key.get(key)
            assets.append([f"`{key.to_user_string()}`", kind, _first_line(description)])
    lines += ["### Assets", "", *_table(["asset", "kind", "what it is"], assets)]
    checks = []
    for check in defs.asset_checks or []:
        for spec in check.check_specs:
            checks.append(
                [f"`{spec.name}`", f"`{spec.asset_key.to_user_string()}`", spec.description]
            )
    lines += ["### Asset checks", "", *_table(["check", "on", "what it checks"], checks)]
    jobs = [[f"`{job.name}`", _first_line(job.description)] for job in defs.jobs or []]
    lines += ["### Jobs", "", *_table(["job", "what it does"], jobs)]
    schedules = [
        [
            f"`{s.name}`",
            f"`{s.job_name}`",
            _code(s.cron_schedule),
            s.default_status.value.lower(),
            _first_line(s.description),
        ]
        for s in defs.schedules or []
    ]
    lines += [
        "### Schedules",
        "",
        *_table(["schedule", "job", "cron", "default status", "what it does"], schedules),
    ]
    sensors = [
        [
            f"`{s.name}`",
            ", ".join(f"`{t.job_name}`" for t in s.targets) if s.targets else "(alerts only)",
            _code(s.minimum_interval_seconds),
            s.default_status.value.lower(),
            _first_line(s.description),
        ]
        for s in defs.sensors or []
    ]
    lines += [
        "### Sensors",
        "",
        *_table(["sensor", "launches", "interval (s)", "default status", "what it does"], sensors),
    ]
    return lines


# --- metadata keys ------------------------------------------------------------------------

# Keys made from the shop's own values; the reference names the pattern, not the demo's values.
_DATA_KEYS = [(re.compile(r"^orders_(?!total$).+"), "orders_<status>")]


def metadata_keys() -> dict[str, list[str]]:
    """The metadata keys of each asset, observation and check, read from a real run of the job
    (observation, both checks, the three assets) on a throwaway SQLite demo shop."""
    import dagster as dg

    from regularization_pipeline.core.shop import migrations
    from regularization_pipeline.core.shop.engine import create_app_engine
    from regularization_pipeline.core.shop.mapping import SchemaMapping
    from regularization_pipeline.definitions import defs
    from regularization_pipeline.defs import jobs
    from regularization_pipeline.defs.resources import (
        AlertResource,
        AppDatabaseResource,
        EventPublisherResource,
        PaymentGatewayResource,
    )
    from regularization_pipeline.demo.__main__ import build_shop

    keys: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as folder, _clean_environment():
        url = f"sqlite:///{folder}/shop.db"
        engine = create_app_engine(url)
        build_shop(engine)
        migrations.upgrade(engine, SchemaMapping().table_prefix)
        engine.dispose()
        with dg.DagsterInstance.ephemeral() as instance:
            result = dg.materialize(
                [*defs.assets, *defs.asset_checks],
                instance=instance,
                selection=jobs.regularize_completed_orders.selection,
                resources={
                    "app_db": AppDatabaseResource(url=url),
                    "event_publisher": EventPublisherResource(publishers=["outbox"]),
                    "payment_gateway": PaymentGatewayResource(),
                    "alerts": AlertResource(),
                },
                run_config={
                    "ops": {"regularized_orders": {"config": {"sleep": 0}}},
                    "loggers": {"console": {"config": {"log_level": "ERROR"}}},
                },
            )
        for event in result.get_asset_materialization_events():
            m = event.materialization
            keys.setdefault(m.asset_key.to_user_string(), []).extend(m.metadata)
        for record in result.all_events:
            if record.event_type_value == "ASSET_OBSERVATION":
                observation = record.event_specific_data.asset_observation
                name = f"{observation.asset_key.to_user_string()} (observation)"
                keys.setdefault(name, []).extend(observation.metadata)
        for evaluation in result.get_asset_check_evaluations():
            keys.setdefault(f"check {evaluation.check_name}", []).extend(evaluation.metadata)
    return {owner: _patterns(found) for owner, found in sorted(keys.items())}


def _patterns(found: list[str]) -> list[str]:
    out = set()
    for key in found:
        for pattern, name in _DATA_KEYS:
            if pattern.match(key):
                key = name
        out.add(key)
    return sorted(out)


def metadata_section() -> list[str]:
    rows = [[owner, ", ".join(f"`{k}`" for k in keys)] for owner, keys in metadata_keys().items()]
    return [
        "## Metadata keys (what the UI plots, what the alert sensors read)",
        "",
        "Read from a real run of the job on the demo shop; `docs/monitoring.md` says what each",
        "means and which alert reads it.",
        "",
        *_table(["written by", "keys"], rows),
    ]


def render() -> str:
    warnings.filterwarnings("ignore")
    lines = [
        "# Reference",
        "",
        "Generated from the code by `make reference` (`python -m tools.reference`);",
        "do not edit: `tests/docs/test_reference.py` fails when this file is stale.",
        "",
        *cli_section(),
        *exit_codes_section(),
        *run_config_section(),
        *environment_section(),
        *definitions_section(),
        *metadata_section(),
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else OUTPUT
    # The reference gives the defaults, never this machine's settings: the schedule's cron and
    # the resources are read from the environment when the definitions load.
    for name in [name for name in os.environ if name.startswith(PREFIX)]:
        del os.environ[name]
    target.write_text(render(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
