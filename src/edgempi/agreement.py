"""One cluster, one model: what a rank runs with, and where a rank differs from rank 0.

Pure (no MPI): ``job.prepare`` gathers every rank's ``RankRecord`` at rank 0 and calls
``check_agreement``. A record costs one streamed pass over the weights file and a few small reads
of the data file (its metadata, its one-dimensional datasets, its first and last image).
"""

from __future__ import annotations

import hashlib
import platform
import socket
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from . import __version__
from .config import Config
from .errors import EdgempiError

CHUNK_BYTES = 1 << 20
JOB_IDENTITY = ("model", "weights_sha256", "seed", "data_digest")  # what decides a job's logits


class AgreementError(EdgempiError):
    """Ranks that run with different software, weights or data."""


@dataclass(frozen=True)
class RankRecord:
    """What one rank runs with. ``host`` says where it runs; every other field must equal rank 0's."""

    host: str
    python: str
    torch: str
    mpi4py: str
    edgempi: str
    model: str
    weights_sha256: str | None  # None: weights drawn from ``seed``
    seed: int | None  # only when the weights are drawn from it
    image_shape: tuple[int, ...]
    image_dtype: str
    data_digest: str

    def job_identity(self) -> dict[str, Any]:
        """The fields that decide a job's logits: the model, its weights and the data."""
        return {name: getattr(self, name) for name in JOB_IDENTITY}


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


def data_digest(file: h5py.File) -> str:
    """SHA-256 over an HDF5 file's attributes, every dataset's name, shape, dtype and attributes,
    the contents of its one-dimensional datasets (labels, split: one value per image) and the
    first and last image, never the whole image array. The file is an ``ImageSet``'s: its
    ``images`` hold at least one image."""
    digest = hashlib.sha256(repr(sorted((k, _plain(v)) for k, v in file.attrs.items())).encode())

    def add(name: str, item) -> None:
        if not isinstance(item, h5py.Dataset):
            return
        attrs = sorted((k, _plain(v)) for k, v in item.attrs.items())
        digest.update(repr((name, item.shape, item.dtype.str, attrs)).encode())
        if name == "images":
            digest.update(np.ascontiguousarray(item[sorted({0, len(item) - 1})]).tobytes())
        elif item.ndim <= 1:
            digest.update(np.ascontiguousarray(item[()]).tobytes())

    file.visititems(add)
    return digest.hexdigest()


def rank_record(config: Config, images: h5py.Dataset) -> RankRecord:
    """This process's record for a job of ``config`` over ``images`` (a dataset of an open file)."""
    return RankRecord(
        host=socket.gethostname(),
        python=platform.python_version(),
        torch=torch.__version__,
        mpi4py=metadata.version("mpi4py"),
        edgempi=__version__,
        model=config.model,
        weights_sha256=file_sha256(config.weights) if config.weights else None,
        seed=None if config.weights else config.seed,
        image_shape=tuple(images.shape),
        image_dtype=str(images.dtype),
        data_digest=data_digest(images.file),
    )


def first_difference(mine: dict[str, Any], reference: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first key (of ``reference``, then of ``mine``) whose values differ, a missing key's
    being None: (key, mine's value, reference's value)."""
    keys = dict.fromkeys([*reference, *mine])
    return next(((k, mine.get(k), reference.get(k)) for k in keys if mine.get(k) != reference.get(k)), None)


def check_agreement(records: list[RankRecord]) -> None:
    """Raise ``AgreementError`` naming the first rank (and its host) whose record differs from
    rank 0's, the field, and both values."""

    def compared(record: RankRecord) -> dict[str, Any]:
        return {name: value for name, value in asdict(record).items() if name != "host"}

    reference = compared(records[0])
    for rank, record in enumerate(records[1:], start=1):
        difference = first_difference(compared(record), reference)
        if difference is not None:
            field, theirs, ours = difference
            raise AgreementError(
                f"rank {rank} on host {record.host} runs with {field} {theirs!r}, "
                f"rank 0 on host {records[0].host} with {ours!r}: every rank must run the same software, "
                "weights and data"
            )
