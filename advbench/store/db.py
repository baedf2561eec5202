"""Open a store (any SQLAlchemy URL), migrate it, and read/write runs, cells, metrics and images.

Many ``advbench run`` processes may share one store (several identical runs on one machine, or
workers of a cluster writing to one PostgreSQL database), so every write is one transaction that
is safe against concurrent identical callers:

* rows with a natural key (a run's benchmark and config hash, a cell's run and content hash, an
  image set's cell hash) are written with the dialect's ``INSERT ... ON CONFLICT`` (SQLite >= 3.35,
  PostgreSQL >= 9.5); other dialects select, then insert, and retry the transaction when a
  concurrent writer wins the race (``IntegrityError``);
* a cell's metrics are replaced inside the transaction that upserts the cell, whose row lock
  (PostgreSQL) or database write lock (SQLite) orders concurrent replacements of one cell;
* SQLite write transactions start with ``BEGIN IMMEDIATE``: taking the write lock up front lets
  ``busy_timeout`` queue writers instead of failing a reader that later tries to write;
* migrations are serialised, by a file lock next to a SQLite file and by a PostgreSQL advisory
  lock held by the migrating transaction, with a lock-free fast path when already at head.

Each ``advbench run`` process is an *invocation* of its run (host, pid, heartbeat). A run is shown
``running`` only while one of its invocations is alive, and ``killed`` when it was left running
by processes that are all gone (the kernel's SIGKILL, a power cut, an out-of-memory kill).
"""

from __future__ import annotations

import os
import platform
import random
import socket
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import and_, case, create_engine, delete, event, insert, literal, not_, select, text, update
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from advbench import schema
from advbench.errors import StoreError
from advbench.redact import mask_passwords
from advbench.store.models import Cell, Image, ImageSet, Invocation, Metric, Run

DEFAULT_STORE = "results.db"
MIGRATIONS = Path(__file__).parent / "migrations"

#: An invocation on another host is taken for dead when its heartbeat is older than this.
STALE_AFTER = timedelta(minutes=10)
#: record_cell refreshes the heartbeat at most this often (seconds).
HEARTBEAT_EVERY = 10.0
#: PostgreSQL advisory-lock key that serialises migrations ("advbench" in ASCII).
MIGRATION_LOCK_KEY = 0x6164766265_6E6368
#: Rows per INSERT batch of record_images.
IMAGE_CHUNK = 10_000

# Columns of record_images (idx defaults to 0..N-1) and the cell's columns Store.images() puts
# beside each image row: the schema's (advbench.schema), written once there.
IMAGE_COLUMNS, REQUIRED_IMAGE_COLUMNS, IMAGE_CELL_COLUMNS = (
    schema.IMAGE_COLUMNS, schema.REQUIRED_IMAGE_COLUMNS, schema.IMAGE_CELL_COLUMNS)

_RUNS, _INVOCATIONS, _CELLS = Run.__table__, Invocation.__table__, Cell.__table__
_METRICS, _IMAGE_SETS, _IMAGES = Metric.__table__, ImageSet.__table__, Image.__table__
_RETRY_SQLSTATES = {"40001", "40P01"}  # PostgreSQL serialization failure, deadlock detected
_T = TypeVar("_T")


def resolve_url(store: str | None) -> str:
    """A URL as given (``sqlite:///x.db``, ``postgresql://...``) or a file path -> SQLite URL."""
    store = store or DEFAULT_STORE
    return store if "://" in store else f"sqlite:///{Path(store).expanduser()}"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _one_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = str(orig).strip().splitlines()
    return f"{type(orig).__name__}: {lines[0] if lines else ''}".rstrip(": ")


# --- opening ------------------------------------------------------------------------------

