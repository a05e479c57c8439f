"""Image files and sources: IDX (plain, gzip), CIFAR-10 batches, downsampled-ImageNet .npz, .npy;
the validation split; every bad or truncated file gives a DataError that names it."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

from pcdsl.data import DataError, load_matrix, load_values
from pcdsl.data.images import ImageFileError, image_file_format, peek_image_file, read_image_file
from pcdsl.distill.images import image_files, image_source_problem, load_images, peek_images, split_valid
from pcdsl.syntax.sources import DataSource

# ---- writers of small files in each format -----------------------------------------------------


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False, type_code: int = 0x08) -> Path:
    header = struct.pack(">BBBB", 0, 0, type_code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


def write_cifar(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """CIFAR records: label byte, then the R, G and B planes (32x32 each, row-major)."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    path.write_bytes(np.concatenate([labels.astype(np.uint8)[:, None], planes], axis=1).tobytes())
    return path


def write_imagenet(path: Path, images: np.ndarray) -> Path:
    """The official layout: 'data' (N, 3*S*S) channel-planar uint8, 'labels' 1-based ints."""
    data = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    np.savez(path, data=data, labels=np.arange(1, len(images) + 1), mean=np.zeros(data.shape[1]))
    return path


def numbered(n: int, h: int, w: int, c: int, seed: int = 0) -> np.ndarray:
    """Random images whose first pixel holds their index (so splits can be traced back)."""
    images = np.random.default_rng(seed).integers(0, 256, size=(n, h, w, c), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return images


# ---- IDX -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images = numbered(7, 5, 4, 1)[..., 0]
    path = write_idx(tmp_path / ("x-images-idx3-ubyte" + (".gz" if gz else "")), images, gz=gz)
    assert image_file_format(path) == "idx"
    assert peek_image_file(path).count == 7 and peek_image_file(path).shape == (5, 4, 1)
    read = read_image_file(path)
    assert read.dtype == np.uint8 and read.shape == (7, 5, 4, 1)
    np.testing.assert_array_equal(read[..., 0], images)
    assert read.flags.writeable


def test_idx_is_recognised_by_its_magic_without_a_telling_name(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "pixels", numbered(3, 2, 2, 1)[..., 0])
    assert image_file_format(path) == "idx"
    assert load_values(path).shape == (3, 4)


def test_idx_truncated_plain_file_names_declared_and_actual_sizes(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "t-images-idx3-ubyte", numbered(4, 3, 3, 1)[..., 0])
    path.write_bytes(path.read_bytes()[:-5])
    for action in (peek_image_file, read_image_file):
        with pytest.raises(ImageFileError) as info:
            action(path)
        assert str(path) in str(info.value)
        assert "truncated" in str(info.value) and "4x3x3 = 36" in str(info.value) and "31" in str(info.value)


def test_idx_trailing_bytes_are_an_error(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "t-images-idx3-ubyte", numbered(2, 3, 3, 1)[..., 0])
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(ImageFileError, match="trailing bytes"):
        read_image_file(path)


def test_idx_truncated_gzip_is_a_data_error(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "t-images-idx3-ubyte.gz", numbered(50, 8, 8, 1)[..., 0], gz=True)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError) as info:
        read_image_file(path)
    assert str(path) in str(info.value) and "truncated" in str(info.value)


def test_idx_bad_magic_type_and_labels(tmp_path: Path) -> None:
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03" + b"\0" * 20)
    with pytest.raises(ImageFileError, match=r"bad magic number 12340803"):
        read_image_file(bad)
    ints = write_idx(tmp_path / "ints-images-idx3-ubyte", numbered(2, 2, 2, 1)[..., 0], type_code=0x0C)
    with pytest.raises(ImageFileError, match="type int; images must be unsigned bytes"):
        read_image_file(ints)
    labels = write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    with pytest.raises(ImageFileError, match="labels, not images"):
        read_image_file(labels)
    short = tmp_path / "short-images-idx3-ubyte"
    short.write_bytes(b"\0\0\x08\x03\0\0\0\x02")
    with pytest.raises(ImageFileError, match="truncated inside its IDX header"):
        peek_image_file(short)


