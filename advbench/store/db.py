"""Open a store (any SQLAlchemy URL), migrate it, and read/write runs, cells and metrics."""

from __future__ import annotations

import platform
import socket
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import create_engine, delete, event, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from advbench.errors import StoreError
from advbench.store.models import Cell, Metric, Run

DEFAULT_STORE = "results.db"
MIGRATIONS = Path(__file__).parent / "migrations"


def resolve_url(store: str | None) -> str:
    """A URL as given (``sqlite:///x.db``, ``postgresql://...``) or a file path -> SQLite URL."""
    store = store or DEFAULT_STORE
    return store if "://" in store else f"sqlite:///{Path(store).expanduser()}"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # WAL lets a report read while a run writes
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()


def migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class Store:
    def __init__(self, url: str, *, create: bool = True):
        self.url = url
        if url.startswith("sqlite:///") and not create:
            path = Path(url.removeprefix("sqlite:///"))
            if not path.exists():
                raise StoreError(f"no results store at {path}; run 'advbench run CONFIG' first or pass --store")
        try:
            self.engine = create_engine(url)
        except (SQLAlchemyError, ValueError, ImportError) as exc:
            raise StoreError(f"cannot open store {url!r}: {exc}") from None
        if self.engine.dialect.name == "sqlite":
            _sqlite_pragmas(self.engine)
        try:
            migrate(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {url!r}: {exc.__class__.__name__}: {exc.orig if hasattr(exc, 'orig') else exc}") from None
        self.session = sessionmaker(self.engine, expire_on_commit=False)

    # --- writes (each one transaction, idempotent) ----------------------------------------

    def start_run(self, *, benchmark: str, config_hash: str, config_text: str, seed: int, versions: dict[str, str]) -> int:
        with self.session.begin() as s:
            run = s.scalar(select(Run).where(Run.benchmark == benchmark, Run.config_hash == config_hash))
            if run is None:
                run = Run(benchmark=benchmark, config_hash=config_hash)
                s.add(run)
            run.config_text, run.seed = config_text, seed
            run.advbench_version = versions.get("advbench", "")
            run.torch_version = versions.get("torch", "")
            run.foolbox_version = versions.get("foolbox", "")
            run.host = f"{socket.gethostname()} ({platform.platform()})"[:200]
            run.started_at, run.finished_at, run.status = _now(), None, "running"
            s.flush()
            return run.id

    def finish_run(self, run_id: int, status: str, keep: set[str] | None = None) -> None:
        """Close a run; with ``keep``, drop its cells that the current plan no longer has."""
        with self.session.begin() as s:
            run = s.get(Run, run_id)
            run.finished_at, run.status = _now(), status
            if keep is not None:
                stale = [c.id for c in s.scalars(select(Cell).where(Cell.run_id == run_id)) if c.key not in keep]
                if stale:
                    s.execute(delete(Metric).where(Metric.cell_id.in_(stale)))
                    s.execute(delete(Cell).where(Cell.id.in_(stale)))

    def record_cell(self, run_id: int, cell, *, status: str, cached: bool = False, error: str = "",
                    seconds: float = 0.0, metrics: Iterable[tuple[str, str, float | None]] = ()) -> None:
        """Upsert a cell and replace its metrics, in one transaction."""
        with self.session.begin() as s:
            row = s.scalar(select(Cell).where(Cell.run_id == run_id, Cell.key == cell.key))
            if row is None:
                row = Cell(run_id=run_id, key=cell.key)
                s.add(row)
            row.stage, row.dataset, row.model = cell.stage, cell.dataset, cell.model
            row.attack, row.transform = cell.attack, cell.transform
            row.feature, row.detector, row.corrector = cell.feature, cell.detector, getattr(cell, "corrector", "")
            row.status, row.cached, row.error, row.seconds = status, cached, error, seconds
            if row.id is not None:  # replace: delete the old values before inserting the new
                s.execute(delete(Metric).where(Metric.cell_id == row.id))
            s.flush()
            unique = {(n, sub): v for n, sub, v in metrics}
            s.add_all(Metric(cell_id=row.id, name=n, subset=sub, value=_finite(v)) for (n, sub), v in unique.items())

    # --- reads ----------------------------------------------------------------------------

    def runs(self, benchmark: str | None = None) -> list[Run]:
        with self.session() as s:
            q = select(Run).order_by(Run.started_at)
            if benchmark:
                q = q.where(Run.benchmark == benchmark)
            return list(s.scalars(q))

    def latest_run(self, benchmark: str | None = None) -> Run:
        runs = self.runs(benchmark)
        if not runs:
            names = sorted({r.benchmark for r in self.runs()})
            what = f"benchmark {benchmark!r}" if benchmark else "any benchmark"
            raise StoreError(f"no run of {what} in {self.url}; stored benchmarks: {', '.join(names) or '(none)'}")
        return runs[-1]

    def get_run(self, run_id: int) -> Run:
        with self.session() as s:
            run = s.get(Run, run_id)
        if run is None:
            raise StoreError(f"no run with id {run_id} in {self.url}; see 'advbench report --runs'")
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


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def open_store(store: str | None, *, create: bool = True) -> Store:
    return Store(resolve_url(store), create=create)
