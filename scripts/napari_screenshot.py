"""Make docs/images/napari_widget.png: the dock widget after a short real fine-tune on an EPFL crop (4 x 512², the
published 15 % clicks there; 8 iterations, 2 rounds), then 5 suggestions. Needs a display with OpenGL, e.g. Xvfb:
    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python scripts/napari_screenshot.py
(Debian: apt-get install xvfb libxcb-cursor0; bash scripts/setup.sh napari). About 1.5 min on 2 cores.
"""

import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import napari  # noqa: E402
import numpy as np  # noqa: E402
import tifffile  # noqa: E402
from PIL import Image  # noqa: E402
from qtpy.QtWidgets import QApplication  # noqa: E402

from bundle.data.points import read_points  # noqa: E402

EPFL = REPO.parent / "shared" / "data" / "epfl_hippocampus"
Z, Y, X = slice(0, 4), slice(128, 640), slice(128, 640)  # the crop: 4 slices of 512², the clicks that fall in it
SHOWN = ("epfl_crop", "instances", "clicks", "suggestions")  # the layers the picture shows (the others: hidden)


def crop(folder: Path) -> tuple[Path, np.ndarray]:
    """The EPFL crop as a TIFF in `folder`, and the published 15 % clicks (split 1) inside it."""
    image = tifffile.imread(EPFL / "training.tif", key=range(Z.start, Z.stop))[:, Y, X]
    points = read_points(EPFL / "points" / "15pct_split1.csv")
    inside = (points[:, 0] < Z.stop) & np.all([(points[:, i + 1] >= s.start) & (points[:, i + 1] < s.stop)
                                               for i, s in enumerate((Y, X))], axis=0)  # fmt: skip
    path = folder / "epfl_crop.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    return path, (points[inside] - [0, Y.start, X.start]).astype(np.float64)


def main() -> None:
    """Fine-tune, suggest and take the screenshot as a user would, through the widget's buttons."""
    folder = Path(tempfile.mkdtemp(prefix="mitoda_screenshot_"))
    path, clicks = crop(folder)
    viewer = napari.Viewer()
    viewer.window._qt_window.resize(1400, 900)
    viewer.open(path, plugin="mitoda-napari")
    viewer.add_points(clicks, name="clicks", size=14, face_color="yellow")
    _, widget = viewer.window.add_plugin_dock_widget("mitoda-napari", "Fine-tune")
    widget.output_dir.setText(str(folder / "run"))
    widget.prediction_dir.setText(str(folder / "prediction"))
    for box, value in ((widget.iterations, 8), (widget.interval, 4), (widget.rounds, 2), (widget.k, 5)):
        box.setValue(value)
    widget.options.setText("--tta_views 1 --batch_size 1 --num_workers 0")
    app = QApplication.instance()
    for button in (widget.finetune_button, widget.suggest_button):
        button.click()
        while widget.worker is not None:  # the run is in napari's worker thread; keep the GUI's events going
            app.processEvents()
            time.sleep(0.05)
    if widget.error.text():
        sys.exit(f"napari_screenshot: {widget.error.text()}")
    for layer in viewer.layers:
        layer.visible = layer.name in SHOWN
    viewer.layers["instances"].opacity = 0.5
    viewer.dims.set_point(0, 2)
    for _ in range(20):
        app.processEvents()
    output = REPO / "docs" / "images" / "napari_widget.png"
    picture = Image.fromarray(viewer.screenshot(canvas_only=False, flash=False)[..., :3])
    picture.quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(output, optimize=True)  # 1/4 of the size
    print(f"wrote {output} ({widget.status.text()})")
    viewer.close()


if __name__ == "__main__":
    main()
