"""The target's adaptation inputs as a fine-tune uses them: clicks split into training and held-out ones, and the
volume resampled to the model's scale when its pixel size differs (`bundle.data.pixel_size`)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bundle.data.io import write_tiff
from bundle.data.pixel_size import resample_volume, scale_points, scaled_shape
from bundle.data.points import write_points


def split_clicks(points: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) clicks: a seeded `fraction` of the (N, 3) points is held out, never trained on, to check
    the adaptation without labels (`bundle.pseudo_labels.rounds.click_checks`). At least one click is always kept
    for training; none is held out when `fraction` is 0."""
    points = np.asarray(points, dtype=np.int64).reshape(-1, 3)
    held = min(int(round(fraction * len(points))), len(points) - 1) if fraction > 0 else 0
    order = np.random.default_rng(seed).permutation(len(points))
    holdout = np.zeros(len(points), bool)
    holdout[order[:held]] = True
    return points[~holdout], points[holdout]


class AdaptationInputs(NamedTuple):
    """What a fine-tune's input checks read and `write_adaptation_inputs` writes once the output folder is claimed."""

    factors: Sequence[float]  # (y, x) scale to the model's pixel size
    image: np.ndarray  # the target volume at its own scale
    train_clicks: np.ndarray
    holdout_clicks: np.ndarray
    label: np.ndarray | None = None  # validation labels, when given


def write_adaptation_inputs(
    folder: str | os.PathLike,
    factors: Sequence[float],
    image: np.ndarray,
    train_clicks: np.ndarray,
    holdout_clicks: np.ndarray,
    label: np.ndarray | None = None,
) -> dict[str, str]:
    """Write the adaptation's inputs into `folder`: train_clicks.csv and holdout_clicks.csv, and, when `factors`
    (y, x) are not 1, the volume (and `label`) at the model's scale with the clicks moved to it. Returns their paths
    under the config keys they set (target_points when there are clicks, holdout_points when any is held out; target_image, val_image,
    val_label when resampled)."""
    folder = Path(folder)
    paths: dict[str, Path] = {"target_points": folder / "train_clicks.csv", "holdout_points": folder / "holdout_clicks.csv"}
    shape = scaled_shape(image.shape, factors)
    if tuple(factors) != (1.0, 1.0):
        paths["target_image"] = folder / "image_at_model_scale.tif"
        write_tiff(paths["target_image"], resample_volume(image, factors))
        if label is not None:
            paths["val_image"], paths["val_label"] = paths["target_image"], folder / "label_at_model_scale.tif"
            write_tiff(paths["val_label"], resample_volume(label, factors, labels=True))
    if len(train_clicks):
        write_points(paths["target_points"], scale_points(train_clicks, factors, shape))
    else:
        del paths["target_points"]  # no clicks (unsupervised): the config's target_points stays null
    if len(holdout_clicks):
        write_points(paths["holdout_points"], scale_points(holdout_clicks, factors, shape))
    else:
        del paths["holdout_points"]  # nothing held out: no checks
    return {key: str(path) for key, path in paths.items()}


MIN_POLARITY_CLICKS = 5  # fewer clicks say too little about the contrast
POLARITY_LIMIT = 0.25  # mean z-score at the clicks above which the contrast reads as inverted (EPFL -0.89, FAFB -0.83)


def check_polarity(volume: np.ndarray, clicks: np.ndarray, where: str | os.PathLike) -> float:
    """The mean z-scored intensity of the clicked pixels in their slices; a one-line InputError when it is above
    POLARITY_LIMIT (from MIN_POLARITY_CLICKS clicks on): the clicked mitochondria are brighter than their slices, as in a volume of inverted contrast,
    which the model (dark mitochondria and membranes on brighter cytoplasm, as in VNC III) would read wrongly."""
    from bundle.data.dataset import normalize_slice
    from bundle.errors import input_error

    clicks = np.asarray(clicks, dtype=np.int64).reshape(-1, 3)
    values = [normalize_slice(volume[z], where, int(z))[clicks[clicks[:, 0] == z][:, 1], clicks[clicks[:, 0] == z][:, 2]]
              for z in np.unique(clicks[:, 0])]  # fmt: skip
    mean = float(np.concatenate(values).mean()) if values else 0.0
    if len(clicks) >= MIN_POLARITY_CLICKS and mean > POLARITY_LIMIT:
        raise input_error(where, f"the clicked mitochondria are brighter than their slices (mean {mean:+.2f} standard "
                          "deviations): the volume's contrast looks inverted, which the model would read wrongly",
                          "invert the volume (255 - value for 8 bits) or check that the clicks lie on mitochondria")  # fmt: skip
    return mean


def adaptation_checks(run_dir: str | os.PathLike, prediction_dir: str | os.PathLike, slices: Sequence[int],
                      holdout: np.ndarray, margin: float = 0.05) -> dict:  # fmt: skip
    """The label-free checks of a fine-tune: per round (`run_dir`/pseudo_labels/round_*/summary.json; round 1 is the
    starting model, round r the model after epoch r-1) and of the final model, from its prediction of the adapted
    `slices` (original z; `holdout` the held-out clicks, original z, y, x). A final held-out click recall more than
    `margin` below the starting model's is a warning: adaptation made the model worse on this volume. `best_round`
    names a round whose model beat the final one by more than `margin` (see `best_round`)."""
    from bundle.inference.prediction_folder import open_prediction
    from bundle.pseudo_labels.rounds import click_checks, slice_checks

    rounds = []
    for path in sorted(Path(run_dir, "pseudo_labels").glob("round_*/summary.json"), key=lambda p: int(p.parent.name[6:])):
        summary = json.loads(path.read_text())
        rounds.append({key: summary.get(key) for key in ("round", "holdout_click_recall", "instance_count",
                                                         "density_count", "foreground_share", "outline_rule")})  # fmt: skip
    maps = []
    for name in ("probability", "density"):  # of the adapted slices only
        with open_prediction(prediction_dir, name) as volume:
            maps.append(np.stack([volume[z] for z in slices]))
    probability, density = maps
    holdout = np.asarray(holdout, dtype=np.int64).reshape(-1, 3)
    final = click_checks([slice_checks(p, d, holdout[holdout[:, 0] == z][:, 1:]) for p, d, z in zip(probability, density, slices)])
    start = rounds[0]["holdout_click_recall"] if rounds else None
    warning = None
    if start is not None and final["holdout_click_recall"] is not None and final["holdout_click_recall"] < start - margin:
        warning = (f"adaptation made the model worse on this volume's held-out clicks (recall {start:.3f} with the "
                   f"starting model, {final['holdout_click_recall']:.3f} after fine-tuning): compare both models' "
                   "predictions before you use this one")  # fmt: skip
    return {"rounds": rounds, "final": final, "warning": warning, "best_round": best_round(rounds, final, margin)}


def best_round(rounds: Sequence[dict], final: dict, margin: float) -> int | None:
    """The round (2…) whose model (the one after epoch round-1) beats the final model's held-out click recall by
    more than `margin` and most, or None: the final model is kept. Round 1, the starting model, is never chosen
    (a worse final model is a warning instead); nor is anything without held-out clicks."""
    last = final.get("holdout_click_recall")
    scored = [(r["holdout_click_recall"], r["round"]) for r in rounds[1:] if r.get("holdout_click_recall") is not None]
    if last is None or not scored:
        return None
    recall, chosen = max(scored)  # ties: the later round
    return chosen if recall > last + margin else None
