-- Least-privilege account for the regularization pipeline on MariaDB (and MySQL 8).
--
-- Run it as an account that may grant (the database owner or root), AFTER
-- `regularize-completed-orders migrate` has created our tables, on the application's database:
--
--   mariadb --host=... --user=owner --password shop_db < docs/sql/grants.mariadb.sql
--
-- Every name is a user variable with the default shown; set one before the script to change it:
--   { echo "SET @role = 'reg'; SET @host = '10.0.0.%';"; cat docs/sql/grants.mariadb.sql; } \
--     | mariadb --host=... --user=owner --password shop_db
--   @role               regularization_pipeline   the account the pipeline connects as ...
--   @host               %                         ... from these hosts
--   @prefix             regularization_           SchemaMapping.table_prefix (our own tables)
--   @orders             orders                    the application's orders table ...
--   @orders_status      status                    ... the only two columns we ever write
--   @orders_updated_at  updated_at
--   @transactions       transactions              read only
--
-- What the pipeline needs, and nothing more (the same as grants.postgresql.sql):
--   * transactions: SELECT.
--   * orders: SELECT, and UPDATE of the status and updated_at columns only (SELECT ... FOR UPDATE
--     needs no more).
--   * our tables (audit, outbox, order_attempts, event_deliveries, inconsistencies, scan_state):
--     SELECT, INSERT, UPDATE, DELETE; their AUTO_INCREMENT ids need no grant of their own.
--   * our alembic version table: SELECT only; migrations run as the owner, never as this account.
--   * the run lock (GET_LOCK) needs no privilege.
-- The account gets no password here: set one with ALTER USER ... IDENTIFIED BY, or use your own
-- authentication. tests/docs/test_tutorial.py runs the tutorial's commands with this account.

SET @role = COALESCE(@role, 'regularization_pipeline');
SET @host = COALESCE(@host, '%');
SET @prefix = COALESCE(@prefix, 'regularization_');
SET @orders = COALESCE(@orders, 'orders');
SET @orders_status = COALESCE(@orders_status, 'status');
SET @orders_updated_at = COALESCE(@orders_updated_at, 'updated_at');
SET @transactions = COALESCE(@transactions, 'transactions');

-- Names are quoted as identifiers and the account as a string, so no value can end a statement.
SET @account = CONCAT(QUOTE(@role), '@', QUOTE(@host));
SET @db = CONCAT('`', REPLACE(DATABASE(), '`', '``'), '`');

SET @sql = CONCAT('CREATE USER IF NOT EXISTS ', @account);
PREPARE statement FROM @sql; EXECUTE statement;

-- The application's tables: read payments, flip order status.
SET @t = @transactions;
SET @sql = CONCAT('GRANT SELECT ON ', @db, '.`', REPLACE(@t, '`', '``'), '` TO ', @account);
PREPARE statement FROM @sql; EXECUTE statement;
SET @t = @orders;
SET @sql = CONCAT('GRANT SELECT, UPDATE (`', REPLACE(@orders_status, '`', '``'), '`, `',
    REPLACE(@orders_updated_at, '`', '``'), '`) ON ', @db, '.`', REPLACE(@t, '`', '``'), '` TO ',
    @account);
PREPARE statement FROM @sql; EXECUTE statement;

-- Our own tables.
SET @t = CONCAT(@prefix, 'audit');
SET @sql = CONCAT('GRANT SELECT, INSERT, UPDATE, DELETE ON ', @db, '.`', REPLACE(@t, '`', '``'), '` TO ', @account);
PREPARE statement FROM @sql; EXECUTE statement;
SET @t = CONCAT(@prefix, 'outbox');
SET @sql = CONCAT('GRANT SELECT, INSERT, UPDATE, DELETE ON ', @db, '.`', REPLACE(@t, '`', '``'), '` TO ', @account);
PREPARE statement FROM @sql; EXECUTE statement;
SET @t = CONCAT(@prefix, 'order_attempts');
SET @sql = CONCAT('GRANT SELECT, INSERT, UPDATE, DELETE ON ', @db, '.`', REPLACE(@t, '`', '``'), '` TO ', @account);
PREPARE statement FROM @sql; EXECUTE statement;
SET @t = CONCAT(@prefix, 'event_deliveries');
SET @sql = CONCAT('GRANT SELECT, INSERT, UPDATE, DELETE ON ', @db, '.`', REPLACE(@t, '`', '``'), '` TO ', @account);
PREPARE statement FROM @sql; EXECUTE statement;
SET @t = CONCAT(@prefix, 'inconsistencies');
SET @sql = CONCAT('GRANT SELECT, INSERT, UPDATE, DELETE ON ', @db, '.`', REPLACE(@t, '`', '``'), '` TO ', @account);
PREPARE statement FROM @sql; EXECUTE statement;
SET @t = CONCAT(@prefix, 'scan_state');
SET @sql = CONCAT('GRANT SELECT, INSERT, UPDATE, DELETE ON ', @db, '.`', REPLACE(@t, '`', '``'), '` TO ', @account);
PREPARE statement FROM @sql; EXECUTE statement;
SET @t = CONCAT(@prefix, 'alembic_version');
SET @sql = CONCAT('GRANT SELECT ON ', @db, '.`', REPLACE(@t, '`', '``'), '` TO ', @account);
PREPARE statement FROM @sql; EXECUTE statement;

DEALLOCATE PREPARE statement;
