"""The dock widget: fine-tune from an Image and a Points layer, predict, suggest where to click next, save.

GUI glue only. Each action runs a command-line tool's own code in a napari `thread_worker`, so the GUI never
blocks: the fine-tune is `scripts/finetune.py`'s `main` (configs/finetune.yaml; its input checks, resume and
held-out click checks included), prediction is configs/inference.yaml (`monai.bundle.run`, as the fine-tune's own
prediction step) and suggestions are `scripts/suggest_clicks.py`'s `main` (bundle/pseudo_labels/suggest.py).
Progress, cancel and each round's layers come from `bundle.handlers.run_events`. A bad input shows the tool's
one-line 'mitoda: error: ...' message, in the widget and as a napari notification. The layers are handed to the
tools as files in the output folder (layer_image.tif, layer_points.csv), unless the Image layer was opened from a
TIFF file of the same shape, which is then read directly; the layer's scale is the tools' --pixel_size.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import threading
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image, Points
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from mitoda_napari._repo import REPO, script

IMAGE_FILE, POINTS_FILE, SUGGESTIONS_FILE = "layer_image.tif", "layer_points.csv", "suggestions.csv"


class _Relay(QObject):
    """Carries `run_events` from the worker thread to the GUI thread (a queued Qt signal)."""

    event = Signal(object)


def error_message(exc: BaseException) -> str | None:
    """The one-line message of a failed run as the command line prints it ('mitoda: error: ...'), or None for a
    cancelled run."""
    from bundle.errors import find_input_error
    from bundle.handlers.run_events import Cancelled

    seen, cause = set(), exc
    while cause is not None and id(cause) not in seen:  # MONAI may wrap the error in a RuntimeError
        if isinstance(cause, Cancelled):
            return None
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    found = find_input_error(exc)
    if isinstance(exc, ToolError) or found is not None:
        text = str(exc if isinstance(exc, ToolError) else found)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return "mitoda: error: " + " ".join(text.split())


def on_slices(stack: np.ndarray, slices: list[int], depth: int):
    """A (depth, Y, X) lazy volume holding `stack`'s slices at z = `slices` and zeros elsewhere (a round's maps of
    the adapted slices, shown over the whole volume without a full copy)."""
    import dask.array as da

    where = {z: i for i, z in enumerate(slices)}
    zeros = da.zeros(stack.shape[1:], dtype=stack.dtype, chunks=stack.shape[1:])
    return da.stack([da.from_array(stack[where[z]], chunks=stack.shape[1:]) if z in where else zeros
                     for z in range(depth)])  # fmt: skip


class MitodaWidget(QWidget):
    """Fine-tune, predict, suggest clicks and save, on an Image layer (Z, Y, X) and a Points layer of clicks.

    Args:
        napari_viewer: the viewer (napari passes it to a dock widget contribution).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.worker = None
        self.cancel = threading.Event()
        self.relay = _Relay()
        self.relay.event.connect(self._on_event)
        self._slices: list[int] = []
        self._image: Image | None = None
        self.last_error, self._what = "", ""
        self.cancelled = False

        self.image_combo, self.points_combo = _LayerCombo(napari_viewer, Image), _LayerCombo(napari_viewer, Points)
        self.output_dir = QLineEdit(str(Path.home() / "mitoda" / "finetune"))
        self.slices = QLineEdit()
        self.slices.setPlaceholderText("all (e.g. 0-119:3)")
        self.iterations, self.interval, self.rounds = _spin(1600), _spin(400), _spin(4)
        self.holdout = QDoubleSpinBox(minimum=0.0, maximum=0.95, singleStep=0.05, value=0.2)
        self.start_model = QLineEdit(str(REPO / "models" / "source_model.pt"))
        self.options = QLineEdit()
        self.options.setPlaceholderText("--KEY VALUE overrides, e.g. --tta_views 1")
        self.finetune_button, self.cancel_button = QPushButton("Fine-tune"), QPushButton("Cancel")
        self.resume_button = QPushButton("Resume")
        self.round_bar, self.iteration_bar = QProgressBar(), QProgressBar()
        self.round_bar.setFormat("round %v/%m")
        self.iteration_bar.setFormat("iteration %v/%m")
        self.model = QLineEdit(str(REPO / "models" / "model.pt"))
        self.prediction_dir = QLineEdit(str(Path.home() / "mitoda" / "prediction"))
        self.predict_button = QPushButton("Predict")
        self.k = _spin(20)
        self.suggest_button = QPushButton("Suggest clicks")
        self.save_button = QPushButton("Save model and outputs...")
        self.status = QLabel("ready")
        self.error = QLabel("")
        self.error.setStyleSheet("color: #e05050")
        for label in (self.status, self.error):
            label.setWordWrap(True)

        layout = QVBoxLayout(self)
        inputs = QFormLayout()
        for row in (("image", self.image_combo), ("clicks", self.points_combo), ("output folder", self.output_dir)):
            inputs.addRow(*row)
        layout.addLayout(inputs)
        layout.addWidget(_group("Fine-tune", [
            ("slices", self.slices), ("iterations", self.iterations), ("iterations per round", self.interval),
            ("rounds", self.rounds), ("held-out clicks", self.holdout), ("start model", self.start_model),
            ("options", self.options), ("", _row(self.finetune_button, self.cancel_button, self.resume_button)),
            ("", self.round_bar), ("", self.iteration_bar)]))  # fmt: skip
        layout.addWidget(_group("Predict and suggest", [
            ("model", self.model), ("prediction folder", self.prediction_dir), ("", self.predict_button),
            ("suggestions", self.k), ("", self.suggest_button)]))  # fmt: skip
        layout.addWidget(self.save_button)
        layout.addWidget(self.status)
        layout.addWidget(self.error)
        layout.addStretch()

        self.finetune_button.clicked.connect(self.finetune)
        self.resume_button.clicked.connect(self.finetune)
        self.cancel_button.clicked.connect(self.request_cancel)
        self.predict_button.clicked.connect(self.predict)
        self.suggest_button.clicked.connect(self.suggest)
        self.save_button.clicked.connect(self._save_dialog)
        self._set_running(False)

    # ------------------------------------------------------------------------------------------------- actions
    def finetune(self) -> None:
        """Fine-tune in the background (the same output folder again continues a cancelled run)."""
        inputs = self._inputs(points=True)
        if inputs is None:
            return
        image, points, pixel_size = inputs
        argv = ["--target_image", IMAGE_ARG, "--points", points, "--output_dir", self._folder(self.output_dir),
                "--num_iterations", str(self.iterations.value()), "--val_interval", str(self.interval.value()),
                "--num_rounds", str(self.rounds.value()), "--holdout_clicks", str(self.holdout.value()),
                "--checkpoint", self.start_model.text()]  # fmt: skip
        argv += ["--slices", self.slices.text()] if self.slices.text().strip() else []
        argv += ["--pixel_size", pixel_size] if pixel_size else []
        argv += shlex.split(self.options.text())
        from bundle.data.io import parse_slices

        depth = self._image.data.shape[0] if self._image.ndim == 3 else 1  # a 2D image is one slice
        try:
            self._slices = parse_slices(self.slices.text().strip() or None, depth, path="--slices")
        except Exception:  # noqa: BLE001 - the fine-tune's own check reports it as one line
            self._slices = []
        self.round_bar.setRange(0, self.rounds.value())
        self.round_bar.setValue(0)
        self.iteration_bar.setRange(0, self.iterations.value())
        self.iteration_bar.setValue(0)
        self._start("fine-tune", _run_finetune, image, argv, self.relay.event.emit, self.cancel,
                    done=self._finetuned)  # fmt: skip

    def request_cancel(self) -> None:
        """Stop the running fine-tune after its current iteration (or slice of a round)."""
        if self.worker is not None:
            self.cancel.set()
            self.status.setText("cancelling...")

    def predict(self) -> None:
        """Predict the Image layer with the model of the 'model' field into the prediction folder."""
        inputs = self._inputs(points=False)
        if inputs is None:
            return
        image, _, pixel_size = inputs
        slices = self.slices.text().strip() or None
        folder = self._folder(self.prediction_dir)
        self._start("prediction", _run_predict, image, self._folder(self.output_dir), self.model.text(), folder,
                    pixel_size, slices, done=self._show_predictions)  # fmt: skip

    def suggest(self) -> None:
        """Add the k instances the model is least sure about as a Points layer 'suggestions' (where to click)."""
        inputs = self._inputs(points=True)
        if inputs is None:
            return
        image, points, _ = inputs
        output = str(Path(self._folder(self.output_dir)) / SUGGESTIONS_FILE)
        argv = ["--image", IMAGE_ARG, "--points", points, "--checkpoint", self.model.text(), "--k",
                str(self.k.value()), "--format", "zyx", "--output", output]  # fmt: skip
        argv += ["--slices", self.slices.text()] if self.slices.text().strip() else []
        self._start("suggestions", _run_script, "suggest_clicks", argv, image, self._folder(self.output_dir),
                    done=lambda _: self._show_suggestions(output))  # fmt: skip

    def save_to(self, folder: str | os.PathLike) -> list[Path]:
        """Copy the fine-tuned model.pt and its predictions (else the last prediction folder) into `folder`."""
        folder, run = Path(folder).expanduser(), Path(self._folder(self.output_dir))
        prediction = Path(self._folder(self.prediction_dir))
        sources = [p for p in (run / "model.pt", run / "predictions") if p.exists()]
        sources = sources or ([prediction] if prediction.is_dir() else [])
        if not sources:
            self._show_error(f"mitoda: error: {run}: nothing to save yet; fine-tune or predict first")
            return []
        folder.mkdir(parents=True, exist_ok=True)
        saved = []
        for source in sources:
            target = folder / source.name
            if source.is_dir():
                shutil.copytree(source, target, dirs_exist_ok=True)
            else:
                shutil.copyfile(source, target)
            saved.append(target)
        self.status.setText(f"saved {', '.join(p.name for p in saved)} to {folder}")
        return saved

    @staticmethod
    def _folder(field: QLineEdit) -> str:
        """A folder field's path, absolute (a relative one: from the folder napari was started in)."""
        return str(Path(field.text()).expanduser().absolute())

    def _save_dialog(self) -> None:
        """Ask for a folder and save into it."""
        folder = QFileDialog.getExistingDirectory(self, "Save the model and outputs into")
        if folder:
            self.save_to(folder)

    # ------------------------------------------------------------------------------------------------- inputs
    def _inputs(self, points: bool) -> tuple[str | Any, str, str | None] | None:
        """(image file or layer data for `_with_image`, points CSV, --pixel_size or None) for the tools, from the
        chosen layers; None (and the one-line error shown) when they cannot be."""
        from bundle.data.pixel_size import scale_pixel_size
        from bundle.data.points import write_points
        from bundle.errors import InputError, input_error
        from bundle.outputs import check_output_dir

        self.error.setText("")
        image, clicks = self.image_combo.layer(), self.points_combo.layer()
        if image is None or (points and clicks is None):
            missing = "an Image layer (your EM volume)" if image is None else "a Points layer (your clicks)"
            self._show_error(f"mitoda: error: no layer chosen; open or add {missing}")
            return None
        try:
            folder = check_output_dir(self._folder(self.output_dir))
            size = scale_pixel_size(image.scale, getattr(image, "units", None), where=f"layer {image.name!r} scale")
            image_file = self._image_file(image)
            points_file = ""
            if points:
                points_file = str(folder / POINTS_FILE)
                data = np.rint(np.asarray(clicks.data, dtype=np.float64)).reshape(len(clicks.data), -1)
                if not len(data) or data.shape[1] not in (2, 3):
                    problem = f"has {data.shape[1]}-D points" if len(data) else "has no points"
                    fix = "click on mitochondria in a (Z, Y, X) or 2D layer"
                    raise input_error(f"layer {clicks.name!r}", problem, fix)
                if data.shape[1] == 2:  # a 2D layer: slice 0, as the tools read a 2D image as one slice
                    data = np.column_stack([np.zeros(len(data)), data])
                write_points(points_file, data)
        except (InputError, ValueError) as exc:
            self._show_error(error_message(exc))
            return None
        self._image = image
        return image_file, points_file, None if size is None else f"{size[0]:g},{size[1]:g}"

    @staticmethod
    def _image_file(image: Image) -> str | Any:
        """The TIFF file the Image layer was opened from when its shape matches, else the layer's data (the
        worker writes it to a file: `_with_image`)."""
        from bundle.data.io import SliceVolume

        source = getattr(image.source, "path", None)
        if source and Path(source).is_file() and Path(source).suffix.lower() in (".tif", ".tiff"):
            try:
                with SliceVolume(source) as volume:
                    if tuple(volume.shape) == tuple(image.data.shape):
                        return str(source)
            except Exception:  # noqa: BLE001 - not readable as a volume: its data is written out instead
                pass
        return image.data

    # ------------------------------------------------------------------------------------------------- running
    def _start(self, what: str, function, *args: Any, done) -> None:
        """Run `function(*args)` in a worker thread; `done(result)` in the GUI thread when it returns."""
        if self.worker is not None:
            self._show_error(f"mitoda: error: a {self._what} is running; wait for it or cancel it")
            return
        self.cancel.clear()
        self.cancelled, self._what = False, what
        self.status.setText(f"{what} running...")
        self.worker = create_worker(function, *args, _ignore_errors=True)  # shown as one line by _failed
        self.worker.returned.connect(done)
        self.worker.errored.connect(self._failed)
        self.worker.finished.connect(self._finished)
        self._set_running(True)
        self.worker.start()

    def _finished(self) -> None:
        """The worker ended, however it ended."""
        self.worker = None
        self._set_running(False)

    def _set_running(self, running: bool) -> None:
        """Enable the buttons that fit the state."""
        for button in (self.finetune_button, self.predict_button, self.suggest_button, self.save_button):
            button.setEnabled(not running)
        self.resume_button.setEnabled(not running and self.cancelled)
        self.cancel_button.setEnabled(running)

    def _failed(self, exc: BaseException) -> None:
        """Show a failed run's one-line error; a cancelled run can be resumed."""
        message = error_message(exc)
        if message is None:
            self.cancelled = True
            self.status.setText("cancelled: Resume continues from the last finished epoch")
            show_info("mitoda: fine-tune cancelled")
            return
        self.status.setText(f"{self._what} failed")
        self._show_error(message)

    def _show_error(self, message: str) -> None:
        """The one-line error, in the widget and as a napari notification."""
        self.last_error = message
        self.error.setText(message)
        show_error(message)

    def _on_event(self, event: dict) -> None:
        """Progress and round layers of the running fine-tune (GUI thread)."""
        if event["kind"] == "iteration":
            self.iteration_bar.setRange(0, event["max_iterations"])
            self.iteration_bar.setValue(event["iteration"])
        elif event["kind"] == "round":
            self.round_bar.setRange(0, event["num_rounds"])
            self.round_bar.setValue(event["round"])
            self._show_round(event)
        self.status.setText(f"fine-tune: round {self.round_bar.value()}/{self.round_bar.maximum()}, iteration "
                            f"{self.iteration_bar.value()}/{self.iteration_bar.maximum()}")  # fmt: skip

    def _show_round(self, event: dict) -> None:
        """Round r's probability, instances and pseudo-labels (of the adapted slices) as layers."""
        image = self._image
        depth = image.data.shape[0] if image.ndim == 3 else 1
        if len(self._slices) != len(event["probability"]):
            return
        shape = event["probability"].shape[1:]  # at the model's scale when the volume was resampled
        scale = [*image.scale[:-2], *(s * n / m for s, n, m in zip(image.scale[-2:], image.data.shape[-2:], shape))]
        r = event["round"]
        keywords = {"scale": scale, "translate": image.translate}
        self._replace("image", on_slices(event["probability"], self._slices, depth), name=f"round {r} probability",
                      colormap="magma", blending="additive", visible=False, **keywords)  # fmt: skip
        self._replace("labels", on_slices(event["instances"], self._slices, depth), name=f"round {r} instances",
                      visible=False, **keywords)  # fmt: skip
        self._replace("labels", on_slices(event["labels"], self._slices, depth), name=f"round {r} pseudo-labels",
                      opacity=0.4, **keywords)  # fmt: skip

    def _replace(self, kind: str, data: Any, name: str, **keywords: Any) -> None:
        """Add a layer, in place of an earlier one of the same name (a round run again after a resume); over a 2D
        image, the tools' one slice (z = 0) is shown as 2D."""
        if self._image.ndim == 2:
            data = data[:, 1:] if kind == "points" else data[0]
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        getattr(self.viewer, f"add_{kind}")(data, name=name, **keywords)

    def _finetuned(self, layers: list) -> None:
        """Show the fine-tuned model's predictions; predict and suggest with that model from now on."""
        run = Path(self._folder(self.output_dir))
        self.cancelled = False
        self.model.setText(str(run / "model.pt"))
        self._show_predictions(layers)
        self.status.setText(f"fine-tuned: {run / 'model.pt'}; predictions in {run / 'predictions'}")

    def _show_predictions(self, layers: list) -> None:
        """The probability and instances layers a worker read (replacing earlier ones of the same name), on the
        image layer's grid."""
        for data, meta, kind in layers:
            meta.update(scale=self._image.scale, translate=self._image.translate)
            meta.pop("units", None)
            self._replace(kind, data, **meta)
        if self._what == "prediction":
            self.status.setText(f"predicted into {self._folder(self.prediction_dir)}")

    def _show_suggestions(self, path: str) -> None:
        """The suggested clicks as a Points layer, best first."""
        from bundle.data.points import read_points

        points = read_points(path).astype(np.float64)
        self._replace("points", points, name="suggestions", size=14, face_color="yellow", scale=self._image.scale,
                      translate=self._image.translate)  # fmt: skip
        self.status.setText(f"{len(points)} suggestions: click the ones that are mitochondria into your clicks layer")