# ---- CIFAR-10 --------------------------------------------------------------------------------------


def test_cifar_records_are_planar_rgb(tmp_path: Path) -> None:
    images = numbered(3, 32, 32, 3)
    path = write_cifar(tmp_path / "data_batch_1.bin", images, np.array([0, 9, 4]))
    assert peek_image_file(path).count == 3
    read = read_image_file(path)
    np.testing.assert_array_equal(read, images)
    raw = path.read_bytes()
    # record 1, green plane (offset 1 + 1024), row 2, column 5 is pixel (2, 5) channel 1
    assert read[1, 2, 5, 1] == raw[3073 + 1 + 1024 + 2 * 32 + 5]


def test_cifar_bad_sizes_and_labels(tmp_path: Path) -> None:
    path = write_cifar(tmp_path / "data_batch_1.bin", numbered(2, 32, 32, 3), np.array([1, 2]))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ImageFileError, match=r"6046 bytes is not a whole number of 3073-byte records"):
        read_image_file(path)
    write_cifar(path, numbered(2, 32, 32, 3), np.array([1, 12]))
    with pytest.raises(ImageFileError, match=r"record 1 has label 12, outside 0\.\.9"):
        read_image_file(path)


# ---- downsampled ImageNet and .npy ------------------------------------------------------------------


@pytest.mark.parametrize("side", [8, 32])
def test_imagenet_npz_is_channel_planar(tmp_path: Path, side: int) -> None:
    images = numbered(4, side, side, 3)
    path = write_imagenet(tmp_path / "val_data.npz", images)
    assert image_file_format(path) == "npz"
    assert peek_image_file(path).shape == (side, side, 3)
    np.testing.assert_array_equal(read_image_file(path), images)
    # the flattened row as pcdsl sees it is (H, W, C) order, not the file's planes
    np.testing.assert_array_equal(load_values(path)[1], images[1].reshape(-1))


def test_npz_with_a_matrix_named_data_stays_a_matrix(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    np.savez(path, data=np.arange(12).reshape(4, 3))
    assert image_file_format(path) is None
    np.testing.assert_array_equal(load_matrix(path), np.arange(12).reshape(4, 3))


def test_truncated_and_pickled_npz(tmp_path: Path) -> None:
    path = write_imagenet(tmp_path / "train_data_batch_1.npz", numbered(4, 8, 8, 3))
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError) as info:
        load_values(path)
    assert str(path) in str(info.value)
    objects = tmp_path / "objects.npz"
    np.savez(objects, np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError):
        load_values(objects)


@pytest.mark.parametrize("shape", [(5, 6, 7), (5, 6, 7, 3), (5, 6, 7, 1)])
def test_npy_images(tmp_path: Path, shape: tuple[int, ...]) -> None:
    array = np.random.default_rng(1).integers(0, 256, size=shape).astype(np.uint8)
    path = tmp_path / "x.npy"
    np.save(path, array)
    read = read_image_file(path)
    assert read.shape == (5, 6, 7, shape[3] if len(shape) == 4 else 1)
    np.testing.assert_array_equal(read.reshape(5, -1), array.reshape(5, -1))


def test_npy_integer_pixels_are_accepted_and_others_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.full((2, 3, 3), 200, dtype=np.int64))
    assert read_image_file(path).dtype == np.uint8
    np.save(path, np.full((2, 3, 3), 300, dtype=np.int64))
    with pytest.raises(ImageFileError, match=r"values 300\.\.300; pixels must lie in 0\.\.255"):
        read_image_file(path)
    np.save(path, np.zeros((2, 3, 3)))
    with pytest.raises(ImageFileError, match="float64 values; pixels must be integers"):
        read_image_file(path)


