"""RGB overlays of EM slices: the image in grey with coloured masks blended on top (pure functions, no I/O)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Colour = tuple[int, int, int]
TP_COLOUR: Colour = (0, 255, 0)  # true positive: green
FP_COLOUR: Colour = (255, 0, 0)  # false positive: red
FN_COLOUR: Colour = (0, 0, 255)  # false negative: blue
ERROR_ALPHA = 0.5  # weight of the colour against the grey image


def grey_rgb(image: np.ndarray) -> np.ndarray:
    """(Y, X) image min-max stretched to 0-255 grey levels (truncated) as float32 (Y, X, 3); constant: black."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ValueError(f"grey_rgb expects a 2D (Y, X) image, got shape {image.shape}")
    grey = np.clip((image - image.min()) / max(float(np.ptp(image)), 1e-6) * 255, 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)


def tint(rgb: np.ndarray, mask: np.ndarray, colour: Sequence[float], alpha: float) -> np.ndarray:
    """Copy of float (Y, X, 3) `rgb` with `(1 - alpha) * rgb + alpha * colour` where `mask` is true."""
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match image shape {rgb.shape[:2]}")
    out = np.array(rgb, dtype=np.float32, copy=True)
    out[mask] = (1.0 - alpha) * out[mask] + alpha * np.asarray(colour, dtype=np.float32)
    return out


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float RGB rounded and clipped to uint8."""
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def error_overlay(
    image: np.ndarray, prediction: np.ndarray, truth: np.ndarray, alpha: float = ERROR_ALPHA
) -> np.ndarray:
    """uint8 (Y, X, 3) of a slice: grey image, true positives green, false positives red, false negatives blue."""
    prediction, truth = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if not image.shape == prediction.shape == truth.shape:
        raise ValueError(f"image {image.shape}, prediction {prediction.shape} and truth {truth.shape} differ in shape")
    rgb = grey_rgb(image)
    errors = ((prediction & truth, TP_COLOUR), (prediction & ~truth, FP_COLOUR), (~prediction & truth, FN_COLOUR))
    for mask, colour in errors:
        rgb = tint(rgb, mask, colour, alpha)
    return to_uint8(rgb)


# Instance outlines: one of these colours per instance id (id modulo their number), chosen to stand out on grey.
OUTLINE_COLOURS: tuple[Colour, ...] = (
    (255, 64, 64), (64, 200, 255), (255, 200, 0), (80, 255, 80), (255, 64, 255), (0, 255, 200),
    (255, 128, 0), (160, 120, 255), (200, 255, 0), (255, 160, 200),
)  # fmt: skip
LEGEND_FONT_PX = 14  # text height of a legend line
LEGEND_LINE_PX = 20  # height of a legend line


def outline_overlay(image: np.ndarray, instances: np.ndarray) -> np.ndarray:
    """uint8 (Y, X, 3) of a slice: the grey image with the outline of every instance (its two outermost pixels),
    one colour per id."""
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    instances = np.asarray(instances)
    if image.shape != instances.shape:
        raise ValueError(f"image {image.shape} and instances {instances.shape} differ in shape")
    rgb = grey_rgb(image)
    outline = binary_dilation(find_boundaries(instances, mode="inner")) & (instances > 0)  # two pixels, inside
    palette = np.asarray(OUTLINE_COLOURS, dtype=np.float32)
    rgb[outline] = palette[instances[outline].astype(np.int64) % len(palette)]
    return to_uint8(rgb)


def scale_bar(nm_per_pixel: float, width: int) -> tuple[int, str]:
    """A scale bar for an image `width` pixels wide at `nm_per_pixel`: its length in pixels (about a fifth of the
    width, a round 1/2/5 x 10^k nm) and its label ('500 nm', '2 µm')."""
    target = width / 5 * nm_per_pixel
    step = 10 ** np.floor(np.log10(target))
    nm = max(m * step for m in (1, 2, 5) if m * step <= target)
    label = f"{nm / 1000:g} µm" if nm >= 1000 else f"{nm:g} nm"
    return max(1, round(nm / nm_per_pixel)), label


def with_legend(rgb: np.ndarray, lines: Sequence[Sequence[tuple[Colour | None, str]]],
                bar: tuple[int, str] | None = None) -> np.ndarray:  # fmt: skip
    """uint8 `rgb` with a black strip below it: one row of `lines` each, an item a colour swatch (None: none) and
    its text; `bar` (length in pixels, label) draws a scale bar at the right of the first row."""
    from PIL import Image, ImageDraw, ImageFont

    height, width = rgb.shape[:2]
    canvas = Image.new("RGB", (width, height + LEGEND_LINE_PX * len(lines) + 4), (0, 0, 0))
    canvas.paste(Image.fromarray(np.asarray(rgb, dtype=np.uint8)), (0, 0))
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=LEGEND_FONT_PX)
    for row, items in enumerate(lines):
        x, y = 4, height + 4 + row * LEGEND_LINE_PX
        for colour, text in items:
            if colour is not None:
                draw.rectangle((x, y + 3, x + 11, y + 14), fill=tuple(colour))
                x += 16
            draw.text((x, y), text, fill=(255, 255, 255), font=font)
            x += int(draw.textlength(text, font=font)) + 14
    if bar is not None:
        length, label = bar
        right, y = width - 6, height + 4
        text_x = right - length - 8 - int(draw.textlength(label, font=font))
        draw.text((text_x, y), label, fill=(255, 255, 255), font=font)
        draw.rectangle((right - length, y + 7, right, y + 11), fill=(255, 255, 255))
    return np.asarray(canvas)
