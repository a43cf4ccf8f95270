"""napari plugin of mitoda (docs/napari.md): a dock widget that fine-tunes the model from clicked mitochondria,
predicts, suggests where to click next and saves; readers of mitoda's volumes, predictions and points CSV; a
writer of Points layers in mitoda's z,y,x CSV layout."""

from mitoda_napari._repo import REPO

__all__ = ["REPO"]
