"""The adversarial image sets (paper §2): clean selection, attacks with save/re-verify, split.

Named for what it makes; the results store is :mod:`advbench.store`."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advbench.errors import DataError, PluginError
from advbench.criteria import PaperCriterion, target_labels
from advbench.imaging import jpeg_roundtrip, load_image, pil_to_array, save_image, to_tensor, to_uint8
from advbench.specs import AttackOutput, AttackSpec, BuildContext, ImageSource, LoadedModel


@torch.no_grad()
def logits_of(model: LoadedModel, batch: np.ndarray, device: str) -> torch.Tensor:
    return model.module(to_tensor(batch, device))


def _prepared_batches(source: ImageSource, model: LoadedModel, batch_size: int) -> Iterator[tuple[list, np.ndarray, np.ndarray]]:
    ids, images, labels = [], [], []
    for sample in source:
        ids.append(sample.id)
        images.append(pil_to_array(model.prepare(sample.image)))
        labels.append(sample.label)
        if len(ids) == batch_size:
            yield ids, np.stack(images), np.asarray(labels)
            ids, images, labels = [], [], []
    if ids:
        yield ids, np.stack(images), np.asarray(labels)


def select_clean(source: ImageSource, model: LoadedModel, *, top_k: int, n: int, seed: int,
                 device: str, batch_size: int = 64) -> tuple[dict[str, Any], dict[str, float]]:
    """Classify every image, keep those whose ground truth is in the top-k, pick ``n`` seeded.

    Two passes over the source so that memory holds only the picked images, never the dataset.
    """
    correct: list[bool] = []
    top1_seen: list[int] = []  # kept from this pass so the second pass needs no model
    for _, batch, labels in _prepared_batches(source, model, batch_size):
        topk = logits_of(model, batch, device).topk(min(top_k, model.num_classes), dim=1).indices.cpu()
        correct.extend((topk == torch.from_numpy(labels).view(-1, 1)).any(dim=1).tolist())
        top1_seen.extend(topk[:, 0].tolist())
    candidates = np.flatnonzero(correct)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(candidates, size=min(n, len(candidates)), replace=False))
    wanted = set(picked.tolist())
    ids, images, labels, top1 = [], [], [], []
    position = 0
    for batch_ids, batch, batch_labels in _prepared_batches(source, model, batch_size):
        keep = [i for i in range(len(batch_ids)) if position + i in wanted]
        if keep:
            ids += [batch_ids[i] for i in keep]
            images.append(batch[keep])
            labels.append(batch_labels[keep])
            top1.append(np.asarray([top1_seen[position + i] for i in keep], dtype=np.int64))
        position += len(batch_ids)
    h, w = model.input_size
    arrays = {
        "images": np.concatenate(images) if images else np.zeros((0, h, w, 3), np.uint8),
        "labels": np.concatenate(labels) if labels else np.zeros(0, np.int64),
        "top1": np.concatenate(top1) if top1 else np.zeros(0, np.int64),
        "ids": np.asarray(ids, dtype=str),
    }
    metrics = {"seen": len(correct), "correct_topk": len(candidates), "selected": len(ids),
               "skipped_files": getattr(source, "skipped", 0)}
    return arrays, metrics


def images_of(output: Any, per_image: dict[str, list[float]]) -> torch.Tensor:
    """The images of an attack's output (a tensor or an :class:`AttackOutput`), its per-image
    values appended to ``per_image`` by name."""
    if isinstance(output, AttackOutput):
        for name, values in output.per_image.items():
            per_image.setdefault(name, []).extend(torch.as_tensor(values).detach().cpu().double().reshape(-1).tolist())
        return output.images
    return output


def stored(images: np.ndarray, fmt: str, quality: int) -> np.ndarray:
    """uint8 images (N, H, W, 3) after the database's save -> reload (the bytes ``save_image``
    writes and ``load_image`` reads back): a JPEG round trip at ``quality``; PNG is lossless on
    8-bit images. What fair storage does to normal images."""
    if fmt != "jpeg" or not len(images):
        return np.asarray(images)
    return np.stack([jpeg_roundtrip(a, quality) for a in images])


NORMS = ("l0", "l1", "l2", "linf")


def perturbation_norms(clean: np.ndarray, adv: np.ndarray) -> dict[str, np.ndarray]:
    """L0 (changed values), L1, L2, L∞ of ``adv - clean`` per image, in [0, 1] pixel units."""
    diff = (adv.astype(np.float32) - clean.astype(np.float32)).reshape(len(clean), -1) / 255.0
    return {
        "l0": (diff != 0).sum(1).astype(np.float64),
        "l1": np.abs(diff).sum(1),
        "l2": np.sqrt((diff**2).sum(1)),
        "linf": np.abs(diff).max(1) if diff.size else np.zeros(len(clean)),
    }


def run_attack(spec: AttackSpec, params: Any, model: LoadedModel, clean: dict[str, np.ndarray], *,
               out_dir: Path, top_k: int, shift: int, threshold: float, fmt: str, quality: int,
               batch_size: int, seed: int, ctx: BuildContext) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Attack every clean image, save successes to files, reload and keep what still succeeds."""
    return run_attack_budgets(spec, [params], None, model, clean, out_dirs=[out_dir], top_k=top_k, shift=shift,
                              threshold=threshold, fmt=fmt, quality=quality, batch_size=batch_size, seed=seed,
                              ctx=ctx)[0]


