"""HDF5 layout, NEU-CLS converter, synthetic data and row-slab reading."""

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from edgempi.data import CLASS_NAMES, CLASS_PREFIXES, DataError, ImageSet, convert, main, synth

REAL_NEU = Path(__file__).resolve().parents[2] / "shared" / "neu-cls"


def test_synth_is_deterministic_and_in_layout(tmp_path):
    synth(tmp_path / "a.h5", 12, seed=1)
    synth(tmp_path / "b.h5", 12, seed=1)
    synth(tmp_path / "c.h5", 12, seed=2)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b, h5py.File(tmp_path / "c.h5") as c:
        images = a["images"]
        assert images.dtype == np.uint8 and images.shape == (12, 1, 200, 200)
        assert images.chunks == (1, 1, 200, 200)
        assert a["labels"].dtype == np.int64
        assert list(a["labels"][:]) == [i % 6 for i in range(12)]
        assert list(a.attrs["classes"]) == list(CLASS_NAMES)
        assert np.array_equal(images[:], b["images"][:])
        assert not np.array_equal(images[:], c["images"][:])


def test_synth_classes_differ_in_texture(tmp_path):
    """Each class has its own look: class-mean images are far apart compared with noise."""
    synth(tmp_path / "s.h5", 60)
    with h5py.File(tmp_path / "s.h5") as f:
        x, y = f["images"][:, 0].astype(float), f["labels"][:]
    stats = np.array(
        [
            [x[y == c].std(), np.abs(np.diff(x[y == c], axis=1)).mean(), np.abs(np.diff(x[y == c], axis=2)).mean()]
            for c in range(6)
        ]
    )
    distances = np.linalg.norm(stats[:, None] - stats[None], axis=2)
    assert distances[~np.eye(6, dtype=bool)].min() > 0.5


def write_bmp(path, pixels):
    """Save like NEU-CLS: 8-bit palettized grey BMP."""
    img = Image.fromarray(pixels, mode="L").convert("P")
    img.putpalette([v for g in range(256) for v in (g, g, g)])
    img.save(path)


def test_convert_reads_neu_names_and_pixels(tmp_path):
    folder = tmp_path / "neu"
    folder.mkdir()
    rng = np.random.default_rng(0)
    expected = {}
    for label, prefix in enumerate(CLASS_PREFIXES):
        for index in (2, 10):
            pixels = rng.integers(0, 256, (20, 24), dtype=np.uint8)
            write_bmp(folder / f"{prefix}_{index}.bmp", pixels)
            expected[(label, index)] = pixels
    (folder / "notes.txt").write_text("ignored")
    assert convert(folder, tmp_path / "out.h5") == 12
    with h5py.File(tmp_path / "out.h5") as f:
        labels = f["labels"][:]
        assert list(labels) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        for i, key in enumerate(sorted(expected)):
            assert np.array_equal(f["images"][i, 0], expected[key])


def test_convert_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        convert(tmp_path / "nope", tmp_path / "o.h5")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no NEU-CLS images"):
        convert(tmp_path / "empty", tmp_path / "o.h5")
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.skipif(not REAL_NEU.is_dir(), reason="the real NEU-CLS folder is not beside the repository")
def test_convert_real_neu_cls_subset(tmp_path):
    folder = tmp_path / "subset"
    folder.mkdir()
    for prefix in CLASS_PREFIXES:
        for index in (1, 300):
            (folder / f"{prefix}_{index}.bmp").symlink_to(REAL_NEU / f"{prefix}_{index}.bmp")
    convert(folder, tmp_path / "real.h5")
    with h5py.File(tmp_path / "real.h5") as f:
        assert f["images"].shape == (12, 1, 200, 200)
        original = np.asarray(Image.open(REAL_NEU / "Cr_1.bmp").convert("L"))
        assert np.array_equal(f["images"][0, 0], original)


