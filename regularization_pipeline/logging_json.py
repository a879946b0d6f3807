"""JSON-lines log formatting for the log files of a deployment (docker/dagster.yaml).

One JSON object per line, so operators can `tail -f` a file and still feed it to
a log shipper (Loki, Elastic, CloudWatch) without a parsing rule. Standard
library only: the image needs no extra dependency for its logs.

The formatter writes only the record's message and a fixed set of fields: the
message is what the code chose to log (ids, statuses, counts; never customer
data, see ARCHITECTURE.md), and arbitrary ``extra`` attributes are left out so
nothing unreviewed reaches the file. Dagster attaches the run id and step to
the records it routes through its handlers (``dagster_meta``); those are kept
because they link a line to its run in the UI.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from regularization_pipeline.core.errors import describe_error

# Re-exported: core silences the HTTP clients' request lines when it is imported (redaction.py).
from regularization_pipeline.core.redaction import (  # noqa: F401
    HTTP_CLIENT_LOGGERS,
    quiet_http_client_loggers,
)

# Fields of the `dagster_meta` attribute Dagster puts on the records it hands to
# yaml-configured handlers (dagster._core.log_manager.DagsterLogRecordMetadata).
_DAGSTER_META_FIELDS = ("run_id", "job_name", "step_key")


class JsonLinesFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts (UTC, ISO 8601), level, logger, message, and Dagster's run context."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, "dagster_meta", None)
        meta = meta if isinstance(meta, dict) else {}
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, tz=dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            # Dagster rewrites record.msg to "job - run id - pid - step - event - message"
            # plus any error text; the original message is the part worth reading.
            "message": meta.get("orig_message") or record.getMessage(),
        }
        for key in _DAGSTER_META_FIELDS:
            if meta.get(key) is not None:
                entry[key] = str(meta[key])
        event = meta.get("dagster_event")
        if event is not None:
            entry["event"] = getattr(event, "event_type_value", str(event))
        if record.exc_info:
            # What describe_error keeps (class, code, statement, our words): a traceback can
            # carry local values (SQL parameters), a foreign message customer data.
            exc = record.exc_info[1]
            entry["exception"] = describe_error(exc) if exc is not None else None
        return json.dumps(entry, ensure_ascii=False, default=str)
