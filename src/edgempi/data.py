"""NEU-CLS in HDF5: the file layout, the converter, synthetic data and row-slab reading.

Layout: ``images`` uint8 ``[N, C, H, W]`` chunked one image per chunk, ``labels`` int64
``[N]``, ``split`` uint8 ``[N]`` (0 train, 1 val, 2 test; attributes ``names``, ``fractions``,
``seed``), file attribute ``classes`` (class names in label order). No MPI here: every rank
opens the file read-only and reads just the rows it needs.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import h5py
import numpy as np
import torch

from .errors import EdgempiError, exit_status
from .files import atomic_path

CLASS_PREFIXES = ("Cr", "In", "Pa", "PS", "RS", "Sc")
CLASS_NAMES = ("crazing", "inclusion", "patches", "pitted_surface", "rolled-in_scale", "scratches")
SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
_NEU_NAME = re.compile(r"^(Cr|In|Pa|PS|RS|Sc)_(\d+)\.bmp$", re.IGNORECASE)


class DataError(EdgempiError):
    """A data file or folder that cannot be used."""


def stratified_split(labels: np.ndarray, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> np.ndarray:
    """Per image 0 (train), 1 (val) or 2 (test): each class on its own, shuffled with ``seed``,
    its first ``fractions[0]`` to train, the next ``fractions[1]`` to val, the rest to test."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0):
        raise DataError(f"split fractions must be three non-negative numbers summing to 1, not {list(fractions)}")
    split = np.full(len(labels), 2, dtype=np.uint8)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train, n_val = (round(f * len(members)) for f in fractions[:2])
        split[members[:n_train]] = 0
        split[members[n_train : n_train + n_val]] = 1
    return split


def write_dataset(
    path: str | Path,
    images: np.ndarray,
    labels: np.ndarray,
    classes=CLASS_NAMES,
    fractions=DEFAULT_FRACTIONS,
    seed: int = 0,
) -> None:
    """Write images ``[N, C, H, W]`` uint8, labels ``[N]`` and their stratified split
    atomically in edgempi's layout."""
    n, c, h, w = images.shape
    split = stratified_split(labels, fractions, seed)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("images", data=images.astype(np.uint8), chunks=(1, c, h, w))
        f.create_dataset("labels", data=labels.astype(np.int64))
        f.create_dataset("split", data=split)
        f["split"].attrs.update(names=list(SPLITS), fractions=list(fractions), seed=seed)
        f.attrs["classes"] = list(classes)


