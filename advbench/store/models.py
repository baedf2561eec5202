"""SQLAlchemy 2.x models of the results store.

``runs``         one row per (benchmark, config hash): re-running a config updates it in place.
``invocations``  one row per ``advbench run`` process of a run (host, pid, heartbeat), so that a
                 run whose processes all died shows as ``killed`` rather than ``running`` forever.
``cells``        one row per cell of a run, keyed by the cell's content hash; its columns are the
                 fields of :class:`advbench.schema.Cell` (written once there).
``metrics``      one row per metric value of a cell (``subset`` qualifies it: an attack, a split).
``image_sets``   one row per cell content hash that has per-image results (shared by every run
                 holding that cell); its insertion is the marker that the set is complete.
``images``       one row per image of a set: ``(set_id, idx)`` is the key.
"""

from __future__ import annotations

from datetime import datetime

from dataclasses import fields

from sqlalchemy import Boolean, Column, Float, ForeignKey, Index, Integer, String, Table, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from advbench import schema


class Base(DeclarativeBase):
    pass


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (UniqueConstraint("benchmark", "config_hash", name="uq_runs_benchmark_config"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    benchmark: Mapped[str] = mapped_column(String(200), index=True)
    config_hash: Mapped[str] = mapped_column(String(64))
    config_text: Mapped[str] = mapped_column(Text)
    seed: Mapped[int] = mapped_column(Integer)
    advbench_version: Mapped[str] = mapped_column(String(40))
    torch_version: Mapped[str] = mapped_column(String(40))
    foolbox_version: Mapped[str] = mapped_column(String(40))
    host: Mapped[str] = mapped_column(String(200))
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # Stored: running, ok, failed. Store.runs()/get_run() hand back the *shown* status, which is
    # ``killed`` for a run left ``running`` by processes that are all gone (see Store.run_status).
    status: Mapped[str] = mapped_column(String(20))
    cells: Mapped[list[Cell]] = relationship(back_populates="run", cascade="all, delete-orphan")
    invocations: Mapped[list[Invocation]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Invocation(Base):
    __tablename__ = "invocations"
    __table_args__ = (Index("ix_invocations_open", "finished_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(200))  # socket.gethostname()
    pid: Mapped[int] = mapped_column(Integer)
    # The process's start time as the kernel counts it (Linux /proc/PID/stat), so that a pid
    # reused by another process is not taken for the run; "" where unknown.
    proc_start: Mapped[str] = mapped_column(String(40), default="")
    started_at: Mapped[datetime]
    heartbeat_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(20))  # running, ok, failed, killed
    run: Mapped[Run] = relationship(back_populates="invocations")


def _schema_column(f) -> Column:
    """A store column of a :mod:`advbench.schema` field, as its metadata declares it."""
    kind = f.metadata["store"]
    if kind == "text":
        return Column(f.name, String(f.metadata["length"]) if f.metadata["length"] else Text, nullable=False, default="")
    if kind == "float":
        return Column(f.name, Float, nullable=True)
    if kind == "bool":
        return Column(f.name, Boolean, nullable=False, default=False)
    return Column(f.name, Integer, nullable=f.default is None)


class Cell(Base):
    """A cell of a run: its schema columns (:class:`advbench.schema.Cell`, every stored field in
    order), then its outcome."""

    __table__ = Table(
        "cells", Base.metadata,
        Column("id", Integer, primary_key=True),
        Column("run_id", ForeignKey("runs.id", ondelete="CASCADE"), nullable=False, index=True),
        *(_schema_column(f) for f in fields(schema.Cell) if f.metadata["store"]),
        Column("status", String(20), nullable=False),  # ok, failed, skipped
        Column("cached", Boolean, nullable=False, default=False),
        Column("error", Text, nullable=False, default=""),
        Column("seconds", Float, nullable=False, default=0.0),
        UniqueConstraint("run_id", "key", name="uq_cells_run_key"),
    )
    run: Mapped[Run] = relationship(back_populates="cells")
    metrics: Mapped[list[Metric]] = relationship(back_populates="cell", cascade="all, delete-orphan")


class Metric(Base):
    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("cell_id", "name", "subset", name="uq_metrics_cell_name_subset"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("cells.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    subset: Mapped[str] = mapped_column(String(200), default="")
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    cell: Mapped[Cell] = relationship(back_populates="metrics")


class ImageSet(Base):
    __tablename__ = "image_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_key: Mapped[str] = mapped_column(String(64), unique=True)  # the cell's content hash
    n: Mapped[int] = mapped_column(Integer)  # number of image rows
    created_at: Mapped[datetime]


class Image(Base):
    """One per-image row of a set: ``(set_id, idx)`` is the key; the columns are
    :class:`advbench.schema.ImageRow`'s."""

    __table__ = Table(
        "images", Base.metadata,
        Column("set_id", ForeignKey("image_sets.id", ondelete="CASCADE"), primary_key=True),
        *(Column(f.name, Integer, primary_key=True) if f.name == "idx" else _schema_column(f)
          for f in fields(schema.ImageRow)),
    )