def _engine_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StoreError(f"store {mask_passwords(url)!r}: not a database URL; give a file such as results.db, "
                         "sqlite:///FILE or postgresql://USER@HOST/DATABASE") from None
    if parsed.drivername in ("postgresql", "postgres"):  # psycopg 3 is the driver the extra installs
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def _sqlite_file(url: URL, create: bool) -> Path | None:
    """The database file of a SQLite URL (None in memory), checked before SQLite sees it."""
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:") or database.startswith("file:"):
        return None
    path = Path(database).expanduser()
    if path.is_dir():
        raise StoreError(f"store {path}: is a directory; give a file such as {path / DEFAULT_STORE} or a database URL")
    if not create and not path.exists():
        raise StoreError(f"no results store at {path}; run 'advbench run CONFIG' first or pass --store")
    if not path.parent.is_dir():
        raise StoreError(f"store {path}: directory {path.parent} does not exist; create it or give another path")
    return path


def _switch_to_wal(cur, patience: float = 60.0) -> None:
    """Put the file in WAL mode (a report reads while a run writes), however many open it at once.

    The switch escalates a shared lock, and SQLite answers a busy escalation at once instead of
    calling the busy handler (its deadlock rule), so processes that open a new store together retry.
    """
    import sqlite3

    deadline = time.monotonic() + patience
    pause = 0.01
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() not in ("wal", "memory"):
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.5)


def _sqlite_events(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # the driver's implicit BEGIN off: _on_begin chooses the kind
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout=60000")  # first, so that the pragmas below wait too
        _switch_to_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across a crashed process
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection):
        immediate = conn.get_execution_options().get("advbench_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def _dispose_in_forked_children(engine: Engine) -> None:
    """A forked worker must not reuse the parent's pooled connections (SQLAlchemy's advice)."""
    ref = weakref.ref(engine)

    def _after_fork() -> None:
        if (e := ref()) is not None:
            e.dispose(close=False)

    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork)


def _alembic_config(connection: Connection | None = None):
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


_HEAD: list[str] = []


def head_revision() -> str:
    """The newest migration this advbench knows."""
    if not _HEAD:
        from alembic.script import ScriptDirectory

        _HEAD.append(ScriptDirectory.from_config(_alembic_config()).get_current_head())
    return _HEAD[0]