def test_truncated_npy_is_reported_from_the_header(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((10, 4, 4), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ImageFileError, match=r"truncated: its header declares shape \(10, 4, 4\) of uint8 "
                       r"\(160 bytes\), the file holds 140"):
        peek_image_file(path)
    with pytest.raises(DataError):
        load_values(path)


def test_load_values_reads_a_2d_npy(tmp_path: Path) -> None:
    """The issue's crash: `.npy` went through a `with` block meant for `.npz`."""
    path = tmp_path / "train.npy"
    np.save(path, np.array([[0, 1], [1, 0]]))
    np.testing.assert_array_equal(load_values(path), [[0.0, 1.0], [1.0, 0.0]])


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_values(tmp_path / "nope.gz")
    other = tmp_path / "x.bmp"
    other.write_bytes(b"BM....")
    with pytest.raises(DataError, match=r"unknown data format '\.bmp'"):
        load_values(other)
    with pytest.raises(ImageFileError, match="not an image file"):
        read_image_file(other)


# ---- sources and splits ---------------------------------------------------------------------------


def mnist_folder(root: Path, train: int = 20, test: int = 6, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    write_idx(root / f"train-images-idx3-ubyte{suffix}", numbered(train, 6, 6, 1)[..., 0], gz=gz)
    write_idx(root / f"t10k-images-idx3-ubyte{suffix}", numbered(test, 6, 6, 1, seed=1)[..., 0], gz=gz)
    return root


def test_split_valid_is_seeded_disjoint_and_complete() -> None:
    train = np.arange(100)
    rest, valid = split_valid(train, 30, seed=3)
    assert len(rest) == 70 and len(valid) == 30
    assert sorted(np.concatenate([rest, valid]).tolist()) == list(range(100))
    assert np.all(np.diff(rest) > 0) and np.all(np.diff(valid) > 0)  # original order kept
    again = split_valid(train, 30, seed=3)
    np.testing.assert_array_equal(again[1], valid)
    assert not np.array_equal(split_valid(train, 30, seed=4)[1], valid)
    with pytest.raises(ValueError, match="0 <= valid < 100"):
        split_valid(train, 100, seed=0)


@pytest.mark.parametrize("kind", ["fashion_mnist", "mnist"])
def test_idx_source_splits(tmp_path: Path, kind: str) -> None:
    root = mnist_folder(tmp_path / "m", gz=kind == "mnist")
    args = {"root": str(root), "valid": 5, "seed": 2}
    train = load_images(kind, args, str(tmp_path), "train")
    valid = load_images(kind, args, str(tmp_path), "valid")
    test = load_images(kind, args, str(tmp_path), "test")
    assert (len(train), len(valid), len(test)) == (15, 5, 6)
    ids = sorted(np.concatenate([train[:, 0, 0, 0], valid[:, 0, 0, 0]]).tolist())
    assert ids == list(range(20))
    assert peek_images(kind, args, str(tmp_path), "valid").count == 5
    assert peek_images(kind, args, str(tmp_path), "train").shape == (6, 6, 1)
    limited = load_images(kind, {**args, "limit": 12}, str(tmp_path), "train")
    assert len(limited) == 7 and limited[:, 0, 0, 0].max() < 12


def test_relative_root_and_pcdsl_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mnist_folder(tmp_path / "here" / "data" / "mnist")
    assert len(load_images("mnist", {"root": None}, str(tmp_path / "here"), "train")) == 20
    mnist_folder(tmp_path / "shared" / "mnist", train=9)
    monkeypatch.setenv("PCDSL_DATA", str(tmp_path / "shared"))
    assert len(load_images("mnist", {"root": None}, str(tmp_path / "here"), "train")) == 9
    assert len(load_images("mnist", {"root": "data/mnist"}, str(tmp_path / "here"), "train")) == 20


def test_cifar10_source(tmp_path: Path) -> None:
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    for i in range(1, 6):
        write_cifar(root / f"data_batch_{i}.bin", numbered(2, 32, 32, 3, seed=i), np.array([i, 0]))
    write_cifar(root / "test_batch.bin", numbered(3, 32, 32, 3, seed=9), np.array([1, 2, 3]))
    for given in (root, tmp_path):  # the batches folder itself, or the folder holding it
        train = load_images("cifar10", {"root": str(given)}, ".", "train")
        assert train.shape == (10, 32, 32, 3)
        np.testing.assert_array_equal(train[2:4], numbered(2, 32, 32, 3, seed=2))
    assert len(load_images("cifar10", {"root": str(root)}, ".", "test")) == 3
    (root / "data_batch_4.bin").unlink()
    with pytest.raises(DataError, match=r"data_batch_4\.bin"):
        load_images("cifar10", {"root": str(root)}, ".", "train")


def test_imagenet_source_layouts(tmp_path: Path) -> None:
    official = tmp_path / "official"
    official.mkdir()
    for i in (1, 2, 10):  # numeric order, not text order
        write_imagenet(official / f"train_data_batch_{i}.npz", numbered(2, 8, 8, 3, seed=i))
    write_imagenet(official / "val_data.npz", numbered(3, 8, 8, 3, seed=0))
    train = load_images("imagenet", {"root": "official", "size": 8}, str(tmp_path), "train")
    np.testing.assert_array_equal(train[4:], numbered(2, 8, 8, 3, seed=10))
    assert len(load_images("imagenet", {"root": "official"}, str(tmp_path), "test")) == 3
    folders = tmp_path / "folders"
    (folders / "train").mkdir(parents=True)
    (folders / "val").mkdir()
    write_imagenet(folders / "train" / "a.npz", numbered(4, 8, 8, 3))
    write_imagenet(folders / "val" / "b.npz", numbered(2, 8, 8, 3))
    assert len(load_images("imagenet", {"root": str(folders)}, ".", "test")) == 2
    one = official / "val_data.npz"
    assert len(load_images("imagenet", {"root": str(one)}, ".", "train")) == 3
    with pytest.raises(DataError, match="no test split"):
        load_images("imagenet", {"root": str(one)}, ".", "test")
    with pytest.raises(DataError, match="holds 8x8x3 images, but the source says size = 32"):
        peek_images("imagenet", {"root": str(official), "size": 32}, ".", "train")


def test_images_source_with_test_file(tmp_path: Path) -> None:
    np.save(tmp_path / "train.npy", numbered(10, 4, 4, 1)[..., 0])
    write_idx(tmp_path / "test-images-idx3-ubyte", numbered(3, 4, 4, 1)[..., 0])
    args = {"path": "train.npy", "test": "test-images-idx3-ubyte", "valid": 2}
    assert len(load_images("images", args, str(tmp_path), "train")) == 8
    assert load_images("images", args, str(tmp_path), "test").shape == (3, 4, 4, 1)
    with pytest.raises(DataError, match="no test file"):
        load_images("images", {"path": "train.npy"}, str(tmp_path), "test")


def test_valid_split_errors(tmp_path: Path) -> None:
    root = mnist_folder(tmp_path)
    with pytest.raises(DataError, match="valid = 20 leaves no training images: the training files hold 20"):
        load_images("mnist", {"root": str(root), "valid": 20}, ".", "train")
    with pytest.raises(DataError, match="no validation split"):
        load_images("mnist", {"root": str(root)}, ".", "valid")


def test_image_source_problem(tmp_path: Path) -> None:
    def source(kind: str, **args: object) -> DataSource:
        return DataSource(kind, {"split": "train", "valid": 0, **args}, str(tmp_path), None)  # type: ignore[arg-type]

    assert image_source_problem(source("mnist", root="nowhere")) is not None
    assert "nowhere" in str(image_source_problem(source("mnist", root="nowhere")))
    mnist_folder(tmp_path / "m")
    assert image_source_problem(source("mnist", root="m")) is None
    assert "leaves no training images" in str(image_source_problem(source("mnist", root="m", valid=25)))
    assert image_source_problem(source("debd", name="x", root=None)) is None  # not an image source
    (tmp_path / "m" / "t10k-images-idx3-ubyte.gz").unlink()
    assert image_source_problem(source("mnist", root="m")) is None  # test not asked for
    assert "t10k" in str(image_source_problem(source("mnist", root="m"), splits=("train", "test")))


def test_image_files_lists_what_is_read(tmp_path: Path) -> None:
    root = mnist_folder(tmp_path, gz=False)
    assert image_files("mnist", {"root": str(root)}, ".", "valid") == [root / "train-images-idx3-ubyte"]
    with pytest.raises(DataError, match="not an image source"):
        image_files("debd", {}, ".", "train")
