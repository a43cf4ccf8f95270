"""Load a checkpoint into a network with one clear error when it is missing or belongs to another network."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from bundle.errors import InputError


def read_torch_file(path: str | os.PathLike, kind: str, missing_fix: str, bad_fix: str) -> object:
    """torch.load of a user-given file (CPU, weights only); one-line InputErrors for a missing or unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {kind} not found; {missing_fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is a bad file for the user
        raise InputError(f"{path}: not a PyTorch {kind} ({type(err).__name__}); {bad_fix}") from err


def load_checkpoint(network: nn.Module, path: str | os.PathLike, key: str = "model") -> nn.Module:
    """Load a state dict (plain, or under `key` as CheckpointSaver writes it) into `network`, strictly."""
    path = Path(path)
    fix = "pass a model.pt written by train.yaml"
    state = read_torch_file(path, "checkpoint", "pass --checkpoint PATH to a model.pt written by train.yaml", fix)
    if isinstance(state, dict) and key in state and isinstance(state[key], dict):
        state = state[key]
    if not isinstance(state, dict):
        raise InputError(f"{path}: holds a {type(state).__name__}, not a state dict; pass a model.pt written by train.yaml")
    own = network.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or mismatched:
        detail = []
        if mismatched:
            k = mismatched[0]
            detail.append(f"{len(mismatched)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)})")
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise InputError(
            f"{path}: checkpoint does not fit this network ({'; '.join(detail)}); "
            "use the network_def (e.g. width) it was trained with, or a checkpoint trained with this config"
        )
    network.load_state_dict(state)
    return network


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """sha256 of a checkpoint file (ties derived files, e.g. source prototypes, to the model they came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
