"""CIFAR-10 data: the packaged npz subset, a local image folder, or the hub; records are {image, label}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rmask_tune.errors import RmaskError
from rmask_tune.tasks.base import ImageExample
from rmask_tune.tasks.data import Mapped, Pool, Pools, Source, hub_split

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def image_example(record: dict[str, Any], uid: str) -> ImageExample:
    """An ImageExample from {image: HxWx3 uint8, label}."""
    return ImageExample(uid=uid, image=record["image"], label=int(record["label"]))


def _array_records(images: np.ndarray, labels: np.ndarray) -> Mapped:
    """Records over parallel image / label arrays, built on access."""
    return Mapped(range(len(labels)), lambda i: {"image": images[i], "label": int(labels[i])})


def _read_npz(path: Path) -> Pools:
    with np.load(path, allow_pickle=False) as npz:
        missing = {"train_images", "train_labels", "test_images", "test_labels"} - set(npz.files)
        if missing:
            raise RmaskError(f"{path}: lacks arrays {sorted(missing)}")
        arrays = {name: npz[name] for name in npz.files}
    if "classes" in arrays and tuple(str(c) for c in arrays["classes"]) != CIFAR10_CLASSES:
        raise RmaskError(f"{path}: classes {list(arrays['classes'])} are not CIFAR-10's {list(CIFAR10_CLASSES)}")
    for split in ("train", "test"):
        images = arrays[f"{split}_images"]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise RmaskError(f"{path}: {split}_images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
    return Pools(
        Pool("train", _array_records(arrays["train_images"], arrays["train_labels"])),
        Pool("test", _array_records(arrays["test_images"], arrays["test_labels"])),
        source=str(path),
    )


def _load_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise RmaskError("reading an image folder needs Pillow (pip install pillow)") from None
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _read_folder(directory: Path) -> Pools:
    """``<directory>/{train,test}/<class name>/*.png|jpg``; class folders must be CIFAR-10's ten."""
    pools = []
    for split in ("train", "test"):
        split_dir = directory / split
        if not split_dir.is_dir():
            raise RmaskError(f"task CIFAR-10: missing image folder {split_dir}")
        classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
        if tuple(classes) != tuple(sorted(CIFAR10_CLASSES)):
            raise RmaskError(f"{split_dir}: class folders {classes} are not CIFAR-10's {list(CIFAR10_CLASSES)}")
        files = [
            (path, CIFAR10_CLASSES.index(name))
            for name in classes
            for path in sorted((split_dir / name).iterdir())
            if path.suffix.lower() in IMAGE_SUFFIXES
        ]
        pools.append(Pool(split, Mapped(files, lambda item: {"image": _load_image(item[0]), "label": item[1]})))
    return Pools(pools[0], pools[1], source=str(directory))


def _read_offline(root: Path) -> Pools:
    directory = root / "cifar10"
    npz = directory / "cifar10_subset.npz"
    if npz.is_file():
        return _read_npz(npz)
    if (directory / "train").is_dir():
        return _read_folder(directory)
    raise RmaskError(f"task CIFAR-10: missing data file {npz} (or an image folder {directory}/train/<class>/)")


def _hub_record(row: dict[str, Any]) -> dict[str, Any]:
    return {"image": np.asarray(row["img"].convert("RGB"), dtype=np.uint8), "label": row["label"]}


def _read_hub() -> Pools:
    train = Mapped(hub_split("uoft-cs/cifar10", None, "train"), _hub_record)
    test = Mapped(hub_split("uoft-cs/cifar10", None, "test"), _hub_record)
    return Pools(Pool("train", train), Pool("test", test), source="hf:uoft-cs/cifar10")


CIFAR10_SOURCE = Source(offline=_read_offline, hub=_read_hub)