def convert(folder: str | Path, out: str | Path, fractions=DEFAULT_FRACTIONS, seed: int = 0) -> int:
    """Convert a NEU-CLS folder (``Cr_1.bmp`` ...) into edgempi's HDF5 with its split; returns the
    image count."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"NEU-CLS folder '{folder}' does not exist")
    label_of = {prefix.lower(): label for label, prefix in enumerate(CLASS_PREFIXES)}
    found = [(label_of[m[1].lower()], int(m[2]), p) for p in folder.iterdir() if (m := _NEU_NAME.match(p.name))]
    if not found:
        raise DataError(f"no NEU-CLS images (Cr_1.bmp ...) in '{folder}'")
    found.sort()
    images = []
    for _, _, p in found:
        with Image.open(p) as img:
            images.append(np.asarray(img.convert("L"), dtype=np.uint8))
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise DataError(f"images in '{folder}' differ in size: {sorted(shapes)}")
    write_dataset(
        out, np.stack(images)[:, None], np.array([label for label, _, _ in found]), CLASS_NAMES, fractions, seed
    )
    return len(found)


def synth_image(label: int, rng: np.random.Generator, size: int = 200) -> np.ndarray:
    """One NEU-like grey texture of class ``label`` (0..5)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    img = 128 + 12 * rng.standard_normal((size, size)).astype(np.float32)
    if label == 0:  # crazing: a mesh of thin dark cracks
        for _ in range(12):
            angle, offset = rng.uniform(0, np.pi), rng.uniform(0, size)
            dist = np.abs(np.cos(angle) * xx + np.sin(angle) * yy - offset)
            img -= 40 * (dist < 1.2)
    elif label == 1:  # inclusion: a few elongated dark spots
        for _ in range(rng.integers(3, 7)):
            cy, cx, length = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(8, 25)
            img -= 60 * (((yy - cy) / length) ** 2 + ((xx - cx) / 3) ** 2 < 1)
    elif label == 2:  # patches: large soft dark blotches
        for _ in range(rng.integers(2, 5)):
            cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(20, 45)
            img -= 50 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    elif label == 3:  # pitted surface: many small dark pits
        for cy, cx in rng.uniform(0, size, (80, 2)):
            img -= 70 * ((yy - cy) ** 2 + (xx - cx) ** 2 < 4)
    elif label == 4:  # rolled-in scale: horizontal streaks
        img += 30 * np.sin(yy / rng.uniform(2, 4) + rng.uniform(0, 6)) * rng.uniform(0.5, 1, (size, 1))
    else:  # scratches: a few long bright straight lines
        for _ in range(rng.integers(2, 5)):
            angle, offset = rng.uniform(-0.3, 0.3) + np.pi / 2, rng.uniform(0, size)
            dist = np.abs(np.cos(angle) * xx + np.sin(angle) * yy - offset)
            img += 70 * (dist < 1.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def synth(out: str | Path, n: int, seed: int = 0, size: int = 200, fractions=DEFAULT_FRACTIONS) -> None:
    """Write ``n`` deterministic synthetic NEU-like images, classes in turn, with their split."""
    if n < 1:
        raise DataError("--n must be at least 1")
    labels = np.arange(n) % len(CLASS_NAMES)
    images = np.stack(
        [synth_image(int(label), np.random.default_rng([seed, i]), size) for i, label in enumerate(labels)]
    )
    write_dataset(out, images[:, None], labels, CLASS_NAMES, fractions, seed)


class ImageSet:
    """A validated, read-only edgempi HDF5 file; reads batches of row slabs."""

    def __init__(self, path: str | Path, in_channels: int, mean: float, std: float):
        path = Path(path)
        if not path.is_file():
            raise DataError(f"data file '{path}' does not exist (make one with: python -m edgempi.data synth {path})")
        try:
            self.file = h5py.File(path, "r")
        except OSError:
            raise DataError(f"data file '{path}' is not a readable HDF5 file") from None
        if "images" not in self.file:
            raise DataError(f"data file '{path}' has no 'images' dataset")
        self.images = self.file["images"]
        if self.images.ndim != 4 or self.images.dtype != np.uint8:
            raise DataError(f"'{path}' images must be uint8 [N, C, H, W], not {self.images.dtype} {self.images.shape}")
        self.count, channels, self.height, self.width = self.images.shape
        if channels != in_channels:
            raise DataError(f"'{path}' images have {channels} channels, the model takes {in_channels}")
        if self.count == 0:
            raise DataError(f"data file '{path}' holds no images")
        self.labels = None
        if "labels" in self.file:
            labels = self.file["labels"]
            if labels.shape != (self.count,) or labels.dtype.kind not in "iu":
                raise DataError(f"'{path}' labels must be integers [{self.count}], not {labels.dtype} {labels.shape}")
            self.labels = labels[:].astype(np.int64)
        self.classes = [str(c) for c in self.file.attrs.get("classes", [])]
        self.mean, self.std = mean, std

    def indices(self, split: str | None) -> np.ndarray:
        """Sorted indices of the images in ``split`` (all images for None)."""
        if split is None:
            return np.arange(self.count)
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}' (choose from {', '.join(SPLITS)})")
        if "split" not in self.file:
            raise DataError(f"'{self.file.filename}' has no 'split' dataset (convert it again with this version)")
        split_of = self.file["split"][:]
        if split_of.shape != (self.count,):
            raise DataError(f"'{self.file.filename}' split must have one entry per image, not {split_of.shape}")
        return np.flatnonzero(split_of == SPLITS.index(split))

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 pixels -> the model's float32 input."""
        return (torch.as_tensor(images).float() / 255 - self.mean) / self.std

    def read(self, start: int, stop: int, rows: tuple[int, int]) -> torch.Tensor:
        """Images ``start..stop``, rows ``rows`` only (an HDF5 hyperslab), preprocessed to float32."""
        return self.preprocess(self.images[start:stop, :, rows[0] : rows[1], :])

    def read_indices(self, indices: np.ndarray, rows: tuple[int, int]) -> torch.Tensor:
        """Images at sorted ``indices``, rows ``rows`` only, preprocessed to float32."""
        return self.preprocess(self.images[np.asarray(indices), :, rows[0] : rows[1], :])

    def close(self) -> None:
        self.file.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgempi.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    conv = sub.add_parser("convert", help="NEU-CLS folder of BMPs -> HDF5")
    conv.add_argument("folder")
    conv.add_argument("out")
    syn = sub.add_parser("synth", help="deterministic synthetic NEU-like HDF5")
    syn.add_argument("out")
    syn.add_argument("--n", type=int, default=60)
    syn.add_argument("--size", type=int, default=200)
    for sub_parser in (conv, syn):
        sub_parser.add_argument("--split", default="70/10/20", help="train/val/test percent per class (70/10/20)")
        sub_parser.add_argument("--seed", type=int, default=0, help="seed of the split (and synthetic images)")
    args = parser.parse_args(argv)

    def run() -> int | None:
        parts = args.split.split("/")
        if len(parts) != 3 or not all(p.replace(".", "", 1).isdigit() for p in parts):
            raise DataError(f"--split must be three percentages like 70/10/20, not '{args.split}'")
        fractions = tuple(float(p) / 100 for p in parts)
        if args.command == "convert":
            count = convert(args.folder, args.out, fractions, args.seed)
            print(f"wrote {count} images to {args.out}")
        else:
            synth(args.out, args.n, args.seed, args.size, fractions)
            print(f"wrote {args.n} synthetic images to {args.out}")

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
