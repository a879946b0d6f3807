"""Alembic environment for the tables this project owns.

Called two ways: from ``core.migrations.upgrade`` with a connection and the
table prefix in ``config.attributes``, or by a bare ``alembic upgrade head``
in the repository root, which reads the same environment variables as a run.
"""

from alembic import context

from regularization_pipeline.core.shop.engine import create_app_engine, database_url_from_env
from regularization_pipeline.core.shop.mapping import load_mapping

config = context.config
prefix = config.attributes.get("table_prefix") or load_mapping().table_prefix


def _run(connection) -> None:
    context.configure(
        connection=connection,
        version_table=f"{prefix}alembic_version",
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations(table_prefix=prefix)


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    engine = create_app_engine(database_url_from_env())
    with engine.connect() as conn:
        _run(conn)
    engine.dispose()