# ----------------------------------------------------------------------------------------------- worker functions
class ToolError(Exception):
    """A command-line tool's one-line error, raised in the worker (whose thread would end silently on the tool's
    `CommandError`, a SystemExit)."""


IMAGE_ARG = "{image}"  # in a tool's argv: replaced by the image file in the worker (`_with_image`)


def _with_image(argv: list[str], image: str | Any, folder: str) -> list[str]:
    """`argv` with the image file: `image` itself, or layer data written to `folder`/layer_image.tif first (as it
    is: a 2D layer stays 2D, as the tools read a 2D file)."""
    from bundle.data.io import write_tiff

    if not isinstance(image, str):
        write_tiff(Path(folder) / IMAGE_FILE, np.asarray(image))
        image = str(Path(folder) / IMAGE_FILE)
    return [image if arg == IMAGE_ARG else arg for arg in argv]


def _run_script(name: str, argv: list[str], image: str | Any, folder: str) -> int:
    """scripts/<name>.py's `main(argv)` (with the image file, `_with_image`); its one-line error
    (bundle.errors.CommandError) becomes a `ToolError`."""
    from bundle.errors import CommandError

    try:
        return script(name).main(_with_image(argv, image, folder))
    except CommandError as exc:
        raise ToolError(exc.message) from None


