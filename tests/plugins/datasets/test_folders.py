"""Image-folder and ImageNet-val sources: ordering, labels, skipping broken files, RGB conversion."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from advbench.errors import DataError
from advbench.specs import Sample
from advbench_plugins.datasets.folders import ImageFolderSource, ImageNetValSource, open_rgb


def _jpeg_bytes(color: tuple[int, int, int] = (200, 30, 40), size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, "JPEG")
    return buf.getvalue()


# --- open_rgb ------------------------------------------------------------------------------


def test_open_rgb_converts_modes(tmp_path: Path) -> None:
    def save(name: str, img: Image.Image, **kw: object) -> Path:
        img.save(tmp_path / name, **kw)
        return tmp_path / name

    gray = save("gray.png", Image.new("L", (4, 4), 100))
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent -> white
    rgba = save("rgba.png", rgba)
    cmyk = save("cmyk.jpg", Image.new("CMYK", (4, 4), (0, 0, 0, 0)), quality=100)
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    plain_p = save("pal.png", pal)
    trans_p = save("pal_t.png", pal, transparency=0)  # index 0 transparent -> white
    gif = save("pal.gif", pal, transparency=0)
    i16 = save("i16.png", Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)))
    assert Image.open(i16).mode.startswith("I")

    def px(p: Path, xy: tuple[int, int] = (1, 1)) -> tuple[int, ...]:
        img = open_rgb(p)
        assert img is not None and img.mode == "RGB" and img.size == (4, 4)
        return img.getpixel(xy)

    assert px(gray) == (100, 100, 100)
    assert px(rgba) == (255, 0, 0) and px(rgba, (0, 0)) == (255, 255, 255)
    assert px(cmyk) == (255, 255, 255)
    assert px(plain_p) == (0, 255, 0) and px(plain_p, (0, 0)) == (0, 0, 0)
    assert px(trans_p) == (0, 255, 0) and px(trans_p, (0, 0)) == (255, 255, 255)
    assert px(gif, (0, 0)) == (255, 255, 255)
    assert px(i16) == (255, 255, 255)  # scaled, not clipped: 65535 -> 255
    half = save("i16_half.png", Image.fromarray(np.full((4, 4), 257 * 128, dtype=np.uint16)))
    assert px(half) == (128, 128, 128)


def test_open_rgb_rejects_broken_files(tmp_path: Path) -> None:
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, I am not a JPEG")
    (tmp_path / "cut.jpg").write_bytes(_jpeg_bytes(size=64)[:-200])
    for name in ("empty.jpg", "text.jpg", "cut.jpg"):
        with pytest.warns(UserWarning, match=f"{name}"):
            assert open_rgb(tmp_path / name) is None


# --- ImageFolderSource ---------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "imgs"
    for cls in ("dog", "cat", "bird"):
        (root / cls).mkdir(parents=True)
    (root / ".hidden").mkdir()  # ignored: not a class
    (root / "cat" / "b.jpg").write_bytes(_jpeg_bytes())
    (root / "cat" / "a.jpg").write_bytes(_jpeg_bytes())
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "cat" / "notes.txt").write_text("not an image, ignored by extension")
    Image.new("L", (8, 8), 7).save(root / "dog" / "gray.png")
    Image.new("RGBA", (8, 8), (0, 0, 255, 128)).save(root / "dog" / "rgba.PNG")
    Image.new("CMYK", (8, 8)).save(root / "dog" / "cmyk.jpg")
    Image.new("P", (8, 8)).save(root / "bird" / "pal.gif")
    (root / "bird" / "cut.jpg").write_bytes(_jpeg_bytes(size=64)[:-200])
    (root / "bird" / "fake.jpg").write_text("plain text")
    return root


def test_image_folder_order_labels_and_skips(folder: Path) -> None:
    src = ImageFolderSource(folder)
    assert src.class_names == ["bird", "cat", "dog"]
    with pytest.warns(UserWarning) as record:
        samples = list(src)
    assert all(isinstance(s, Sample) and s.image.mode == "RGB" for s in samples)
    assert [(s.id, s.label) for s in samples] == [
        ("bird/pal.gif", 0),
        ("cat/a.jpg", 1),
        ("cat/b.jpg", 1),
        ("dog/cmyk.jpg", 2),
        ("dog/gray.png", 2),
        ("dog/rgba.PNG", 2),
    ]
    assert src.skipped == 3
    # one line for the pass, not one per file: how many, and the first with its reason
    assert [str(w.message) for w in record] == [
        f"image folder {folder}: skipped 3 unreadable files (first: {folder / 'bird' / 'cut.jpg'}: unreadable image "
        f"({_decode_error(folder / 'bird' / 'cut.jpg')}))"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second pass (the clean selection makes two) says it no more
        assert [s.id for s in src] == [s.id for s in samples]  # deterministic, count restarts
    assert src.skipped == 3


def _decode_error(path: Path) -> str:
    from advbench_plugins.datasets.folders import _decode

    return _decode(path)


def test_a_folder_with_a_hundred_bad_files_is_one_warning(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "good.png").write_bytes(b"")
    Image.new("RGB", (4, 4)).save(root / "a" / "good.png")
    for i in range(100):
        (root / "a" / f"bad{i:03d}.jpg").write_text("junk")
    with pytest.warns(UserWarning) as record:
        assert [s.id for s in ImageFolderSource(root)] == ["a/good.png"]
    assert len(record) == 1 and "skipped 100 unreadable files (first: " in str(record[0].message)


def test_the_check_finds_a_readable_image_or_says_why(folder: Path, tmp_path: Path) -> None:
    ImageFolderSource(folder).check()  # stops at the first readable image
    junk = tmp_path / "junk" / "cat"
    junk.mkdir(parents=True)
    (junk / "a.jpg").write_text("junk")
    with pytest.raises(DataError, match="holds no readable image: all 1 files were skipped"):
        ImageFolderSource(junk.parent).check()


def test_image_folder_limit_counts_readable_images(folder: Path) -> None:
    src = ImageFolderSource(folder, limit_per_class=1, extensions=(".jpg", ".gif"))
    with pytest.warns(UserWarning):
        ids = [s.id for s in src]
    assert ids == ["bird/pal.gif", "cat/a.jpg", "dog/cmyk.jpg"]


def test_image_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found: .*nowhere"):
        ImageFolderSource(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no class sub-folders"):
        ImageFolderSource(tmp_path)


def test_image_folder_without_a_readable_image_says_why_in_one_line(tmp_path: Path) -> None:
    """A pass that reads nothing is the folder's fault, said where the folder is known: its
    path, how many files were skipped and the first with its reason (not a later, vaguer
    error about selected images or images_per_model)."""
    root = tmp_path / "junk"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        (root / cls / "a.jpg").write_bytes(b"\x00garbage" * 10)
        (root / cls / "b.png").write_text("plain text")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error says it all: no warning beside it
        with pytest.raises(DataError) as err:
            list(ImageFolderSource(root))
    msg = str(err.value)
    assert "\n" not in msg and f"image folder {root} holds no readable image: all 4 files were skipped" in msg
    assert f"first: {root / 'cat' / 'a.jpg'}: unreadable image (cannot identify image file" in msg
    for f in root.rglob("*.*"):
        f.unlink()
    (root / "cat" / "notes.txt").write_text("not an image, ignored by extension")
    with pytest.raises(DataError, match=f"image folder {root} holds no image file \\(looked for .jpg, .jpeg"):
        list(ImageFolderSource(root))


# --- ImageNetValSource ---------------------------------------------------------------------


@pytest.fixture
def val(tmp_path: Path) -> Path:
    root = tmp_path / "val"
    root.mkdir()
    for i in (1, 2, 3, 5):
        (root / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(_jpeg_bytes())
    Image.new("L", (8, 8)).save(root / "ILSVRC2012_val_00000004.JPEG", "JPEG")
    (root / "ILSVRC2012_val_00000003.JPEG").write_bytes(b"")  # zero-size: skipped
    return root


def test_imagenet_val_one_column(val: Path, tmp_path: Path) -> None:
    labels = tmp_path / "gt.txt"
    labels.write_text("3\n1\n2\n1\n")  # 1-based IDs; no label for image 5
    src = ImageNetValSource(val, labels, label_base=1)
    assert len(src.class_names) == 1000
    with pytest.warns(UserWarning) as record:
        got = [(s.id, s.label, s.image.mode) for s in src]
    assert got == [
        ("ILSVRC2012_val_00000001.JPEG", 2, "RGB"),
        ("ILSVRC2012_val_00000002.JPEG", 0, "RGB"),
        ("ILSVRC2012_val_00000004.JPEG", 0, "RGB"),
    ]
    assert src.skipped == 2
    assert [str(w.message) for w in record] == [
        f"ImageNet validation folder {val}: skipped 2 unreadable files (first: {val / 'ILSVRC2012_val_00000003.JPEG'}: "
        f"unreadable image (empty file))"]


def test_imagenet_val_two_columns_with_class_index(val: Path, tmp_path: Path) -> None:
    index = tmp_path / "imagenet_class_index.json"
    index.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    labels = tmp_path / "val.txt"
    labels.write_text(
        "ILSVRC2012_val_00000002.JPEG 1\nILSVRC2012_val_00000001 n01443537\nILSVRC2012_val_00000005.JPEG 0\n"
        "ILSVRC2012_val_00000099.JPEG 0\n"  # absent from the folder: fine
    )
    src = ImageNetValSource(val, labels, index)
    assert src.class_names == ["tench", "goldfish"]
    with pytest.warns(UserWarning):  # 3 is empty, 4 has no label
        got = [(s.id, s.label) for s in src]
    assert got == [
        ("ILSVRC2012_val_00000001.JPEG", 1),
        ("ILSVRC2012_val_00000002.JPEG", 1),
        ("ILSVRC2012_val_00000005.JPEG", 0),
    ]
    assert src.skipped == 2


def test_imagenet_val_text_class_index(val: Path, tmp_path: Path) -> None:
    index = tmp_path / "synsets.txt"
    index.write_text("n01440764\nn01443537 goldfish, Carassius auratus\n")
    labels = tmp_path / "gt.txt"
    labels.write_text("0\n1\n")
    src = ImageNetValSource(val, labels, index)
    assert src.class_names == ["n01440764", "goldfish, Carassius auratus"]


def test_imagenet_val_errors(val: Path, tmp_path: Path) -> None:
    labels = tmp_path / "gt.txt"
    labels.write_text("0\n1\n")
    with pytest.raises(DataError, match="not found: .*missing"):
        ImageNetValSource(tmp_path / "missing", labels)
    with pytest.raises(DataError, match="labels file not found"):
        ImageNetValSource(val, tmp_path / "nolabels.txt")
    with pytest.raises(DataError, match="class index file not found"):
        ImageNetValSource(val, labels, tmp_path / "noindex.json")
    labels.write_text("0\n")
    with pytest.raises(DataError, match="gt.txt:1: label 0 out of range"):
        ImageNetValSource(val, labels, label_base=1)
    labels.write_text("n01440764\n")
    with pytest.raises(DataError, match="gt.txt:1: bad label 'n01440764'"):
        ImageNetValSource(val, labels)
    labels.write_text("1\na.JPEG 2\n")
    with pytest.raises(DataError, match="gt.txt:2"):
        ImageNetValSource(val, labels)


def test_imagenet_val_without_a_labelled_readable_image_says_why(val: Path, tmp_path: Path) -> None:
    labels = tmp_path / "val.txt"
    labels.write_text("ILSVRC2012_val_00000003.JPEG 0\n")  # the one labelled image is empty
    with pytest.raises(DataError) as err:
        list(ImageNetValSource(val, labels))
    msg = str(err.value)
    assert f"ImageNet validation folder {val} holds no readable image: all 5 files were skipped" in msg
    assert f"first: {val / 'ILSVRC2012_val_00000001.JPEG'}: no label in {labels}" in msg and "\n" not in msg
