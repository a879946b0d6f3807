"""How long audit rows and settled outbox events are kept unless an operator says otherwise.

Apart from ``retention.py`` (SQLAlchemy) because the CLI's parser shows it in ``prune --help``
and builds every option before any command runs: a usage error loads no database library.
"""

DEFAULT_RETENTION_DAYS = 90