def current_revision(engine: Engine) -> str | None:
    """The store's migration revision (None for an empty database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine, lock_file: Path | None = None, *, name: str = "", lock_timeout: float = 600) -> None:
    """Bring the store to the newest schema; concurrent callers wait for the first one.

    Fast path: a store already at head is not locked at all (a read-only report stays read-only).
    """
    from alembic import command
    from alembic.util import CommandError

    head = head_revision()
    if current_revision(engine) == head:
        return
    dialect = engine.dialect.name
    if dialect == "sqlite" and lock_file is not None:
        from filelock import FileLock, Timeout

        lock = FileLock(str(lock_file), timeout=lock_timeout)
    else:
        lock, Timeout = nullcontext(), ()
    try:
        with lock, engine.connect() as conn:
            conn.execution_options(advbench_write=True)
            with conn.begin():
                if dialect == "postgresql":  # held to the end of this transaction, DDL included
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
                command.upgrade(_alembic_config(conn), "head")  # re-reads the revision: a no-op if beaten
    except Timeout:
        raise StoreError(f"store {name}: waited {lock_timeout:.0f} s for the migration lock {lock_file}; "
                         "is another advbench stuck? delete the lock file if no advbench is running") from None
    except CommandError as exc:
        raise StoreError(f"store {name}: cannot migrate its schema to revision {head} ({exc}); "
                         "it may have been written by a newer advbench: upgrade advbench") from None


# --- liveness of a process ----------------------------------------------------------------

def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in clock ticks after boot) of a Linux process, None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    return fields[0], fields[19]


def _process_start(pid: int) -> str:
    stat = _proc_stat(pid)
    return stat[1] if stat else ""


def pid_alive(pid: int, proc_start: str = "") -> bool:
    """Whether process ``pid`` of this host exists and (when known) is the one that started then."""
    if pid <= 0 or os.name == "nt":  # os.kill(pid, 0) would terminate a Windows process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    except OSError:
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    return state not in ("Z", "X") and (not proc_start or proc_start == start)


# --- the store ----------------------------------------------------------------------------

class Store:
    """One results store. ``url``: a SQLAlchemy URL (see :func:`resolve_url` for file paths)."""

    def __init__(self, url: str, *, create: bool = True):
        self.url = url
        parsed = _engine_url(url)
        self.dialect = parsed.get_backend_name()
        self._safe_url = parsed.render_as_string(hide_password=True)
        path = _sqlite_file(parsed, create)
        try:
            kwargs: dict[str, Any] = {} if self.dialect == "sqlite" else {"pool_pre_ping": True}
            self.engine = create_engine(parsed, **kwargs)
        except NoSuchModuleError:
            raise StoreError(f"store {self._safe_url}: unknown database dialect {parsed.drivername!r}; give a file "
                             "such as results.db, sqlite:///FILE or postgresql://USER@HOST/DATABASE") from None
        except ImportError as exc:
            if self.dialect == "postgresql":
                missing = exc.name or "psycopg"
                other = "" if missing == "psycopg" else " and write the URL as postgresql://... (psycopg 3)"
                raise StoreError(f"store {self._safe_url}: the PostgreSQL driver {missing} is not installed; "
                                 f'pip install -e ".[postgres]"{other}') from None
            raise StoreError(f"store {self._safe_url}: its database driver is not installed ({exc})") from None
        except (SQLAlchemyError, ValueError) as exc:
            raise StoreError(f"cannot open store {self._safe_url}: {_one_line(exc)}") from None
        if self.dialect == "sqlite":
            _sqlite_events(self.engine)
        try:
            migrate(self.engine, path.with_name(path.name + ".lock") if path else None, name=self._safe_url)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self._safe_url}: {_one_line(exc)}") from None
        _dispose_in_forked_children(self.engine)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        # ON CONFLICT ... RETURNING: PostgreSQL, and SQLite from 3.35 (older ones take the fallback)
        self._native_upsert = self.dialect == "postgresql" or (
            self.dialect == "sqlite" and self.engine.dialect.dbapi.sqlite_version_info >= (3, 35))
        self._host = socket.gethostname()[:200]
        #: The invocation (``invocations.id``) of this process's latest start_run, else None.
        self.invocation_id: int | None = None
        self._last_beat = 0.0

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    # --- transactions ---------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            conn.execution_options(advbench_write=True)  # SQLite: BEGIN IMMEDIATE
            with conn.begin():
                yield conn

    def _transact(self, work: Callable[[Connection], _T], what: str) -> _T:
        """Run ``work`` in one write transaction; retry it when a concurrent writer wins a race."""
        attempts = 6
        for attempt in range(attempts):
            try:
                with self._write() as conn:
                    return work(conn)
            except IntegrityError as exc:  # only the select-then-insert fallback can lose a race
                if self._native_upsert or attempt == attempts - 1:
                    raise StoreError(f"store {self._safe_url}: {what}: {_one_line(exc)}") from exc
            except DBAPIError as exc:
                orig = getattr(exc, "orig", None)
                code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)  # psycopg 3, psycopg2
                if code not in _RETRY_SQLSTATES or attempt == attempts - 1:
                    raise StoreError(f"store {self._safe_url}: {what}: {_one_line(exc)}") from exc
            time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
        raise AssertionError("unreachable")

    def _upsert(self, conn: Connection, table, key: dict[str, Any], values: dict[str, Any],
                merge: Mapping[str, Callable[[dict, Any], Any]] | None = None, keep: Iterable[str] = ()) -> int:
        """Insert the row of ``table`` with unique ``key`` or update it with ``values``; its id.
        On update, the columns in ``keep`` keep their stored value, and each column in ``merge``
        takes ``merge[column](new, old)``: a SQL expression of the new values (``new[name]``) and
        the stored row (``old.name``, the table's columns)."""
        merge, keep = merge or {}, set(keep)
        if self._native_upsert:
            if self.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            else:
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            stmt = dialect_insert(table).values(**key, **values)
            new = {k: stmt.excluded[k] for k in values}
            updates = {k: merge[k](new, table.c) if k in merge else new[k] for k in values if k not in keep}
            stmt = stmt.on_conflict_do_update(index_elements=list(key), set_=updates)
            return conn.execute(stmt.returning(table.c.id)).scalar_one()
        row_id = conn.execute(select(table.c.id).where(*(table.c[k] == v for k, v in key.items()))).scalar()
        if row_id is None:
            return conn.execute(insert(table).values(**key, **values)).inserted_primary_key[0]
        new = {k: literal(v, table.c[k].type) for k, v in values.items()}
        updates = {k: merge[k](new, table.c) if k in merge else v for k, v in values.items() if k not in keep}
        conn.execute(update(table).where(table.c.id == row_id).values(**updates))
        return row_id

    def _insert_new(self, conn: Connection, table, key: dict[str, Any], values: dict[str, Any]) -> int | None:
        """Insert the row with unique ``key`` unless it exists; its id, or None if it existed."""
        if self._native_upsert:
            if self.dialect == "postgresql":
                from sqlalchemy.dialects.postgresql import insert as dialect_insert
            else:
                from sqlalchemy.dialects.sqlite import insert as dialect_insert
            stmt = dialect_insert(table).values(**key, **values).on_conflict_do_nothing(index_elements=list(key))
            return conn.execute(stmt.returning(table.c.id)).scalar()
        if conn.execute(select(table.c.id).where(*(table.c[k] == v for k, v in key.items()))).first():
            return None
        return conn.execute(insert(table).values(**key, **values)).inserted_primary_key[0]

    # --- runs and their invocations -------------------------------------------------------

    def start_run(self, *, benchmark: str, config_hash: str, config_text: str, seed: int,
                  versions: dict[str, str]) -> int:
        """Create the run of (benchmark, config hash), or reopen it; record this process as an
        invocation of it (``self.invocation_id``). Marks invocations found dead as ``killed``."""
        self._mark_dead_invocations()
        now = _now()
        values = {
            "config_text": config_text, "seed": seed,
            "advbench_version": versions.get("advbench", "")[:40], "torch_version": versions.get("torch", "")[:40],
            "foolbox_version": versions.get("foolbox", "")[:40],
            "host": f"{socket.gethostname()} ({platform.platform()})"[:200],
            "started_at": now, "finished_at": None, "status": "running",
        }

        def work(conn: Connection) -> tuple[int, int]:
            # a rerun reopens the run: it keeps the time it was first started
            run_id = self._upsert(conn, _RUNS, {"benchmark": benchmark, "config_hash": config_hash}, values,
                                  keep=("started_at",))
            invocation = conn.execute(insert(_INVOCATIONS).values(
                run_id=run_id, host=self._host, pid=os.getpid(), proc_start=_process_start(os.getpid()),
                started_at=now, heartbeat_at=now, finished_at=None, status="running")).inserted_primary_key[0]
            return run_id, invocation

        run_id, self.invocation_id = self._transact(work, f"start run of {benchmark!r}")
        self._last_beat = time.monotonic()
        return run_id

    def heartbeat(self) -> None:
        """Say that this process is still at work on its run (one small UPDATE)."""
        if self.invocation_id is not None:
            self._transact(self._beat, "heartbeat")

    def _beat(self, conn: Connection) -> None:
        inv = _INVOCATIONS.c
        conn.execute(update(_INVOCATIONS).where(inv.id == self.invocation_id).values(heartbeat_at=_now()))
        # taken for dead by another host while a long cell ran: alive after all
        conn.execute(update(_INVOCATIONS).where(inv.id == self.invocation_id, inv.status == "killed")
                     .values(status="running", finished_at=None))
        self._last_beat = time.monotonic()

    def finish_run(self, run_id: int, status: str, keep: set[str] | None = None) -> None:
        """Close a run and this process's invocation of it; with ``keep``, drop the run's cells
        that the current plan no longer has."""
        now = _now()

        def work(conn: Connection) -> None:
            done = conn.execute(update(_RUNS).where(_RUNS.c.id == run_id).values(finished_at=now, status=status))
            if done.rowcount == 0:
                raise StoreError(f"no run with id {run_id} in {self._safe_url}")
            if self.invocation_id is not None:
                conn.execute(update(_INVOCATIONS)
                             .where(_INVOCATIONS.c.id == self.invocation_id, _INVOCATIONS.c.run_id == run_id)
                             .values(finished_at=now, heartbeat_at=now, status=status))
            if keep is not None:
                rows = conn.execute(select(_CELLS.c.id, _CELLS.c.key).where(_CELLS.c.run_id == run_id)).all()
                stale = [i for i, key in rows if key not in keep]
                for chunk in _chunks(stale, 500):
                    conn.execute(delete(_METRICS).where(_METRICS.c.cell_id.in_(chunk)))
                    conn.execute(delete(_CELLS).where(_CELLS.c.id.in_(chunk)))

        self._transact(work, f"finish run {run_id}")

    def _alive(self, inv, now: datetime) -> bool:
        """Whether an unfinished invocation's process is still at work."""
        if inv.finished_at is not None:
            return False
        if inv.host == self._host:
            return pid_alive(inv.pid, inv.proc_start)
        return now - inv.heartbeat_at <= STALE_AFTER

    def _mark_dead_invocations(self) -> None:
        inv = _INVOCATIONS.c
        now = _now()
        with self.engine.connect() as conn:  # read first: most calls find nothing to write
            open_ = conn.execute(select(inv.id, inv.host, inv.pid, inv.proc_start, inv.heartbeat_at, inv.finished_at)
                                 .where(inv.finished_at.is_(None)).order_by(inv.id)).all()
        dead = [row for row in open_ if not self._alive(row, now)]
        if not dead:
            return

        def work(conn: Connection) -> None:
            for row in dead:  # ascending ids: concurrent sweeps lock rows in one order
                conn.execute(update(_INVOCATIONS)
                             .where(inv.id == row.id, inv.finished_at.is_(None), inv.heartbeat_at == row.heartbeat_at)
                             .values(status="killed", finished_at=row.heartbeat_at))

        self._transact(work, "mark dead invocations")

    def _alive_runs(self, session: Session, run_ids: Iterable[int] | None = None) -> set[int]:
        q = select(Invocation).where(Invocation.finished_at.is_(None))
        if run_ids is not None:
            q = q.where(Invocation.run_id.in_(list(run_ids)))
        now = _now()
        return {inv.run_id for inv in session.scalars(q) if self._alive(inv, now)}

    @staticmethod
    def _shown(stored: str, alive: bool) -> str:
        if alive:
            return "running"
        return "killed" if stored == "running" else stored

    def run_status(self, run: Run | int) -> str:
        """The status to show: ``running`` while an invocation of the run is alive (same host:
        its process exists; another host: a heartbeat within STALE_AFTER), ``killed`` when the run
        was left running by processes that are all gone, else the stored ``ok``/``failed``."""
        run_id = run if isinstance(run, int) else run.id
        with self.session() as s:
            stored = s.scalar(select(Run.status).where(Run.id == run_id))
            if stored is None:
                raise StoreError(f"no run with id {run_id} in {self._safe_url}; see 'advbench report --runs'")
            return self._shown(stored, run_id in self._alive_runs(s, [run_id]))

    def invocations(self, run_id: int) -> list[Invocation]:
        """The processes that worked on a run, oldest first; an unfinished dead one shows ``killed``."""
        now = _now()
        with self.session() as s:
            rows = list(s.scalars(select(Invocation).where(Invocation.run_id == run_id).order_by(Invocation.id)))
        for inv in rows:  # detached: the derived status is never written back
            if inv.finished_at is None and not self._alive(inv, now):
                inv.status = "killed"
        return rows

    # --- cells and metrics ----------------------------------------------------------------

    def record_cell(self, run_id: int, cell, *, status: str, cached: bool = False, error: str = "",
                    seconds: float = 0.0, metrics: Iterable[tuple[str, str, float | None]] = ()) -> None:
        """Upsert a cell and replace its metrics, in one transaction.

        ``cell`` is an :class:`advbench.schema.Cell` (read by attribute: every stored field).
        """
        values = schema.cell_values(cell) | {"budget": _finite(cell.budget), "status": status, "cached": cached,
                                             "error": error, "seconds": seconds}
        unique = {(n, sub): _finite(v) for n, sub, v in metrics}

        def work(conn: Connection) -> None:
            cell_id = self._upsert(conn, _CELLS, {"run_id": run_id, "key": cell.key}, values, merge=_COMPUTED_STAYS)
            conn.execute(delete(_METRICS).where(_METRICS.c.cell_id == cell_id))
            if unique:
                conn.execute(insert(_METRICS), [{"cell_id": cell_id, "name": n, "subset": sub, "value": v}
                                                for (n, sub), v in unique.items()])
            if self.invocation_id is not None and time.monotonic() - self._last_beat >= HEARTBEAT_EVERY:
                self._beat(conn)

        self._transact(work, f"record cell {cell.key}")

    # --- per-image results ----------------------------------------------------------------

    def has_images(self, cell_key: str) -> bool:
        """Whether the per-image results of this cell content hash are stored."""
        with self.engine.connect() as conn:
            return conn.execute(select(_IMAGE_SETS.c.id).where(_IMAGE_SETS.c.cell_key == cell_key)).first() is not None

    def record_images(self, cell_key: str, columns: Mapping[str, Sequence]) -> bool:
        """Store the per-image results of a cell, once per cell content hash (any run).

        ``columns``: column name -> sequence (list or numpy array), all of one length N:
        source (str), origin (str: "clean" or the attack label), split (str), y (int, 1 =
        adversarial), truth (int), and optionally score (float; NaN/None -> NULL), decision (int
        or None), label (int or None), idx (distinct ints; default 0..N-1). All rows go in one
        transaction. Returns False, writing nothing, when the key is already stored.
        """
        if self.has_images(cell_key):
            return False
        data, n = _image_columns(cell_key, columns)
        names = list(data)

        def work(conn: Connection) -> bool:
            set_id = self._insert_new(conn, _IMAGE_SETS, {"cell_key": cell_key}, {"n": n, "created_at": _now()})
            if set_id is None:  # a concurrent writer stored it first
                return False
            raw = conn.connection.dbapi_connection
            if self.engine.dialect.driver == "psycopg":  # COPY: ~3x faster than executemany
                with raw.cursor() as cur, cur.copy(f"COPY images (set_id, {', '.join(names)}) FROM STDIN") as copy:
                    for values in zip(*(data[c] for c in names)):
                        copy.write_row((set_id, *values))
                return True
            for start in range(0, n, IMAGE_CHUNK):
                stop = min(start + IMAGE_CHUNK, n)
                rows = [dict(zip(names, values), set_id=set_id)
                        for values in zip(*(data[c][start:stop] for c in names))]
                conn.execute(insert(_IMAGES), rows)
            return True

        return self._transact(work, f"record images of cell {cell_key}")

    def images(self, run_id: int, stage: str | None = None) -> dict[str, list]:
        """Every image row of the run's cells (of one stage if given), beside its cell's columns.

        Column-oriented: ``{name: list}`` with the keys IMAGE_CELL_COLUMNS + IMAGE_COLUMNS in that
        order (cell_key, then the cell's schema columns: stage, dataset, model, imageset, entry, ...;
        then idx, source, origin, split, y, truth, score, decision, label, logit_0, logit_1), all
        lists of one length, rows ordered by cell then idx; cells without stored images are absent. ``pandas.DataFrame(store.images(run))`` or ``csv.writer`` over
        ``zip(*cols.values())`` take it as it is.
        """
        c, i = _CELLS.c, _IMAGES.c
        q = (select(c.key.label("cell_key"), *(c[name] for name in IMAGE_CELL_COLUMNS[1:]),
                    *(i[name] for name in IMAGE_COLUMNS))
             .select_from(_CELLS.join(_IMAGE_SETS, _IMAGE_SETS.c.cell_key == c.key)
                          .join(_IMAGES, i.set_id == _IMAGE_SETS.c.id))
             .where(c.run_id == run_id).order_by(c.id, i.idx))
        if stage:
            q = q.where(c.stage == stage)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        names = IMAGE_CELL_COLUMNS + IMAGE_COLUMNS
        if not rows:
            return {name: [] for name in names}
        return {name: list(values) for name, values in zip(names, zip(*rows))}

    # --- reads ----------------------------------------------------------------------------

    def runs(self, benchmark: str | None = None) -> list[Run]:
        """The runs, oldest first; each ``status`` is the shown one (see run_status)."""
        with self.session() as s:
            q = select(Run).order_by(Run.started_at, Run.id)
            if benchmark:
                q = q.where(Run.benchmark == benchmark)
            rows = list(s.scalars(q))
            alive = self._alive_runs(s) if rows else set()
        for run in rows:  # detached: the derived status is never written back
            run.status = self._shown(run.status, run.id in alive)
        return rows

    def latest_run(self, benchmark: str | None = None) -> Run:
        runs = self.runs(benchmark)
        if not runs:
            names = sorted({r.benchmark for r in self.runs()})
            what = f"benchmark {benchmark!r}" if benchmark else "any benchmark"
            raise StoreError(f"no run of {what} in {self._safe_url}; stored benchmarks: {', '.join(names) or '(none)'}")
        return runs[-1]

    def get_run(self, run_id: int) -> Run:
        """One run; its ``status`` is the shown one (see run_status)."""
        with self.session() as s:
            run = s.get(Run, run_id)
            alive = self._alive_runs(s, [run_id]) if run is not None else set()
        if run is None:
            raise StoreError(f"no run with id {run_id} in {self._safe_url}; see 'advbench report --runs'")
        run.status = self._shown(run.status, run_id in alive)
        return run

    def cells(self, run_id: int, stage: str | None = None) -> list[Cell]:
        with self.session() as s:
            q = select(Cell).where(Cell.run_id == run_id).order_by(Cell.id)
            if stage:
                q = q.where(Cell.stage == stage)
            cells = list(s.scalars(q))
            for c in cells:
                _ = c.metrics  # load before the session closes
            return cells


def _computed_before(new: dict, old) -> Any:
    """An invocation finds in the cache a cell that this run computed (ok, not cached): the
    invocation that computed it concurrently, or an earlier one of the run, did the work."""
    return and_(new["cached"], old.status == "ok", not_(old.cached))


#: record_cell's merge: ``cached`` and ``seconds`` of a cell stay those of the invocation of the
#: run that computed it, whichever invocation records last (concurrent runs, reruns)
_COMPUTED_STAYS: dict[str, Callable[[dict, Any], Any]] = {
    "cached": lambda new, old: and_(new["cached"], not_(_computed_before(new, old))),
    "seconds": lambda new, old: case((_computed_before(new, old), old.seconds), else_=new["seconds"]),
}


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _as_list(values: Sequence) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)  # numpy -> Python scalars


