"""Image models end to end: image sources in .pc files, `pcdsl eval`/`train` on image files and
`pcdsl sample -o grid.png`, and the mapping between image pixels and a circuit's variables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_images import mnist_folder, numbered, write_idx
from test_patches import decode_png

from pcdsl.cli import main
from pcdsl.data.layout import image_layout, images_as_rows, rows_to_images, variable_shape
from pcdsl.diagnostics import PcdslError
from pcdsl.frontend import check_file

CIRCUIT = """
data train = {source}
circuit pic {{
  var x[{shape}] : categorical({levels})
  structure = {structure}
}}
"""


def write_pc(folder: Path, source: str = 'images("train.npy")', shape: str = "4, 4", levels: int = 256,
             structure: str = "hclt(x, hidden = 2, data = train)") -> Path:
    path = folder / "pic.pc"
    path.write_text(CIRCUIT.format(source=source, shape=shape, levels=levels, structure=structure))
    return path


def test_variable_shape_and_layout(tmp_path: Path) -> None:
    np.save(tmp_path / "train.npy", numbered(6, 4, 4, 1)[..., 0])
    for shape, expected, layout in (("4, 4", (4, 4), (4, 4, 1, False)), ("3, 2, 2", (3, 2, 2), (2, 2, 3, True)),
                                    ("2, 2, 3", (2, 2, 3), (2, 2, 3, False)), ("16", (16,), (4, 4, 1, False))):
        graph = check_file(write_pc(tmp_path, shape=shape, structure="fully_factorized(x)")).circuit(None)
        assert variable_shape(graph) == expected
        assert image_layout(variable_shape(graph)) == layout
    assert image_layout((5, 7)) == (5, 7, 1, False) and image_layout((12,)) == (2, 2, 3, False)
    assert image_layout((2, 5, 5)) is None and image_layout((7,)) is None


def test_images_as_rows_follows_the_circuit_order() -> None:
    images = np.arange(2 * 2 * 3 * 3).reshape(2, 2, 3, 3).astype(np.uint8)
    np.testing.assert_array_equal(images_as_rows(images, (2, 3, 3)), images.reshape(2, -1))
    np.testing.assert_array_equal(images_as_rows(images, (18,)), images.reshape(2, -1))
    planes = images_as_rows(images, (3, 2, 3))  # channel-first: all of red, then green, then blue
    np.testing.assert_array_equal(planes[1, :6], images[1, :, :, 0].reshape(-1))
    with pytest.raises(ValueError, match="the images are 2x3 with 3 channels, but the circuit's variables form "
                       r"an array of shape \(3, 2\)"):
        images_as_rows(images, (3, 2))


def test_rows_to_images_stretches_small_domains(tmp_path: Path) -> None:
    np.save(tmp_path / "train.npy", numbered(6, 4, 4, 1)[..., 0])
    graph = check_file(write_pc(tmp_path, levels=4, structure="fully_factorized(x)")).circuit(None)
    rows = np.array([[0, 1, 2, 3] * 4])
    assert rows_to_images(rows, graph)[0, 0, :, 0].tolist() == [0, 85, 170, 255]


def test_image_source_builds_an_hclt_at_check_time(tmp_path: Path) -> None:
    np.save(tmp_path / "train.npy", numbered(30, 4, 4, 1)[..., 0])
    graph = check_file(write_pc(tmp_path, source='images("train.npy", valid = 5)')).circuit(None)
    assert len(graph.variables) == 16
    mnist_folder(tmp_path / "fm")
    graph = check_file(write_pc(tmp_path, source='fashion_mnist(root = "fm")', shape="6, 6")).circuit(None)
    assert len(graph.variables) == 36


@pytest.mark.parametrize(("source", "message"), [
    ('images("missing.npy")', "cannot read data 'train': no data file found"),
    ('mnist(root = "nowhere")', "no mnist files found"),
    ('images("train.npy", valid = 99)', "valid = 99 leaves no training images"),
])
def test_bad_image_sources_are_diagnostics(tmp_path: Path, source: str, message: str) -> None:
    np.save(tmp_path / "train.npy", numbered(6, 4, 4, 1)[..., 0])
    with pytest.raises(PcdslError) as info:
        check_file(write_pc(tmp_path, source=source))
    assert any(message in d.message for d in info.value.diagnostics)


def test_image_source_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(PcdslError) as info:
        check_file(write_pc(tmp_path, source='cifar10(split = dev)'))
    assert any("split" in d.message for d in info.value.diagnostics)
    with pytest.raises(PcdslError) as info:
        check_file(write_pc(tmp_path, source='imagenet()'))
    assert any("needs argument 'root'" in d.message for d in info.value.diagnostics)


def test_cli_eval_train_and_sample_on_image_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "train.npy", numbered(40, 4, 4, 1)[..., 0])
    write_idx(tmp_path / "test-images-idx3-ubyte.gz", numbered(8, 4, 4, 1)[..., 0], gz=True)
    pc = str(write_pc(tmp_path))
    assert main(["eval", pc, "--data", str(tmp_path / "test-images-idx3-ubyte.gz")]) == 0
    assert "8 samples" in capsys.readouterr().out
    model = str(tmp_path / "m.safetensors")
    assert main(["train", pc, "--data", str(tmp_path / "train.npy"), "--epochs", "1", "--full-epochs", "1",
                 "-q", "-o", model]) == 0
    capsys.readouterr()
    assert main(["sample", model, "-n", "5", "-o", str(tmp_path / "s.png"), "--scale", "3"]) == 0
    picture = decode_png((tmp_path / "s.png").read_bytes())
    assert picture.shape == (2 * 13 + 1, 3 * 13 + 1, 1)  # 5 samples: 3 columns, 2 rows of 12x12 cells
    np.save(tmp_path / "wrong.npy", numbered(3, 5, 4, 1)[..., 0])
    assert main(["eval", pc, "--data", str(tmp_path / "wrong.npy")]) == 1
    assert "the images are 5x4 with 1 channel, but the circuit's variables form an array of shape (4, 4)" \
        in capsys.readouterr().err


def test_cli_sample_png_needs_an_image_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pc = tmp_path / "flat.pc"
    pc.write_text("circuit c {\n  var a : bool\n  var b : categorical(3)\n  structure = fully_factorized([a, b])\n}\n")
    assert main(["sample", str(pc), "-o", str(tmp_path / "s.png")]) == 2
    assert "is not an image model" in capsys.readouterr().err


def test_plain_recipe_on_an_image_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "tr.npy", numbered(40, 4, 4, 3))
    np.save(tmp_path / "te.npy", numbered(6, 4, 4, 3, seed=1))
    recipe = tmp_path / "r.pc"
    recipe.write_text('recipe small {\n  data = images("tr.npy", test = "te.npy", valid = 8)\n'
                      '  model = hclt(over = data, hidden = 2)\n  train { em(epochs = 1, batch = 8) }\n'
                      '  report bpd(test)\n}\n')
    assert main(["run", str(recipe), "--out", str(tmp_path / "run"), "-q"]) == 0
    assert "test bpd" in capsys.readouterr().out
    model = str(tmp_path / "run" / "model.safetensors")
    assert main(["sample", model, "-n", "2", "-o", str(tmp_path / "s.png")]) == 0
    assert decode_png((tmp_path / "s.png").read_bytes()).shape == (6, 11, 3)  # RGB, two 4x4 cells
    assert main(["eval", model, "--data", str(tmp_path / "te.npy")]) == 0
    assert "6 samples" in capsys.readouterr().out
