"""One cluster, one model: each rank's record and the check that every rank's equals rank 0's."""

import dataclasses
import hashlib
import shutil

import h5py
import numpy as np
import pytest

from edgempi.agreement import AgreementError, check_agreement, data_digest, file_sha256, first_difference, rank_record
from edgempi.config import Config
from edgempi.data import synth, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("agree") / "s.h5"
    synth(path, 6, seed=1, size=16)
    return path


def record_of(path, **config):
    with h5py.File(path, "r") as f:
        return rank_record(Config(**config), f["images"])


def test_a_record_names_the_weights_by_content_or_else_the_seed(dataset, tmp_path):
    drawn = record_of(dataset, model="vgg11", seed=4)
    assert drawn.weights_sha256 is None and drawn.seed == 4 and drawn.model == "vgg11"
    assert drawn.image_shape == (6, 1, 16, 16) and drawn.image_dtype == "uint8"
    weights = tmp_path / "w.pt"
    weights.write_bytes(bytes(range(256)) * 9000)  # more than one 1 MiB chunk
    loaded = record_of(dataset, weights=str(weights), seed=4)
    assert loaded.seed is None and loaded.weights_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert file_sha256(weights) == loaded.weights_sha256


def test_the_data_digest_follows_metadata_and_small_datasets_not_every_image(dataset, tmp_path):
    copy = tmp_path / "copy.h5"
    shutil.copy(dataset, copy)
    with h5py.File(dataset, "r") as f, h5py.File(copy, "r") as g:
        assert data_digest(f) == data_digest(g)  # the same content under another name
    changes = {
        "labels": lambda f: f["labels"].__setitem__(0, 5),
        "split": lambda f: f["split"].__setitem__(0, 1),
        "file attribute": lambda f: f.attrs.__setitem__("classes", ["a"] * 6),
        "first image": lambda f: f["images"].__setitem__((0, 0, 0, 0), 7),
        "last image": lambda f: f["images"].__setitem__((5, 0, 0, 0), 7),
    }
    with h5py.File(dataset, "r") as f:
        original = data_digest(f)
    for what, change in changes.items():
        shutil.copy(dataset, copy)
        with h5py.File(copy, "r+") as f:
            change(f)
            assert data_digest(f) != original, what
    shutil.copy(dataset, copy)
    with h5py.File(copy, "r+") as f:
        f["images"][3] = 0  # a middle image is not read: the digest stays cheap for large sets
        assert data_digest(f) == original
        f["features"] = np.zeros((6, 4))
        with_features = data_digest(f)
        f["features"][0, 0] = 1  # nor is any other dataset of more than one dimension, only its metadata
        assert data_digest(f) == with_features != original
    shorter = tmp_path / "shorter.h5"
    write_dataset(shorter, np.zeros((5, 1, 16, 16), np.uint8), np.arange(5) % 6)
    with h5py.File(shorter, "r") as f:
        assert data_digest(f) != original


def test_equal_records_agree_whatever_the_hosts(dataset):
    record = record_of(dataset)
    check_agreement([record, dataclasses.replace(record, host="pi-2"), dataclasses.replace(record, host="pi-3")])
    check_agreement([record])


@pytest.mark.parametrize(
    "field,value",
    [
        ("weights_sha256", "ab" * 32),
        ("seed", 1),
        ("model", "resnet18"),
        ("torch", "2.0.0"),
        ("python", "3.9.0"),
        ("mpi4py", "3.1.0"),
        ("edgempi", "0.0.1"),
        ("image_shape", (6, 1, 16, 17)),
        ("image_dtype", "uint16"),
        ("data_digest", "00" * 32),
    ],
)
def test_the_first_rank_that_differs_is_named_with_its_host_the_field_and_both_values(dataset, field, value):
    record = record_of(dataset)
    records = [record, dataclasses.replace(record, host="pi-2"), dataclasses.replace(record, host="pi-3")]
    records[2] = dataclasses.replace(records[2], **{field: value})
    with pytest.raises(AgreementError) as error:
        check_agreement(records)
    message = str(error.value)
    assert message.startswith(f"rank 2 on host pi-3 runs with {field} {value!r}, rank 0 on host ")
    assert f"with {getattr(record, field)!r}:" in message


def test_first_difference_counts_a_missing_key_as_none():
    assert first_difference({"a": 1, "b": 2}, {"a": 1, "b": 2}) is None
    assert first_difference({"a": 1, "b": 2}, {"a": 3}) == ("a", 1, 3)
    assert first_difference({"a": 1, "b": 2}, {"a": 1}) == ("b", 2, None)
    assert first_difference({"a": 1}, {"a": 1, "c": 0}) == ("c", None, 0)
