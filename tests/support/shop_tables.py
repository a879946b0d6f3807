"""A shop's own tables, built as its migrations build them, and a writer for their rows."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.shop import migrations
from regularization_pipeline.core.shop.binding import bind_schema
from regularization_pipeline.core.shop.mapping import SchemaMapping


class Shop:
    """One shop's tables on one server, and a writer that inserts rows as the shop would."""

    def __init__(self, engine: sa.Engine, tables: sa.MetaData, mapping: dict):
        self.engine, self.md, self.raw = engine, tables, mapping
        self.now = utcnow().replace(microsecond=0)
        tables.create_all(engine)
        self.mapping = SchemaMapping.parse(mapping)
        migrations.upgrade(engine, self.mapping.table_prefix)
        self.schema = bind_schema(engine, self.mapping)

    def at(self, minutes_ago: float) -> dt.datetime:
        """A time ``minutes_ago``, as a naive UTC column stores it (timestamptz gets the zone)."""
        return self.now - dt.timedelta(minutes=minutes_ago)

    def insert(self, table: str, **values):
        t = self.md.tables[table]
        with self.engine.begin() as conn:
            result = conn.execute(t.insert().values(**values))
            key = t.primary_key.columns.values()[0].name
            return values.get(key) or result.inserted_primary_key[0]

    def row(self, table: str, key, *columns: str) -> dict:
        t = self.md.tables[table]
        pk = t.primary_key.columns.values()[0]
        with self.engine.connect() as conn:
            found = conn.execute(sa.select(*(t.c[c] for c in columns)).where(pk == key)).one()
        return dict(zip(columns, found, strict=True))