def _image_columns(cell_key: str, columns: Mapping[str, Sequence]) -> tuple[dict[str, list], int]:
    """Validate and convert record_images' columns to lists of Python values."""
    where = f"record_images({cell_key})"
    unknown = sorted(set(columns) - set(IMAGE_COLUMNS))
    if unknown:
        raise StoreError(f"{where}: unknown column {unknown[0]!r}; valid: {', '.join(IMAGE_COLUMNS)}")
    missing = [c for c in REQUIRED_IMAGE_COLUMNS if c not in columns]
    if missing:
        raise StoreError(f"{where}: missing column {missing[0]!r}; required: {', '.join(REQUIRED_IMAGE_COLUMNS)}")
    data = {name: _as_list(columns[name]) for name in IMAGE_COLUMNS if name in columns}
    lengths = {name: len(values) for name, values in data.items()}
    n = lengths["source"]
    if any(length != n for length in lengths.values()):
        raise StoreError(f"{where}: columns differ in length: {', '.join(f'{k}={v}' for k, v in lengths.items())}")
    try:
        data = {name: _converted(name, values) for name, values in data.items()}
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{where}: {exc}") from None
    data.setdefault("idx", list(range(n)))
    if len(set(data["idx"])) != n:
        raise StoreError(f"{where}: column 'idx' repeats a value; give distinct indices")
    return data, n


def _converted(name: str, values: list) -> list:
    """One per-image column as the store's Python values (its kind from the schema)."""
    kind = schema.column_kind(name)
    if kind == "text":
        return [str(x) for x in values]
    if kind == "float":
        return [_finite(x) for x in values]
    if name in REQUIRED_IMAGE_COLUMNS:
        return [int(x) for x in values]
    return [None if x is None else int(x) for x in values]


def open_store(store: str | None, *, create: bool = True) -> Store:
    return Store(resolve_url(store), create=create)
