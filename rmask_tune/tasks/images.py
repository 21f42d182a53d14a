"""Image classification data: CIFAR-10 (the packaged npz subset), GTSRB, MNIST, SVHN and RESISC45.

Every dataset reads from a local image folder ``<data_dir>/<folder>/{train,test}/<class>/*.png|jpg`` (a class
folder is named by the class name or its index) or from its Hugging Face hub copy; CIFAR-10 also from
``cifar10/cifar10_subset.npz``. Records are {image: HxWx3 uint8, label}. Each dataset carries its class
names and the prompt a CLIP zero-shot head reads them with (CLIP's published per-dataset templates).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rmask_tune.errors import RmaskError
from rmask_tune.tasks.base import ImageExample
from rmask_tune.tasks.data import Mapped, Pool, Pools, Source, hub_split

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".ppm", ".bmp"}

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS = tuple(str(digit) for digit in range(10))
# GTSRB's 43 signs as described in words for CLIP (the names the CLIP paper's evaluation used).
GTSRB_CLASSES = (
    "red and white circle 20 kph speed limit",
    "red and white circle 30 kph speed limit",
    "red and white circle 50 kph speed limit",
    "red and white circle 60 kph speed limit",
    "red and white circle 70 kph speed limit",
    "red and white circle 80 kph speed limit",
    "end / de-restriction of 80 kph speed limit",
    "red and white circle 100 kph speed limit",
    "red and white circle 120 kph speed limit",
    "red and white circle red car and black car no passing",
    "red and white circle red truck and black car no passing",
    "red and white triangle road intersection warning",
    "white and yellow diamond priority road",
    "red and white upside down triangle yield right-of-way",
    "stop",
    "empty red and white circle",
    "red and white circle no truck entry",
    "red circle with white horizonal stripe no entry",
    "red and white triangle with exclamation mark warning",
    "red and white triangle with black left curve approaching warning",
    "red and white triangle with black right curve approaching warning",
    "red and white triangle with black double curve approaching warning",
    "red and white triangle rough / bumpy road warning",
    "red and white triangle car skidding / slipping warning",
    "red and white triangle with merging / narrow lanes warning",
    "red and white triangle with person digging / construction / road work warning",
    "red and white triangle with traffic light approaching warning",
    "red and white triangle with person walking warning",
    "red and white triangle with child and person walking warning",
    "red and white triangle with bicyle warning",
    "red and white triangle with snowflake / ice warning",
    "red and white triangle with deer warning",
    "white circle with gray strike bar no speed limit",
    "blue circle with white right turn arrow mandatory",
    "blue circle with white left turn arrow mandatory",
    "blue circle with white forward arrow mandatory",
    "blue circle with white forward or right turn arrow mandatory",
    "blue circle with white forward or left turn arrow mandatory",
    "blue circle with white keep right arrow mandatory",
    "blue circle with white keep left arrow mandatory",
    "blue circle with white arrows indicating a traffic circle",
    "white circle with gray strike bar indicating no passing for cars has ended",
    "white circle with gray strike bar indicating no passing for trucks has ended",
)
# NWPU-RESISC45's scene classes, in the (alphabetical) order of its labels.
RESISC45_CLASSES = (
    "airplane", "airport", "baseball diamond", "basketball court", "beach", "bridge", "chaparral", "church",
    "circular farmland", "cloud", "commercial area", "dense residential", "desert", "forest", "freeway",
    "golf course", "ground track field", "harbor", "industrial area", "intersection", "island", "lake", "meadow",
    "medium residential", "mobile home park", "mountain", "overpass", "palace", "parking lot", "railway",
    "railway station", "rectangular farmland", "river", "roundabout", "runway", "sea ice", "ship", "snowberg",
    "sparse residential", "stadium", "storage tank", "tennis court", "terrace", "thermal power station", "wetland",
)  # fmt: skip


@dataclass(frozen=True)
class ImageDataset:
    """Where one image task's data lives and how a zero-shot head names its classes.

    ``prompt`` holds ``{}`` where the class name goes; ``hub`` / ``hub_config`` / ``image_column`` locate
    the hub copy (its ``train`` and ``test`` splits); ``npz`` names an arrays file in the folder read before
    an image folder (CIFAR-10's packaged subset).
    """

    name: str
    folder: str
    classes: tuple[str, ...]
    prompt: str
    hub: str
    hub_config: str | None = None
    image_column: str = "image"
    npz: str | None = None

    def source(self) -> Source:
        """The task's Source: the local folder (CIFAR-10: the npz subset first), else the hub."""
        return Source(offline=self.read_offline, hub=self.read_hub)

    def read_offline(self, root: Path) -> Pools:
        directory = root / self.folder
        if self.npz is not None and (directory / self.npz).is_file():
            return self.read_npz(directory / self.npz)
        if (directory / "train").is_dir():
            return self.read_folder(directory)
        packaged = f"a file {directory / self.npz} or " if self.npz else ""
        raise RmaskError(
            f"task {self.name}: no data in {directory}: provide {packaged}an image folder "
            f"{directory}/{{train,test}}/<class name or index>/, or leave the data directory unset "
            f"to download {self.hub} from the Hugging Face hub"
        )

    def read_npz(self, path: Path) -> Pools:
        """``{train,test}_images`` (N, H, W, 3) uint8 and ``{train,test}_labels``; ``classes`` must match if present."""
        with np.load(path, allow_pickle=False) as npz:
            missing = {"train_images", "train_labels", "test_images", "test_labels"} - set(npz.files)
            if missing:
                raise RmaskError(f"{path}: lacks arrays {sorted(missing)}")
            arrays = {name: npz[name] for name in npz.files}
        if "classes" in arrays and tuple(str(c) for c in arrays["classes"]) != self.classes:
            raise RmaskError(f"{path}: classes {list(arrays['classes'])} are not {self.name}'s {list(self.classes)}")
        for split in ("train", "test"):
            images = arrays[f"{split}_images"]
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                got = f"{images.dtype} {images.shape}"
                raise RmaskError(f"{path}: {split}_images must be uint8 (N, H, W, 3), got {got}")
        return Pools(
            Pool("train", _array_records(arrays["train_images"], arrays["train_labels"])),
            Pool("test", _array_records(arrays["test_images"], arrays["test_labels"])),
            source=str(path),
        )

    def read_folder(self, directory: Path) -> Pools:
        """``<directory>/{train,test}/<class>/*``; every class folder must name one of the task's classes."""
        pools = []
        for split in ("train", "test"):
            split_dir = directory / split
            if not split_dir.is_dir():
                raise RmaskError(f"task {self.name}: missing image folder {split_dir}")
            files = []
            for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
                label = self.label_of(folder)
                files += [(path, label) for path in sorted(folder.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
            pools.append(Pool(split, Mapped(files, lambda item: {"image": _load_image(item[0]), "label": item[1]})))
        return Pools(pools[0], pools[1], source=str(directory))

    def label_of(self, folder: Path) -> int:
        """The class a folder holds: its name is a class name or a class index (``00042`` is 42)."""
        if folder.name in self.classes:
            return self.classes.index(folder.name)
        if folder.name.isdigit() and int(folder.name) < len(self.classes):
            return int(folder.name)
        raise RmaskError(
            f"{folder}: a class folder of {self.name} is named by one of its {len(self.classes)} class names "
            f"or an index 0..{len(self.classes) - 1}"
        )

    def read_hub(self) -> Pools:
        def record(row: dict[str, Any]) -> dict[str, Any]:
            return {"image": np.asarray(row[self.image_column].convert("RGB"), dtype=np.uint8), "label": row["label"]}

        splits = [Pool(name, Mapped(hub_split(self.hub, self.hub_config, name), record)) for name in ("train", "test")]
        name = f"{self.hub}/{self.hub_config}" if self.hub_config else self.hub
        return Pools(splits[0], splits[1], source=f"hf:{name}")


IMAGE_DATASETS = (
    ImageDataset(
        "CIFAR-10", "cifar10", CIFAR10_CLASSES, "a photo of a {}.", "uoft-cs/cifar10",
        image_column="img", npz="cifar10_subset.npz",
    ),  # fmt: skip
    ImageDataset("GTSRB", "gtsrb", GTSRB_CLASSES, 'a zoomed in photo of a "{}" traffic sign.', "tanganke/gtsrb"),
    ImageDataset("MNIST", "mnist", DIGITS, 'a photo of the number: "{}".', "ylecun/mnist"),
    ImageDataset("SVHN", "svhn", DIGITS, 'a photo of the number: "{}".', "ufldl-stanford/svhn", "cropped_digits"),
    ImageDataset("RESISC45", "resisc45", RESISC45_CLASSES, "satellite imagery of {}.", "tanganke/resisc45"),
)


def image_example(record: dict[str, Any], uid: str) -> ImageExample:
    """An ImageExample from {image: HxWx3 uint8, label}."""
    return ImageExample(uid=uid, image=record["image"], label=int(record["label"]))


def _array_records(images: np.ndarray, labels: np.ndarray) -> Mapped:
    """Records over parallel image / label arrays, built on access."""
    return Mapped(range(len(labels)), lambda i: {"image": images[i], "label": int(labels[i])})


def _load_image(path: Path) -> np.ndarray:
    try:
        from PIL import Image
    except ImportError:
        raise RmaskError("reading an image folder needs Pillow (pip install pillow)") from None
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