def _prediction_layers(folder: Path) -> list:
    """A prediction folder's probability and instances as layer tuples, read in the worker."""
    from mitoda_napari._io import read_prediction_layers

    return [layer for layer in read_prediction_layers(folder) if layer[1]["name"] != "density"]


def _run_finetune(image: str | Any, argv: list[str], callback, cancel: threading.Event) -> list:
    """scripts/finetune.py's `main(argv)`, its progress and rounds sent to `callback`, stopped once `cancel` is set;
    the current folder, which `main` changes to the repository's, is restored afterwards. Returns the layers of
    its predictions."""
    from bundle.handlers import run_events

    folder = argv[argv.index("--output_dir") + 1]
    with run_events.listening(callback, cancel), contextlib.chdir(os.getcwd()):
        _run_script("finetune", argv, image, folder)
    return _prediction_layers(Path(folder) / "predictions")


def _run_predict(image: str | Any, folder: str, checkpoint: str, output_dir: str, pixel_size: str | None,
                 slices: str | None) -> list:  # fmt: skip
    """configs/inference.yaml on `image` (layer data: written into `folder` first), as scripts/finetune.py's
    prediction step runs it; returns the layers of the prediction."""
    import monai.bundle

    from bundle.errors import find_input_error, input_error

    (image,) = _with_image([IMAGE_ARG], image, folder)
    if not Path(checkpoint).expanduser().is_file():
        raise input_error(checkpoint, "no such model file", "pass a model.pt (models/model.pt, or a fine-tune's)")
    try:
        monai.bundle.run(config_file=str(REPO / "configs" / "inference.yaml"), bundle_root=str(REPO),
                         input_image=image, checkpoint=str(Path(checkpoint).expanduser().absolute()),
                         output_dir=str(Path(output_dir).expanduser().absolute()), pixel_size=pixel_size,
                         slices=slices)  # fmt: skip
    except Exception as exc:
        error = find_input_error(exc)
        if error is None:
            raise
        raise error from None
    return _prediction_layers(Path(output_dir))


