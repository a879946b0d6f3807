"""One run at a time per shop, however it was launched: a lock held where the shop's data lives.

Dagster's pools and run tags only see the runs of one Dagster instance; a CLI run, a second code
location or a run launched around the queue reaches the same shop. The lock below is taken by
:meth:`Regularizer.run <regularization_pipeline.core.regularizer.Regularizer.run>` before it
writes anything, and is released by the database or the operating system when its holder dies
(a SIGKILL, an OOM kill, a lost host), so a crash never blocks the next run:

- PostgreSQL: a session advisory lock (``pg_try_advisory_lock``) on a connection of its own,
  held for the run; its ``application_name`` says which run holds it and since when; the
  holder is looked up in this database only (advisory locks are per database);
- MariaDB/MySQL: ``GET_LOCK(name, 0)`` on a connection of its own, held for the run;
- SQLite: an OS file lock (``flock``) on a file beside the database file, named for the file's
  device and inode (a symlink is the same lock); a file with hard links also locks a file of
  that name in the host's temporary directory, so a name in another directory is the same
  lock too. Never SQLite's own write lock: held for a run, it would block the application's
  writes for as long (nor a lock on the database file itself: closing it would drop SQLite's
  own POSIX locks in this process);
- an in-memory SQLite database is seen by one process only: a lock in the process suffices.

A second holder never waits: it gets :class:`BusyError` ("busy: run R since T") and changes
nothing. The lock is re-entrant within one thread, so the CLI can hold it around the Dagster run
it launches and the run's own ``Regularizer.run`` goes through. Operator one-order actions do not
take it: the order's row lock and the compare-and-set protect them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import select
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import sqlalchemy as sa

from regularization_pipeline.core.clock import utcnow
from regularization_pipeline.core.errors import BusyError, RunLockLostError

# The first key of PostgreSQL's two-key advisory lock: ours, whatever the second is.
_PG_LOCK_CLASS = 0x52504C4B  # "RPLK"
_UNKNOWN_HOLDER = "busy: another run holds this shop's run lock (it is starting or finishing)"

_guard = threading.Lock()
# lock identity -> (thread holding it, depth); the re-entrant part, and in-memory SQLite's lock.
_held: dict[str, tuple[int, int]] = {}
# lock identity -> the check that it is still held (set by the outermost holder).
_probes: dict[str, Callable[[], None]] = {}


def _never_lost() -> None:
    """An OS file lock or a lock in this process cannot be taken away while its holder lives."""


def lock_name(engine: sa.Engine, prefix: str) -> str:
    """What identifies this shop's lock: the database (without credentials) and our table prefix."""
    return f"{engine.url.render_as_string(hide_password=True)}#{prefix}"


def lock_key(engine: sa.Engine, prefix: str) -> str:
    """A short, credential-free key of :func:`lock_name`, to tag the runs that held the lock."""
    return hashlib.sha256(lock_name(engine, prefix).encode()).hexdigest()[:16]


@contextlib.contextmanager
def hold(engine: sa.Engine, prefix: str, run_id: str) -> Iterator[Callable[[], None]]:
    """Hold the shop's run lock for the block, or raise :class:`BusyError` at once.

    Yields a check to call before each order's decision: it raises :class:`RunLockLostError`
    when the lock's session is gone (a server's ``idle_session_timeout`` or ``wait_timeout``,
    a killed connection), asking the session: a round trip, which also keeps the session
    from idling out. Its ``between_orders`` (when it has one: :class:`_SessionProbe`) is the
    check a run makes before each of many small decisions, asking at least every
    :data:`ASK_EVERY_SECONDS`.
    """
    name = lock_name(engine, prefix)
    me = threading.get_ident()
    with _guard:
        holder = _held.get(name)
        if holder is not None and holder[0] == me:
            _held[name] = (me, holder[1] + 1)
            nested = True
        elif holder is not None:
            raise BusyError(_UNKNOWN_HOLDER if _in_memory(engine) else _busy_in_process())
        else:
            _held[name] = (me, 1)
            nested = False
    try:
        if nested or _in_memory(engine):
            yield _probes.get(name, _never_lost)
        else:
            with _backend_lock(engine, prefix, run_id) as probe:
                _probes[name] = probe
                yield probe
    finally:
        with _guard:
            depth = _held[name][1]
            if depth > 1:
                _held[name] = (me, depth - 1)
            else:
                del _held[name]
                _probes.pop(name, None)


def _busy_in_process() -> str:
    return "busy: another run in this process holds this shop's run lock"


def _in_memory(engine: sa.Engine) -> bool:
    return engine.dialect.name == "sqlite" and _sqlite_path(engine) is None


