"""SQLAlchemy 2.x models of the results store.

``runs``     one row per (benchmark, config hash): re-running a config updates it in place.
``cells``    one row per cell of a run, keyed by the cell's content hash.
``metrics``  one row per metric value of a cell (``subset`` qualifies it: an attack, a split).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


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
    status: Mapped[str] = mapped_column(String(20))  # running, ok, failed
    cells: Mapped[list[Cell]] = relationship(back_populates="run", cascade="all, delete-orphan")


class Cell(Base):
    __tablename__ = "cells"
    __table_args__ = (UniqueConstraint("run_id", "key", name="uq_cells_run_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(20))
    dataset: Mapped[str] = mapped_column(String(200), default="")
    model: Mapped[str] = mapped_column(String(200), default="")
    attack: Mapped[str] = mapped_column(String(200), default="")
    transform: Mapped[str] = mapped_column(String(200), default="")
    feature: Mapped[str] = mapped_column(String(200), default="")
    detector: Mapped[str] = mapped_column(String(200), default="")
    corrector: Mapped[str] = mapped_column(String(200), default="")
    status: Mapped[str] = mapped_column(String(20))  # ok, failed, skipped
    cached: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
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
