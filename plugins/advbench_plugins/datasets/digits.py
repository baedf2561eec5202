"""scikit-learn's bundled handwritten digits, scaled up to RGB images: the embedded default.

The 1,797 8x8 digits ship with scikit-learn, so the default benchmark needs no network. They
are upscaled (bicubic) to ``size`` pixels so that JPEG, blur, rotation and scaling act on an
image of meaningful size. A fixed split (every 5th image and the next two, by index, are
"test"; 60/40) keeps the images the default model trains on out of the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from advbench.plugin import BuildContext, DatasetSpec, Params, Sample


class DigitsParams(Params):
    size: int = Field(32, ge=8, le=256, description="Side of the upscaled RGB image, in pixels.")
    subset: Literal["train", "test", "all"] = Field("test", description="Fixed 60/40 split by index.")


def digits_arrays(size: int, subset: str) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 images and (N,) labels of the chosen subset."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    index = np.arange(len(digits.target))
    test = (index % 5) >= 3
    keep = {"train": ~test, "test": test, "all": np.ones_like(test)}[subset]
    images = []
    for img in digits.images[keep]:
        gray = Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8), mode="L")
        images.append(np.asarray(gray.resize((size, size), Image.BICUBIC).convert("RGB")))
    return np.stack(images), digits.target[keep].astype(np.int64)


class DigitsSource:
    class_names = [str(d) for d in range(10)]
    skipped = 0

    def __init__(self, params: DigitsParams):
        self.params = params

    def __iter__(self) -> Iterator[Sample]:
        images, labels = digits_arrays(self.params.size, self.params.subset)
        for i, (image, label) in enumerate(zip(images, labels)):
            yield Sample(id=f"digits-{self.params.subset}-{i:04d}", image=Image.fromarray(image), label=int(label))


def load(params: DigitsParams, ctx: BuildContext) -> DigitsSource:
    return DigitsSource(params)


DIGITS = DatasetSpec(name="sklearn-digits", summary="scikit-learn's 8x8 digits upscaled to RGB (embedded, offline).",
                     params=DigitsParams, default=True, load=load, class_count=lambda p: len(DigitsSource.class_names))
