"""The napari plugin (napari_mitoda/) as a user drives it, headless: the dock widget from the plugin's manifest on a
real EPFL crop (fine-tune with a cancel and a resume, each round's layers, suggestions, save, prediction with the
shipped model), one-line errors for bad layers, and the reader and writer contributions.

Qt runs on its offscreen platform (no display, no Xvfb). That platform has no OpenGL (Qt warns "QOpenGLWidget is
not supported on this platform"), so napari's canvas cannot ask for the GL limits it sizes textures by: `_no_gl`
answers for it. The canvas then draws nothing, and everything else (layers, widgets, workers) runs as it does on a
desktop.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt starts: this module's tests only use Qt

import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tifffile  # noqa: E402

from bundle.data.points import read_points, write_points  # noqa: E402
from bundle.handlers import run_events  # noqa: E402
from tests.helpers import EPFL, REPO, need  # noqa: E402

SLICES, WINDOW = slice(0, 4), (slice(192, 448), slice(192, 448))  # 4 EPFL slices, 256 x 256: 5 published clicks
WAIT_MS = 150_000
FAST = "--tta_views 1 --batch_size 1 --num_workers 0"  # config overrides, as on the command line


@pytest.fixture(scope="module")
def crop(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The EPFL crop as a TIFF file and an array, with the published clicks (15 %, split 1) that fall in it."""
    image = tifffile.imread(need(EPFL / "training.tif"), key=range(SLICES.start, SLICES.stop))[(slice(None), *WINDOW)]
    points = read_points(need(EPFL / "points" / "15pct_split1.csv"))
    inside = (points[:, 0] < SLICES.stop) & np.all([(points[:, i + 1] >= w.start) & (points[:, i + 1] < w.stop)
                                                    for i, w in enumerate(WINDOW)], axis=0)  # fmt: skip
    clicks = points[inside] - [0, WINDOW[0].start, WINDOW[1].start]
    assert len(clicks) >= 5
    path = tmp_path_factory.mktemp("crop") / "epfl_crop.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    return {"path": path, "image": image, "clicks": clicks.astype(np.float64)}


@pytest.fixture(autouse=True)
def _no_gl(monkeypatch: pytest.MonkeyPatch) -> None:
    """Answer napari's OpenGL queries where Qt's offscreen platform has no OpenGL (see the module docstring)."""
    if os.environ.get("QT_QPA_PLATFORM") != "offscreen":
        return
    import napari._vispy.canvas
    import napari._vispy.layers.base
    import napari._vispy.layers.image
    import napari._vispy.layers.labels

    monkeypatch.setattr(napari._vispy.layers.image, "get_gl_extensions", lambda: "")
    vispy = napari._vispy
    for module in (vispy.canvas, vispy.layers.base, vispy.layers.image, vispy.layers.labels):
        monkeypatch.setattr(module, "get_max_texture_sizes", lambda: (4096, 2048))


