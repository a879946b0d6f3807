-- Least-privilege role for the regularization pipeline on PostgreSQL.
--
-- Run it as the database owner (or a superuser), AFTER `regularize-completed-orders migrate`
-- has created our tables, on the application's database:
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f docs/sql/grants.postgresql.sql
--
-- Every name is a psql variable with the default shown, override with -v name=value:
--   role               regularization_pipeline   the login role the pipeline connects as
--   prefix             regularization_           SchemaMapping.table_prefix (our own tables)
--   orders             orders                    the application's orders table ...
--   orders_status      status                    ... the only two columns we ever write
--   orders_updated_at  updated_at                (set orders.updated_at: null in the mapping? pass
--                                                 -v orders_updated_at=<status column> again)
--   transactions       transactions              read only
--   schema             public
--
-- What the pipeline needs, and nothing more:
--   * transactions: SELECT.
--   * orders: SELECT, and UPDATE of the status and updated_at columns only. The column grant is
--     also what SELECT ... FOR UPDATE needs (UPDATE on at least one column).
--   * our tables (audit, outbox, order_attempts, event_deliveries, inconsistencies, scan_state):
--     SELECT, INSERT, UPDATE, DELETE (retention deletes old audit and delivered outbox rows, a
--     scan deletes the inconsistencies that cleared); their id sequences: USAGE.
--   * our alembic version table: SELECT only, the run checks the revision; migrations run as
--     the owner, never as this role.
-- No access to any other table (customers, users...): tests/reliability/test_security.py proves a
-- run and a dispatch work with exactly these grants, and that another orders column is refused.
--
-- The role gets no password here: set one with \password, or use your own authentication.

\if :{?role}
\else
  \set role regularization_pipeline
\endif
\if :{?prefix}
\else
  \set prefix regularization_
\endif
\if :{?orders}
\else
  \set orders orders
\endif
\if :{?orders_status}
\else
  \set orders_status status
\endif
\if :{?orders_updated_at}
\else
  \set orders_updated_at updated_at
\endif
\if :{?transactions}
\else
  \set transactions transactions
\endif
\if :{?schema}
\else
  \set schema public
\endif

\set audit :prefix audit
\set outbox :prefix outbox
\set attempts :prefix order_attempts
\set deliveries :prefix event_deliveries
\set inconsistencies :prefix inconsistencies
\set scan_state :prefix scan_state
\set version :prefix alembic_version
\set audit_seq :prefix audit_id_seq
\set outbox_seq :prefix outbox_id_seq

SELECT format('CREATE ROLE %I LOGIN', :'role')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec

SELECT format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), :'role') \gexec
GRANT USAGE ON SCHEMA :"schema" TO :"role";

-- The application's tables: read payments, flip order status.
GRANT SELECT ON :"schema".:"transactions" TO :"role";
GRANT SELECT, UPDATE (:"orders_status", :"orders_updated_at") ON :"schema".:"orders" TO :"role";

-- Our own tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON :"schema".:"audit", :"schema".:"outbox",
    :"schema".:"attempts", :"schema".:"deliveries", :"schema".:"inconsistencies",
    :"schema".:"scan_state" TO :"role";
GRANT SELECT ON :"schema".:"version" TO :"role";
GRANT USAGE, SELECT ON SEQUENCE :"schema".:"audit_seq", :"schema".:"outbox_seq" TO :"role";