# ----------------------------------------------------------------------------------------------- small widgets
class _LayerCombo(QWidget):
    """A choice of the viewer's layers of one type, kept up to date."""

    def __init__(self, viewer, kind: type) -> None:
        from qtpy.QtWidgets import QComboBox

        super().__init__()
        self.viewer, self.kind = viewer, kind
        self.combo = QComboBox()
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        for event in (viewer.layers.events.inserted, viewer.layers.events.removed, viewer.layers.events.reordered):
            event.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        """List the layers of the type, keeping the current choice when it still exists."""
        current = self.combo.currentText()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, self.kind)]
        self.combo.clear()
        self.combo.addItems(names)
        if current in names:
            self.combo.setCurrentText(current)

    def layer(self):
        """The chosen layer, or None."""
        name = self.combo.currentText()
        return self.viewer.layers[name] if name in self.viewer.layers else None


def _spin(value: int) -> QSpinBox:
    """A spin box of positive integers."""
    return QSpinBox(minimum=1, maximum=1_000_000, value=value)


def _row(*widgets: QWidget) -> QWidget:
    """Widgets side by side."""
    row = QWidget()
    layout = QHBoxLayout(row)
    layout.setContentsMargins(0, 0, 0, 0)
    for widget in widgets:
        layout.addWidget(widget)
    return row


def _group(title: str, rows: list[tuple[str, QWidget]]) -> QGroupBox:
    """A titled box of labelled rows."""
    box = QGroupBox(title)
    form = QFormLayout(box)
    for text, widget in rows:
        form.addRow(text, widget)
    return box
