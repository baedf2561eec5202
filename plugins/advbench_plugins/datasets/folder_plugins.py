"""Registers the on-disk datasets: an image-folder tree and the ILSVRC2012 validation layout."""

from __future__ import annotations

from pydantic import Field, model_serializer

from advbench.plugin import DatasetSpec, Params, hookimpl

from advbench_plugins.datasets.folders import ImageFolderSource, ImageNetValSource


class ImageFolderParams(Params):
    root: str = Field(description="Folder holding <class name>/<image> files.")
    limit_per_class: int | None = Field(None, ge=1, description="Read at most this many images per class.")
    skip_per_class: int = Field(0, ge=0, description="Pass over the first this many readable images of each class "
                                                     "(file-name order): with limit_per_class, a file range per class, "
                                                     "e.g. a reference set disjoint from the benchmarked images.")

    @model_serializer(mode="wrap")
    def _without_zero_skip(self, handler):
        # added later: left at 0 it stays out of the dump, so existing cache keys still hold
        data = handler(self)
        if data.get("skip_per_class") == 0:
            data.pop("skip_per_class")
        return data


class ImageNetValParams(Params):
    root: str = Field(description="Flat folder of ILSVRC2012_val_*.JPEG files.")
    labels_file: str = Field(description="Ground truth: one label per line, or '<file> <label>' lines.")
    class_index_file: str | None = Field(None, description="imagenet_class_index.json or one wnid per line.")
    label_base: int = Field(0, ge=0, le=1, description="Subtracted from integer labels (1 for 1-based IDs).")


def _folder(p: ImageFolderParams) -> ImageFolderSource:
    return ImageFolderSource(p.root, limit_per_class=p.limit_per_class, skip_per_class=p.skip_per_class)


def _imagenet(p: ImageNetValParams) -> ImageNetValSource:
    return ImageNetValSource(p.root, p.labels_file, p.class_index_file, label_base=p.label_base)


@hookimpl
def advbench_register_datasets(register):
    register(DatasetSpec(
        name="image-folder", summary="Images in <root>/<class>/<file>; class index = sorted folder order.",
        params=ImageFolderParams, load=lambda p, ctx: _folder(p),
        check=lambda p: _folder(p).check(), class_count=lambda p: len(_folder(p).class_names),
    ))
    register(DatasetSpec(
        name="imagenet-val", summary="ILSVRC2012 validation layout: flat folder + label file (+ class index).",
        params=ImageNetValParams, load=lambda p, ctx: _imagenet(p),
        check=_imagenet, class_count=lambda p: len(_imagenet(p).class_names),
    ))