def test_image_set_reads_row_slabs(tmp_path):
    synth(tmp_path / "s.h5", 4)
    data = ImageSet(tmp_path / "s.h5", in_channels=1, mean=0.5, std=0.25)
    full = data.read(1, 3, (0, 200))
    slab = data.read(1, 3, (37, 91))
    assert slab.shape == (2, 1, 54, 200)
    assert np.array_equal(slab.numpy(), full[:, :, 37:91].numpy())
    with h5py.File(tmp_path / "s.h5") as f:
        raw = f["images"][1, 0, 37, 5]
    assert slab[0, 0, 0, 5].item() == pytest.approx((raw / 255 - 0.5) / 0.25)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"garbage" * 100), "not a readable HDF5"),
        (lambda p: h5py.File(p, "w").close(), "no 'images'"),
        (lambda p: h5py.File(p, "w").create_dataset("images", data=np.zeros((2, 1, 8, 8), np.float32)), "uint8"),
        (lambda p: h5py.File(p, "w").create_dataset("images", data=np.zeros((2, 3, 8, 8), np.uint8)), "3 channels"),
        (
            lambda p: h5py.File(p, "w").create_dataset("images", data=np.zeros((2, 8, 8), np.uint8)),
            "uint8 \\[N, C, H, W\\]",
        ),
    ],
)
def test_image_set_rejects_bad_files(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(DataError, match=message):
        ImageSet(path, in_channels=1, mean=0.5, std=0.25)


def test_image_set_rejects_bad_labels(tmp_path):
    with h5py.File(tmp_path / "l.h5", "w") as f:
        f["images"] = np.zeros((3, 1, 8, 8), np.uint8)
        f["labels"] = np.zeros(2, np.int64)
    with pytest.raises(DataError, match="labels"):
        ImageSet(tmp_path / "l.h5", 1, 0.5, 0.25)


def test_cli_reports_one_line_errors(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "none"), str(tmp_path / "o.h5")]) == 2
    assert capsys.readouterr().err.strip().startswith("edgempi: error:")
    assert main(["synth", str(tmp_path / "s.h5"), "--n", "3"]) == 0
    assert (tmp_path / "s.h5").exists()


def test_split_is_deterministic_and_stratified(tmp_path):
    from edgempi.data import stratified_split

    labels = np.repeat(np.arange(6), 50)
    split = stratified_split(labels, (0.7, 0.1, 0.2), seed=4)
    assert np.array_equal(split, stratified_split(labels, (0.7, 0.1, 0.2), seed=4))
    assert not np.array_equal(split, stratified_split(labels, (0.7, 0.1, 0.2), seed=5))
    for label in range(6):
        assert np.bincount(split[labels == label], minlength=3).tolist() == [35, 5, 10]
    synth(tmp_path / "s.h5", 60, seed=2)
    data = ImageSet(tmp_path / "s.h5", 1, 0.5, 0.25)
    parts = [data.indices(name) for name in ("train", "val", "test")]
    assert sorted(np.concatenate(parts).tolist()) == list(range(60))
    assert [len(p) for p in parts] == [42, 6, 12]
    assert all(np.all(np.diff(p) > 0) for p in parts)
    with pytest.raises(DataError, match="unknown split"):
        data.indices("holdout")
    with pytest.raises(DataError, match="summing to 1"):
        stratified_split(labels, (0.5, 0.1, 0.1))


def test_split_percentages_from_the_cli(tmp_path):
    assert main(["synth", str(tmp_path / "s.h5"), "--n", "60", "--split", "50/25/25"]) == 0
    with h5py.File(tmp_path / "s.h5") as f:
        assert np.bincount(f["split"][:]).tolist() == [30, 12, 18]  # per class 5, round(2.5), 3
        assert list(f["split"].attrs["names"]) == ["train", "val", "test"]
    assert main(["synth", str(tmp_path / "t.h5"), "--split", "70-10-20"]) == 2


@pytest.mark.skipif(not REAL_NEU.is_dir(), reason="the real NEU-CLS folder is not beside the repository")
def test_real_neu_cls_split_sizes(tmp_path):
    folder = tmp_path / "subset"
    folder.mkdir()
    for prefix in CLASS_PREFIXES:
        for index in range(1, 21):
            (folder / f"{prefix}_{index}.bmp").symlink_to(REAL_NEU / f"{prefix}_{index}.bmp")
    convert(folder, tmp_path / "real.h5")
    data = ImageSet(tmp_path / "real.h5", 1, 0.5, 0.25)
    for name, per_class in (("train", 14), ("val", 2), ("test", 4)):
        assert np.bincount(data.labels[data.indices(name)]).tolist() == [per_class] * 6