@pytest.fixture
def errors(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The messages the widget shows as napari error notifications."""
    import mitoda_napari._widget

    shown: list[str] = []
    monkeypatch.setattr(mitoda_napari._widget, "show_error", shown.append)
    return shown


@pytest.fixture
def viewer_widget(make_napari_viewer, crop: dict, tmp_path: Path):
    """A viewer with the crop, its clicks and the plugin's dock widget (from its npe2 manifest), set to a tiny run."""
    viewer = make_napari_viewer()
    viewer.open(crop["path"], plugin="mitoda-napari")  # the reader contribution: opened from its file
    viewer.add_points(crop["clicks"], name="clicks", size=10)
    _, widget = viewer.window.add_plugin_dock_widget("mitoda-napari", "Fine-tune")
    widget.output_dir.setText(str(tmp_path / "run"))
    widget.prediction_dir.setText(str(tmp_path / "prediction.ome.zarr"))
    for box, value in ((widget.iterations, 4), (widget.interval, 2), (widget.rounds, 2), (widget.k, 3)):
        box.setValue(value)
    widget.options.setText(FAST)
    return viewer, widget


def _wait_idle(qtbot, widget) -> None:
    """Wait until the widget's background run has ended."""
    qtbot.waitUntil(lambda: widget.worker is None, timeout=WAIT_MS)


def test_finetune_cancel_resume_rounds_suggestions_and_save(viewer_widget, qtbot, tmp_path: Path, errors) -> None:
    viewer, widget = viewer_widget
    assert viewer.layers["epfl_crop"].colormap.name == "gray"  # the reader opens EM grey, not as a map
    run = tmp_path / "run"
    reached, go, seen = threading.Event(), threading.Event(), []

    def hold_at_iteration_3(event: dict) -> None:  # in the worker thread: wait there until Cancel is clicked
        if event["kind"] == "iteration":
            seen.append(event["iteration"])
            if event["iteration"] == 3 and not reached.is_set():
                reached.set()
                go.wait(60)

    with run_events.listening(hold_at_iteration_3):
        widget.finetune_button.click()
        assert not widget.finetune_button.isEnabled() and widget.cancel_button.isEnabled()  # the GUI goes on
        qtbot.waitUntil(reached.is_set, timeout=WAIT_MS)
        widget.cancel_button.click()
        go.set()
        _wait_idle(qtbot, widget)
        assert not errors, errors
        assert widget.cancelled and widget.resume_button.isEnabled() and "cancelled" in widget.status.text()
        assert seen == [1, 2, 3] and not (run / "model.pt").exists()  # stopped at iteration 3: epoch 2 never ended
        assert (run / "checkpoints" / "checkpoint_epoch=1.pt").is_file()
        rounds = {f"round {r} {what}" for r in (1, 2) for what in ("probability", "instances", "pseudo-labels")}
        assert rounds <= {layer.name for layer in viewer.layers} and widget.round_bar.value() == 2  # at epoch starts
        for name in ("round 2 probability", "round 2 pseudo-labels"):
            layer = viewer.layers[name]
            assert layer.data.shape == crop_shape(viewer) and np.asarray(layer.data).max() > 0
        layer_count = len(viewer.layers)

        widget.resume_button.click()  # the same run again: continues from the epoch-1 checkpoint
        _wait_idle(qtbot, widget)
    assert not errors, errors
    assert seen[3:] == [3, 4], seen  # resumed after epoch 1, not from the start
    assert (run / "model.pt").is_file() and widget.model.text() == str(run / "model.pt")
    assert widget.iteration_bar.value() == 4 and widget.round_bar.value() == 2
    assert {"probability", "instances"} <= {layer.name for layer in viewer.layers}
    # round 2 ran after the epoch-1 checkpoint: the resumed run ran it again, in place of the cancelled run's layers
    assert len(viewer.layers) == layer_count + 2 and widget.round_bar.value() == 2
    assert viewer.layers["instances"].data.shape == crop_shape(viewer) and viewer.layers["instances"].data.max() > 0

    widget.suggest_button.click()  # where to click next, with the fine-tuned model
    _wait_idle(qtbot, widget)
    assert not errors, errors
    suggestions = viewer.layers["suggestions"].data
    assert 1 <= len(suggestions) <= 3 and np.all((suggestions >= 0) & (suggestions < crop_shape(viewer)))

    saved = widget.save_to(tmp_path / "saved")
    assert {p.name for p in saved} == {"model.pt", "predictions"}
    assert (tmp_path / "saved" / "predictions" / "instances.tif").is_file()


def crop_shape(viewer) -> tuple[int, ...]:
    """The shape of the EM crop layer."""
    return viewer.layers["epfl_crop"].data.shape


def test_predict_with_the_shipped_model_and_open_the_outputs(viewer_widget, qtbot, tmp_path: Path, errors) -> None:
    viewer, widget = viewer_widget
    assert widget.model.text() == str(REPO / "models" / "model.pt")
    viewer.layers["epfl_crop"].scale = (5, 9.2, 9.2)  # nm per pixel: passed on as --pixel_size 9.2,9.2
    widget.predict_button.click()
    _wait_idle(qtbot, widget)
    assert not errors, errors
    folder = tmp_path / "prediction.ome.zarr"
    assert (folder / "probability").is_dir() and viewer.layers["instances"].data.max() > 0
    viewer.layers.clear()
    viewer.open(folder, plugin="mitoda-napari")  # the reader: an OME-Zarr prediction folder
    kinds = {layer.name: type(layer).__name__ for layer in viewer.layers}
    assert kinds == {"probability": "Image", "density": "Image", "instances": "Labels"}
    assert viewer.layers["probability"].data.shape == (4, 256, 256)  # on the input's grid, predicted at 2x
    assert tuple(viewer.layers["probability"].scale[1:]) == (9.2, 9.2)  # the pixel size the folder states


def test_points_csv_reader_both_layouts_and_writer(make_napari_viewer, crop: dict, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    ours, napari_csv = tmp_path / "ours.csv", tmp_path / "napari.csv"
    write_points(ours, crop["clicks"])
    write_points(napari_csv, crop["clicks"], napari=True)
    for path in (ours, napari_csv):
        layer = viewer.open(path, plugin="mitoda-napari")[0]
        assert type(layer).__name__ == "Points" and np.array_equal(layer.data, crop["clicks"])
    layer.data = layer.data + [0, 0.4, -0.3]  # dragged a little: written as pixel indices
    written = tmp_path / "written.csv"
    layer.save(str(written), plugin="mitoda-napari")
    assert written.read_text().splitlines()[0] == "z,y,x"
    assert np.array_equal(read_points(written), crop["clicks"])


@pytest.mark.parametrize("case", ["points outside the image", "2D image"])
def test_a_bad_layer_shows_the_command_line_one_line_error(case: str, viewer_widget, qtbot, tmp_path: Path,
                                                           errors) -> None:  # fmt: skip
    viewer, widget = viewer_widget
    if case == "points outside the image":
        viewer.layers["clicks"].data = viewer.layers["clicks"].data + [0, 0, 300]
        fragment = "lies outside the volume of shape (Z, Y, X) = (4, 256, 256)"
    else:  # one slice: the clicks on slices 1-3 lie outside it
        viewer.layers.remove("epfl_crop")
        viewer.add_image(tifffile.imread(need(EPFL / "training.tif"), key=0)[WINDOW], name="slice")
        fragment = "lies outside the volume of shape (Z, Y, X) = (1, 256, 256)"
    widget.finetune_button.click()
    _wait_idle(qtbot, widget)
    message = widget.error.text()
    assert message.startswith("mitoda: error: ") and "\n" not in message and fragment in message, message
    assert errors == [message] and "failed" in widget.status.text()
    assert not (tmp_path / "run" / "finetune.json").exists()  # nothing written but the layers handed to the tool
    if case == "2D image":  # a layer from no file: its data was handed over as a file
        assert tifffile.imread(tmp_path / "run" / "layer_image.tif").shape == (256, 256)
    if case == "points outside the image":  # the very line the command line prints for the same files
        run = tmp_path / "run"
        assert not (run / "layer_image.tif").exists()  # the layer's own file was handed on
        cli = subprocess.run([sys.executable, str(REPO / "scripts" / "finetune.py"), "--target_image",
                              str(viewer.layers["epfl_crop"].source.path), "--points", str(run / "layer_points.csv"),
                              "--output_dir", str(run)], capture_output=True, text=True)  # fmt: skip
        assert cli.returncode == 2 and cli.stderr.strip() == message


def test_bundle_never_imports_napari_or_qt() -> None:
    """The runtime install has no napari or Qt: nothing in `bundle` may import them (the plugin only uses bundle)."""
    code = ("import sys, bundle, bundle.handlers, bundle.inference, bundle.pseudo_labels.suggest, bundle.data.points; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'PyQt6', 'PyQt5', 'vispy')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr[-2000:]


def test_a_2d_image_with_2d_clicks_is_one_slice(make_napari_viewer, qtbot, tmp_path: Path, errors) -> None:
    """As the command line reads a 2D file: one slice; the round and prediction layers come back as 2D."""
    viewer = make_napari_viewer()
    viewer.add_image(tifffile.imread(need(EPFL / "training.tif"), key=0)[WINDOW], name="slice")  # not from a file
    viewer.add_points([[228.0, 214.0], [80.0, 220.0]], name="clicks")  # two mitochondria of that crop (y, x)
    _, widget = viewer.window.add_plugin_dock_widget("mitoda-napari", "Fine-tune")
    widget.output_dir.setText(str(tmp_path / "run"))
    for box, value in ((widget.iterations, 2), (widget.interval, 1), (widget.rounds, 1)):
        box.setValue(value)
    widget.holdout.setValue(0)
    widget.options.setText(FAST)
    widget.finetune_button.click()
    _wait_idle(qtbot, widget)
    assert not errors, errors
    assert read_points(tmp_path / "run" / "layer_points.csv")[:, 0].tolist() == [0, 0]  # z = 0 added
    for name in ("round 1 pseudo-labels", "round 1 probability", "probability", "instances"):
        assert viewer.layers[name].data.shape == (256, 256), name