def run_attack_budgets(spec: AttackSpec, params: Sequence[Any], budgets: Sequence[float] | None, model: LoadedModel,
                       clean: dict[str, np.ndarray], *, out_dirs: Sequence[Path], top_k: int, shift: int,
                       threshold: float, fmt: str, quality: int, batch_size: int, seed: int,
                       ctx: BuildContext) -> list[tuple[dict[str, np.ndarray], dict[str, float]]]:
    """:func:`run_attack` under each budget of a grid (``budgets`` ascending, ``params[i]`` the
    entry's parameters at ``budgets[i]``, written to ``out_dirs[i]``): per batch the attack is
    called once with every budget (``AttackSpec.run_budgets``), or, for an attack without it,
    once per budget from the same random state; each budget's images are saved and re-verified
    as its own set. ``budgets=None``: one set, ``params[0]``, by ``AttackSpec.run``."""
    if spec.targeted and shift % model.num_classes == 0:
        raise DataError(f"database.target_shift = {shift} is a multiple of the {model.num_classes} classes, so every "
                        f"target would equal the top-1 label; choose a shift in 1..{model.num_classes - 1}")
    device = ctx.device
    top1_all = torch.from_numpy(clean["top1"]).long()
    targets_all = target_labels(top1_all, shift, model.num_classes) if spec.targeted else None
    sets = [_AttackedSet(spec.name, out_dir, model, device, fmt, quality) for out_dir in out_dirs]
    for start in range(0, len(top1_all), batch_size):
        index = slice(start, start + batch_size)
        batch = clean["images"][index]
        criterion = PaperCriterion(spec.targeted, top1_all[index].to(device),
                                   None if targets_all is None else targets_all[index].to(device),
                                   k=top_k, threshold=threshold)
        # each batch draws its own random numbers (a plugin seeding a generator from ctx.seed too)
        batch_ctx = dataclasses.replace(ctx, seed=seed + start)
        t0 = time.perf_counter()
        results = _attacked(spec, params, budgets, model, to_tensor(batch, device), criterion, batch_ctx)
        seconds = (time.perf_counter() - t0) / len(sets)  # a call for every budget: its time shared alike
        for attacked, adversarial in zip(sets, results):
            attacked.add(start, batch, adversarial, criterion, clean, top1_all, targets_all, seconds)
    return [attacked.finish(len(top1_all)) for attacked in sets]


def _attacked(spec: AttackSpec, params: Sequence[Any], budgets: Sequence[float] | None, model: LoadedModel,
              images: torch.Tensor, criterion: PaperCriterion, ctx: BuildContext) -> list[Any]:
    """The attack's candidates for one batch: one result per budget (one result without a grid).
    The global random state is the same before every call: seeded from ``ctx.seed``."""
    if budgets is not None and spec.run_budgets is not None:
        torch.manual_seed(ctx.seed)
        results = list(spec.run_budgets(model.module, images, criterion, params[0], list(budgets), ctx))
        if len(results) != len(budgets):
            raise PluginError(f"attack {spec.name!r}: run_budgets returned {len(results)} results for "
                              f"{len(budgets)} budgets")
        return results
    results = []
    for p in params:
        torch.manual_seed(ctx.seed)
        results.append(spec.run(model.module, images, criterion, p, ctx))
    return results


