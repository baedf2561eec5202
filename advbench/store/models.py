"""SQLAlchemy 2.x models of the results store.

``runs``         one row per (benchmark, config hash): re-running a config updates it in place.
``invocations``  one row per ``advbench run`` process of a run (host, pid, heartbeat), so that a
                 run whose processes all died shows as ``killed`` rather than ``running`` forever.
``cells``        one row per cell of a run, keyed by the cell's content hash.
``metrics``      one row per metric value of a cell (``subset`` qualifies it: an attack, a split).
``image_sets``   one row per cell content hash that has per-image results (shared by every run
                 holding that cell); its insertion is the marker that the set is complete.
``images``       one row per image of a set: ``(set_id, idx)`` is the key.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
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
    budget: Mapped[float | None] = mapped_column(Float, nullable=True)  # the attack's budget (epsilon), if any
    threat: Mapped[str] = mapped_column(String(40), default="")  # threat model of the attack
    target: Mapped[str] = mapped_column(String(200), default="")
    holdout: Mapped[str] = mapped_column(String(200), default="")
    evaluation: Mapped[bool] = mapped_column(default=False)  # an attack made as an evaluation set
    norm: Mapped[str] = mapped_column(String(10), default="")  # the norm of the imageset's budget
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


class ImageSet(Base):
    __tablename__ = "image_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_key: Mapped[str] = mapped_column(String(64), unique=True)  # the cell's content hash
    n: Mapped[int] = mapped_column(Integer)  # number of image rows
    created_at: Mapped[datetime]


class Image(Base):
    __tablename__ = "images"

    set_id: Mapped[int] = mapped_column(ForeignKey("image_sets.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(Text)  # source image id (a path can be long)
    origin: Mapped[str] = mapped_column(String(200))  # "clean" or the attack label
    split: Mapped[str] = mapped_column(String(20))  # train, dev, eval
    y: Mapped[int] = mapped_column(Integer)  # 1 = adversarial
    truth: Mapped[int] = mapped_column(Integer)  # ground-truth label of the source image
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    decision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    label: Mapped[int | None] = mapped_column(Integer, nullable=True)  # e.g. a corrector's top-1
    logit_0: Mapped[float | None] = mapped_column(Float, nullable=True)  # a binary detector's logits
    logit_1: Mapped[float | None] = mapped_column(Float, nullable=True)  # (normal, adversarial): Fig. 2