def _backend_lock(engine: sa.Engine, prefix: str, run_id: str):
    if engine.dialect.name == "postgresql":
        return _postgres_lock(engine, prefix, run_id)
    if engine.dialect.name in ("mysql", "mariadb"):
        return _mysql_lock(engine, prefix)
    if engine.dialect.name == "sqlite":
        return _file_locks(lock_files_of(engine, prefix), run_id)
    raise BusyError(f"no run lock for the {engine.dialect.name} backend")  # pragma: no cover


def _since(moment: dt.datetime | None) -> str:
    if moment is None:
        return "an unknown time"
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.replace(microsecond=0).isoformat() + "Z"


@contextlib.contextmanager
def _dedicated(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection of the lock's own, outside any transaction, closed (never pooled) afterwards.

    Autocommit: an idle-in-transaction session would hold a snapshot for the whole run. Closed,
    not returned to the pool: the session lock (and its name) go with the connection.
    """
    conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    try:
        yield conn
    finally:
        conn.invalidate()
        conn.close()


def _key(prefix: str) -> int:
    # A stable signed 32-bit key per table prefix: advisory locks are per database already.
    return int.from_bytes(hashlib.sha256(prefix.encode()).digest()[:4], "big", signed=True)


@contextlib.contextmanager
def _postgres_lock(engine: sa.Engine, prefix: str, run_id: str) -> Iterator[None]:
    with _dedicated(engine) as conn:
        key = {"c": _PG_LOCK_CLASS, "k": _key(prefix)}
        # Named before locking, so a contender that sees the lock also sees whose it is and
        # since when: a login without pg_read_all_stats sees other roles' application_name
        # but not their backend_start.
        conn.execute(
            sa.text("SELECT set_config('application_name', :n, false)"),
            {"n": _pg_holder_name(run_id)},
        )
        if not conn.execute(sa.text("SELECT pg_try_advisory_lock(:c, :k)"), key).scalar():
            holder = conn.execute(
                sa.text(
                    "SELECT a.application_name, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                    "AND l.granted AND l.classid = CAST(:c AS oid) "
                    "AND l.objid = CAST(CAST(:k AS bigint) & 4294967295 AS oid) "
                    "AND l.objsubid = 2 AND l.database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                key,
            ).first()
            if holder is None:
                raise BusyError(_UNKNOWN_HOLDER)
            name, started = _pg_holder(holder[0] or "")
            raise BusyError(f"busy: run {name} since {_since(started or holder[1])}")

        # A session-level advisory lock lives exactly as long as its session.
        probe = _SessionProbe(conn, "SELECT 1", {}, "the PostgreSQL session holding it was closed")
        yield probe  # released when the connection closes, whatever happens to the run


_PG_HOLDER_PREFIX = "regularization "


def _pg_holder_name(run_id: str) -> str:
    """``regularization <run id> <start, epoch seconds>``, within application_name's 63 bytes."""
    started = f" {int(utcnow().replace(tzinfo=dt.UTC).timestamp())}"
    return _PG_HOLDER_PREFIX + run_id[: 63 - len(_PG_HOLDER_PREFIX) - len(started)] + started


def _pg_holder(application_name: str) -> tuple[str, dt.datetime | None]:
    """(run id, start) read back from :func:`_pg_holder_name`'s text."""
    text = application_name.removeprefix(_PG_HOLDER_PREFIX)
    run_id, _, epoch = text.rpartition(" ")
    if run_id and epoch.isdigit():
        return run_id, dt.datetime.fromtimestamp(int(epoch), dt.UTC).replace(tzinfo=None)
    return text or "unknown", None


# How long a quiet lock session is trusted without a round trip. A session the server ends
# (a kill, idle_session_timeout, wait_timeout) says so on its socket at once, which the probe
# reads without asking; only a silent loss (a network cut) waits this long to be asked about.
# The round trip at this pace also keeps the session from idling out.
ASK_EVERY_SECONDS = 1.0


class _SessionProbe:
    """The check that the lock's session still holds it: called, it asks the session.

    Asking costs a round trip, in per-order mode as much as a sixth of what an order costs.
    :meth:`between_orders` asks only when the session's socket has something to read (a
    session the server ends sends an error, or closes, as it ends it), when there is no socket
    to watch (a driver that hides it), or when :data:`ASK_EVERY_SECONDS` passed since the
    last question. A kill the server is still carrying out may thus be seen one order late.
    """

    def __init__(self, conn: sa.Connection, query: str, params: dict, gone: str):
        self.conn, self.query, self.params, self.gone = conn, query, params, gone
        self._fd = _socket_fd(conn)
        self._asked = time.monotonic()

    def __call__(self) -> None:
        _probe(self.conn, self.query, self.params, self.gone)
        self._asked = time.monotonic()

    def between_orders(self) -> None:
        quiet = self._fd is not None and not _readable(self._fd)
        if not quiet or time.monotonic() - self._asked >= ASK_EVERY_SECONDS:
            self()


def _socket_fd(conn: sa.Connection) -> int | None:
    """The file descriptor of the connection's socket (psycopg2, PyMySQL), or None."""
    driver = conn.connection.dbapi_connection
    fileno = getattr(driver, "fileno", None) or getattr(
        getattr(driver, "_sock", None), "fileno", None
    )
    try:
        return fileno() if fileno is not None else None
    except (OSError, ValueError):
        return None


def _readable(fd: int) -> bool:
    """Whether the server sent something unasked (or the descriptor is gone): asked at once."""
    try:
        return bool(select.select([fd], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _probe(conn: sa.Connection, query: str, params: dict, gone: str) -> None:
    try:
        held = conn.execute(sa.text(query), params).scalar()
    except sa.exc.SQLAlchemyError:
        held = None
    if held != 1:
        raise RunLockLostError(
            f"run lock lost: {gone} (idle or killed); stopped before deciding another order"
        )


def _mysql_name(engine: sa.Engine, prefix: str) -> str:
    # GET_LOCK names are server-wide (every database) and at most 64 characters.
    name = f"{prefix}run:{engine.url.database}"
    return (
        name
        if len(name) <= 64
        else f"{prefix[:20]}run:{hashlib.sha256(name.encode()).hexdigest()[:32]}"
    )


@contextlib.contextmanager
def _mysql_lock(engine: sa.Engine, prefix: str) -> Iterator[None]:
    name = _mysql_name(engine, prefix)
    with _dedicated(engine) as conn:
        if conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() != 1:
            # MariaDB keeps no note beside a named lock: the holder's connection and how long it
            # has been idle (it sends nothing after GET_LOCK) are what can be told.
            row = conn.execute(
                sa.text(
                    "SELECT p.ID, p.TIME FROM information_schema.PROCESSLIST p "
                    "WHERE p.ID = IS_USED_LOCK(:n)"
                ),
                {"n": name},
            ).first()
            if row is None:
                raise BusyError(_UNKNOWN_HOLDER)
            since = utcnow() - dt.timedelta(seconds=int(row[1] or 0))
            raise BusyError(f"busy: run on database connection {row[0]} since {_since(since)}")

        probe = _SessionProbe(
            conn,
            "SELECT IS_USED_LOCK(:n) = CONNECTION_ID()",
            {"n": name},
            "the MariaDB/MySQL connection holding it was closed",
        )
        try:
            yield probe  # released when the connection closes, whatever happens to the run
        finally:
            # Released before the close as well: a server takes its time to notice a closed
            # connection, and the next run asking in that moment was told "busy".
            with contextlib.suppress(sa.exc.SQLAlchemyError):
                conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})


def _sqlite_path(engine: sa.Engine) -> str | None:
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return os.path.abspath(database.removeprefix("file:").split("?")[0])


def lock_files_of(engine: sa.Engine, prefix: str) -> list[str]:
    """Every file whose OS lock a SQLite run holds: the one beside the database and, when the
    file has several names (hard links, possibly in other directories), one named for its
    device and inode in this host's temporary directory, which every name shares."""
    real = os.path.realpath(_sqlite_path(engine))
    try:
        st = os.stat(real)
    except OSError:  # not created yet: nothing to decide in it, the path is all there is
        return [f"{real}.{prefix}run.lock"]
    name = f".{prefix}run-{st.st_dev:x}-{st.st_ino:x}.lock"
    beside = os.path.join(os.path.dirname(real), name)
    if st.st_nlink < 2:
        return [beside]
    return [beside, os.path.join(tempfile.gettempdir(), f"regularization{name}")]


@contextlib.contextmanager
def _file_locks(paths: list[str], run_id: str) -> Iterator[Callable[[], None]]:
    """All of ``paths`` locked, or BusyError having held none of them once it returns."""
    with contextlib.ExitStack() as stack:
        for path in paths:
            stack.enter_context(_file_lock(path, run_id))
        yield _never_lost


@contextlib.contextmanager
def _file_lock(path: str, run_id: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note = os.pread(fd, 200, 0).decode(errors="replace").split()
            raise BusyError(
                f"busy: run {note[0]} since {note[1]}" if len(note) == 2 else _UNKNOWN_HOLDER
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{run_id} {_since(utcnow())}\n".encode(), 0)
        try:
            yield _never_lost
        finally:
            os.ftruncate(fd, 0)  # the file stays: removing it would race a contender's open
    finally:
        os.close(fd)  # releases the flock; the OS does the same when the process dies