class _AttackedSet:
    """One image set in the making: the candidates of each batch made uint8, saved to file,
    reloaded and re-checked; the manifest, kept images and metrics."""

    def __init__(self, attack: str, out_dir: Path, model: LoadedModel, device: str, fmt: str, quality: int):
        self.attack, self.out_dir, self.model, self.device = attack, out_dir, model, device
        self.fmt, self.quality = fmt, quality
        self.images_dir = out_dir / "images"
        self.images_dir.mkdir()
        self.kept_images: list[np.ndarray] = []
        self.kept_source: list[np.ndarray] = []
        self.manifest: list[dict[str, Any]] = []
        self.per_image: dict[str, list[float]] = {}  # e.g. queries of a black-box attack, per attacked image
        self.attack_seconds = 0.0

    def add(self, start: int, batch: np.ndarray, adversarial: Any, criterion: PaperCriterion,
            clean: dict[str, np.ndarray], top1_all: torch.Tensor, targets_all: torch.Tensor | None,
            seconds: float) -> None:
        model, device, fmt = self.model, self.device, self.fmt
        self.attack_seconds += seconds
        adversarial = images_of(adversarial, self.per_image)
        # a row a plugin left non-finite counts as a failed attempt, not as a crash
        finite = torch.isfinite(adversarial).flatten(1).all(1).view(-1, 1, 1, 1)
        adv_uint8 = to_uint8(torch.where(finite, adversarial, to_tensor(batch, device)))
        before = criterion(logits_of(model, adv_uint8, device)).cpu().numpy()
        reloaded = np.stack([
            load_image(save_image(a, self.images_dir / f"{start + i:06d}", fmt, self.quality)) if ok else a
            for i, (a, ok) in enumerate(zip(adv_uint8, before))
        ])
        after = criterion(logits_of(model, reloaded, device)).cpu().numpy() & before
        # the saved file is the database; the pre-save norms are what the attack itself spent
        # (a JPEG q100 round trip alone changes most values by a little, which inflates L0)
        norms = perturbation_norms(batch, reloaded)
        pre_save = perturbation_norms(batch, adv_uint8)
        for i in range(len(batch)):
            self.manifest.append({
                "index": start + i, "source": str(clean["ids"][start + i]), "label": int(clean["labels"][start + i]),
                "top1": int(top1_all[start + i]),
                "target": None if targets_all is None else int(targets_all[start + i]),
                "success_before_save": bool(before[i]), "success_after_save": bool(after[i]),
                "file": f"images/{start + i:06d}.{'jpg' if fmt == 'jpeg' else 'png'}" if before[i] else None,
                **({k: float(v[i]) for k, v in norms.items()} if after[i] else {}),
                **({f"pre_save_{k}": float(v[i]) for k, v in pre_save.items()} if after[i] else {}),
            })
            if before[i] and not after[i]:
                (self.images_dir / self.manifest[-1]["file"].split("/")[1]).unlink(missing_ok=True)
                self.manifest[-1]["file"] = None
        self.kept_images.append(reloaded[after])
        self.kept_source.append(np.flatnonzero(after) + start)

    def finish(self, n: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        manifest, per_image = self.manifest, self.per_image
        for name, values in per_image.items():
            if len(values) != len(manifest):
                raise DataError(f"attack {self.attack!r} returned {len(values)} values of {name!r} for "
                                f"{len(manifest)} images")
            for row, value in zip(manifest, values):
                row[name] = value
        (self.out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
        h, w = self.model.input_size
        arrays = {
            "images": np.concatenate(self.kept_images) if self.kept_images else np.zeros((0, h, w, 3), np.uint8),
            "source": np.concatenate(self.kept_source) if self.kept_source else np.zeros(0, np.int64),
        }
        kept = [m for m in manifest if m["success_after_save"]]
        seconds = self.attack_seconds
        metrics = {
            "attempted": n,
            "success_before_save": sum(m["success_before_save"] for m in manifest),
            "success": len(kept),
            "attack_seconds": seconds,
            "images_per_second": n / seconds if seconds > 0 else float("nan"),
            **{f"mean_{k}": float(np.mean([m[k] for m in kept])) if kept else float("nan")
               for k in (*NORMS, *(f"pre_save_{n}" for n in NORMS))},
        }
        for name, values in per_image.items():  # over every attacked image, successful or not
            metrics |= {f"mean_{name}": float(np.mean(values)), f"median_{name}": float(np.median(values)),
                        f"max_{name}": float(np.max(values))} if values else {}
        return arrays, metrics


SPLITS = ("train", "dev", "eval")
_GOLDEN = 0.6180339887498949


def split_sources(n_sources: int, successes: dict[str, np.ndarray], shares: tuple[float, float, float],
                  seed: int) -> np.ndarray:
    """Assign each source image (and so all its adversarial versions) to one split.

    Sources are grouped by which attacks succeeded on them and shuffled within the group;
    walking the groups with a low-discrepancy sequence gives each group (hence each attack)
    the split shares as closely as its size allows.
    """
    rng = np.random.default_rng(seed)
    signatures = [tuple(bool(successes[a][i]) for a in sorted(successes)) for i in range(n_sources)]
    order: list[int] = []
    for sig in sorted(set(signatures)):
        members = [i for i, s in enumerate(signatures) if s == sig]
        order.extend(rng.permutation(members).tolist())
    bounds = np.cumsum(shares)
    split = np.zeros(n_sources, dtype=np.int8)
    offset = rng.random()
    for j, source in enumerate(order):
        u = (offset + j * _GOLDEN) % 1.0
        split[source] = int(np.searchsorted(bounds, u, side="right"))
    return np.minimum(split, len(shares) - 1)
