"""Self-training rounds on the target: detection pseudo-points (III-B) and segmentation pseudo-labels (III-C)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter

from bundle.data.density import density_map
from bundle.data.io import read_volume, write_tiff
from bundle.handlers import run_events
from bundle.inference.runtime import prediction_network, resolve_runtime
from bundle.losses.multitask import IGNORE_INDEX
from bundle.outputs import atomic_output
from bundle.pseudo_labels import tta_predict
from bundle.pseudo_labels.rounds import RoundRule, class_prior_weights, erode_outlines, label_round
from bundle.pseudo_labels.selection import instances_with_points


def points_by_slice(points: np.ndarray | None, num_slices: int) -> list[np.ndarray]:
    """(N, 3) z, y, x points → one (M, 2) y, x array per slice."""
    points = np.zeros((0, 3), np.int64) if points is None else np.asarray(points, np.int64).reshape(-1, 3)
    return [points[points[:, 0] == z, 1:] for z in range(num_slices)]


def read_pseudo_points(path: str | os.PathLike) -> np.ndarray:
    """(K, 3) int64 z, y, x of a round's pseudo_points.csv (a "z,y,x" header, possibly no rows)."""
    return np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64, ndmin=2).reshape(-1, 3)


def stack_points(per_slice: Sequence[np.ndarray]) -> np.ndarray:
    """One (M, 2) array per slice → (N, 3) z, y, x."""
    rows = [np.column_stack([np.full(len(p), z), p]) for z, p in enumerate(per_slice) if len(p)]
    return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 3), np.int64)


def overlay(image: np.ndarray, label: np.ndarray, gt: np.ndarray, pseudo: np.ndarray) -> np.ndarray:
    """RGB preview: pseudo-label foreground green, ignored blue, ground-truth points red, pseudo-points yellow."""
    grey = np.clip((image - image.min()) / max(float(np.ptp(image)), 1e-6) * 255, 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    rgb[label == 1] = 0.5 * rgb[label == 1] + [0, 127, 0]
    rgb[label == IGNORE_INDEX] = 0.7 * rgb[label == IGNORE_INDEX] + [0, 0, 76]
    for points, colour in ((pseudo, (255, 255, 0)), (gt, (255, 0, 0))):
        for y, x in points:
            rgb[max(y - 3, 0) : y + 4, max(x - 3, 0) : x + 4] = colour
    return rgb.astype(np.uint8)


class PseudoLabelRounds:
    """Schedules the self-training rounds on the target (detection pseudo-points, III-B, and segmentation
    pseudo-labels, III-C); the rule of a round is `bundle.pseudo_labels.rounds` (pure functions).

    At the start of every `interval`-th epoch, until `num_rounds`, it TTA-predicts the target slices, applies the
    rule to each, writes the round to output_dir/round_r and swaps the labels, densities and masks into the dataset.
    Round, points, counts, the outline decision and the class prior live in the checkpoint. Under torch.distributed,
    rank 0 computes and writes each round and the other ranks install its files.

    Args:
        items: the target slices (dicts with "image", (1, Y, X) normalised), in the dataset's order.
        network: the network being adapted (a DDP module is unwrapped: rank 0 predicts alone).
        inferer: the sliding-window inferer of the predictions.
        output_dir: folder of the rounds' files.
        gt_points: (N, 3) clicked points, z = the slice's position in `items`.
        dataset: the dataset whose data the rounds replace (`set_data`).
        num_rounds: rounds in all; interval: epochs per round.
        rule: the round's `RoundRule` (β, Ω, pseudo-label kind, density veto, outline rule, ...).
        tta_views: test-time augmentation views of the predictions.
        fixed_count: every round uses the first round's per-slice counts (the starting model's) for β and Ω, so a
            density head that inflates its mass while it adapts cannot inflate the pseudo-labels.
        holdout_points: (K, 3) held-out clicks, never trained on: each round reports the share inside the
            predicted foreground (the label-free check of the model of the epoch before; round 1 is the start).
        preview_slices: indices into `items` of the PNG previews of each round.
        device: where the network predicts.
        runtime: where the predictions of a round run (`bundle.inference.runtime`): "eager", "openvino" (a copy
            of the round's weights, compiled on the CPU) or "auto".
        source_items: the dense source slices of with-source training (dicts with a binary "label", in the source
            dataset, changed in place). The round that decides the outline rule measures how deep it cut the
            starting model's outlines (`outline_cut_depth`); when the rule holds, the source labels lose a band that
            deep (`erode_outlines`), so both domains teach the target's outline. None: the source labels stay.
    """

    def __init__(
        self,
        items: list[dict],
        network: torch.nn.Module,
        inferer,
        output_dir: str | os.PathLike,
        gt_points: np.ndarray | None = None,
        dataset=None,
        num_rounds: int = 4,
        interval: int = 1,
        rule: RoundRule | None = None,
        tta_views: int = 5,
        fixed_count: bool = False,
        holdout_points: np.ndarray | None = None,
        preview_slices: Sequence[int] = (0,),
        device: str | torch.device = "cpu",
        runtime: str = "eager",
        source_items: list[dict] | None = None,
    ) -> None:
        self.rule = RoundRule() if rule is None else rule
        if len(self.rule.omega_fractions) < num_rounds:
            raise ValueError(f"omega_fractions needs one value per round ({num_rounds}), got {list(self.rule.omega_fractions)}")
        self.items, self.network, self.inferer, self.dataset = items, network, inferer, dataset
        if isinstance(network, DistributedDataParallel):  # rank 0 predicts alone: the module, without DDP collectives
            self.network = network.module
        self.output_dir = Path(output_dir)
        self.gt = points_by_slice(gt_points, len(items))
        self.holdout = points_by_slice(holdout_points, len(items))
        self.pseudo = [np.zeros((0, 2), np.int64) for _ in items]
        self.round = 0
        self.num_rounds, self.interval, self.tta_views, self.fixed_count = num_rounds, interval, tta_views, fixed_count
        self.preview_slices = [z for z in preview_slices if z < len(items)]
        self.counts: list[float] | None = None  # per-slice counts of the first round, with fixed_count
        self.snap: bool | None = None  # the outline rule's decision for this volume (None: not decided yet)
        self.snap_reason = ""
        self.outline_cut: float | None = None  # px the outline rule cut in the round that decided it
        self.class_prior: float | None = None  # the first round's foreground share, with rule.match_class_prior
        self.source_items = source_items
        self._source_labels = [np.asarray(item["label"]).copy() for item in source_items or []]  # as read
        self.device = torch.device(device)
        self.runtime = resolve_runtime(runtime, self.device)
        self.logger = logging.getLogger("mitoda.pseudo_labels")
        self._predict_seconds = 0.0  # of the round being made: its predictions, for the round's summary
        self._writer: SummaryWriter | None = None

    def attach(self, engine: Engine) -> None:
        """Run due rounds when an epoch starts (after a resume, the restored round is not run again)."""
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        """Run round `self.round` if this epoch is a round epoch."""
        epoch = engine.state.epoch  # 1-based, already incremented
        if self.round < self.num_rounds and (epoch - 1) == self.round * self.interval:
            distributed = dist.is_available() and dist.is_initialized()
            if not distributed or dist.get_rank() == 0:
                self.run_round(engine.state.iteration)
            if distributed:  # rank 0 has written round_r; the other ranks install its files and take its decision
                dist.barrier()
                decision = [self.snap, self.snap_reason, self.outline_cut, self.class_prior]
                dist.broadcast_object_list(decision, src=0)
                if dist.get_rank() > 0:
                    self.round += 1
                    self.snap, self.snap_reason, self.outline_cut, self.class_prior = decision
                    self._install_last_round(read_points=True)
                    self._follow_target_outline()
                md5 = self.targets_md5()
                self.logger.info(f"pseudo-label round {self.round} installed on rank {dist.get_rank()}: targets md5 {md5}")

    def round_dir(self, r: int) -> Path:
        """Folder of round r's files."""
        return self.output_dir / f"round_{r}"

    @torch.no_grad()
    def run_round(self, iteration: int = 0) -> None:
        """Predict the target slices, label them (`label_round`), write and install round `self.round`."""
        r = self.round
        start, self._predict_seconds = time.perf_counter(), 0.0
        was_training = self.network.training
        self.network.eval()
        images = [np.asarray(item["image"])[0] for item in self.items]
        counts = self.counts if self.fixed_count else None
        kept: list[np.ndarray] = []  # the probabilities, for a listener in the same process only (run_events)
        result = label_round(self.rule, r, self._predictions(kept if run_events.listened() else None), images,
                             self.gt, self.pseudo, self.holdout, counts=counts, snap=self.snap,
                             snap_reason=self.snap_reason, class_prior=self.class_prior)  # fmt: skip
        self.network.train(was_training)
        if self.rule.snap_to_membranes and self.snap is None:  # decided once per volume, on the first round's labels
            decision = "cut back to the membrane" if result.snap else "left as they are"
            self.logger.info(f"outline rule: pseudo-label outlines {decision}: {result.snap_reason}")
        self.snap, self.snap_reason, self.pseudo = result.snap, result.snap_reason, result.pseudo_points
        if result.outline_cut is not None:
            self.outline_cut = result.outline_cut
            self._follow_target_outline(log=True)
        if self.fixed_count and self.counts is None:
            self.counts = result.counts
        self.class_prior = result.class_prior
        self._write_round(r, result.labels, result.density_masks, result.point_masks)
        self.round = r + 1
        class_weights = self._install(result.labels, result.density_masks, result.target_densities, result.point_masks)
        seconds = {"predict_seconds": round(self._predict_seconds, 1),
                   "round_seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
        weights = {} if class_weights is None else {
            "class_prior": self.class_prior, "class_weights": [round(w, 4) for w in class_weights]}  # fmt: skip
        self._log(r, iteration, result.labels, sum(result.counts), {**result.checks, **weights, **seconds})
        if kept:
            run_events.round_event(r + 1, self.num_rounds, self.round_dir(r), result.labels, kept)

    @torch.no_grad()
    def _predictions(self, kept: list[np.ndarray] | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The network's TTA (probability, density) of each target slice, one slice at a time (the probabilities
        also appended to `kept` when given), with the round's copy of the weights on `runtime`; a cancelled run
        (`run_events`) stops between two slices."""
        start = time.perf_counter()
        network = prediction_network(self.network, self.runtime, self.device)
        self._predict_seconds += time.perf_counter() - start
        for item in self.items:
            run_events.check_cancel()
            start = time.perf_counter()
            image = torch.as_tensor(item["image"], dtype=torch.float32, device=self.device)[None]
            probability, density = tta_predict(network, image, self.inferer, self.tta_views)
            probability, density = probability[0, 0].cpu().numpy(), density[0, 0].cpu().numpy()
            self._predict_seconds += time.perf_counter() - start
            if kept is not None:
                kept.append(probability)
            yield probability, density

    def _follow_target_outline(self, log: bool = False) -> None:
        """Erode the source labels by the depth the outline rule cut (nothing when it did not hold or cut)."""
        depth = self.outline_cut if self.snap and self.outline_cut is not None else 0.0
        for item, label in zip(self.source_items or [], self._source_labels):
            item["label"] = erode_outlines(label[0], depth)[None]
        if log and self.source_items:
            self.logger.info(f"source labels follow the target's outline: a band {depth:.2f} px deep is background")

    def _write_round(self, r: int, labels: np.ndarray, masks: np.ndarray, point_masks: np.ndarray | None = None) -> None:
        """Write labels.tif, density_mask.tif, point_mask.tif, pseudo_points.csv, previews and the model that
        predicted them (model.pt) into round_r (atomically)."""
        with atomic_output(self.round_dir(r)) as partial:
            partial.mkdir(parents=True)
            write_tiff(partial / "labels.tif", labels)
            write_tiff(partial / "density_mask.tif", masks)
            if point_masks is not None:
                write_tiff(partial / "point_mask.tif", point_masks)
            np.savetxt(partial / "pseudo_points.csv", stack_points(self.pseudo), fmt="%d", delimiter=",", header="z,y,x", comments="")
            for z in self.preview_slices:
                iio.imwrite(partial / f"preview_z{z:03d}.png", overlay(self.items[z]["image"][0], labels[z], self.gt[z], self.pseudo[z]))
            # the model this round predicted with (the previous epoch's; round 0: the starting model), for its checks
            torch.save(self.network.state_dict(), partial / "model.pt")

    def _target_density(self, z: int, shape: tuple[int, int]) -> np.ndarray:
        """Target density of slice z: one Gaussian per ground-truth and pseudo point."""
        return density_map(np.concatenate([self.gt[z], self.pseudo[z]]), shape, self.rule.sigma)

    def _install(
        self,
        labels: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        densities: Sequence[np.ndarray],
        point_masks: Sequence[np.ndarray] | None = None,
    ) -> tuple[float, float] | None:
        """Put a round's labels, densities, masks, ground-truth-point instance masks and class weights into the target
        items and swap them into the dataset (point masks are recomputed from labels and points when not given; the
        class weights from the labels and the class prior, when there is one). Returns the class weights (None without
        a class prior)."""
        if point_masks is None:
            point_masks = [instances_with_points(label, gt) for label, gt in zip(labels, self.gt)]
        weights = None if self.class_prior is None else class_prior_weights(np.asarray(labels), self.class_prior)
        for item, label, mask, density, points in zip(self.items, labels, masks, densities, point_masks):
            item["label"], item["density_mask"], item["density"] = label[None], mask[None], density[None]
            item["point_mask"] = np.asarray(points, dtype=np.uint8)[None]
            if weights is not None:
                item["class_weights"] = np.float32(weights)
        if self.dataset is not None and hasattr(self.dataset, "set_data"):
            self.dataset.set_data(self.items)
        return weights

    def _log(self, r: int, iteration: int, labels: np.ndarray, estimated_count: float, checks: dict) -> None:
        """Counts and label-free checks of the round (`checks`: of the model it predicted with, the previous
        epoch's) to the log, round_r/summary.json and TensorBoard."""
        summary = {
            "round": r + 1,
            "estimated_count": round(float(estimated_count), 1),  # the first round's with fixed_count
            "gt_points": int(sum(len(p) for p in self.gt)),
            "pseudo_points": int(sum(len(p) for p in self.pseudo)),
            "foreground_fraction": float((labels == 1).mean()),
            "ignored_fraction": float((labels == IGNORE_INDEX).mean()),
            **checks,
            "outline_rule": ("cut back to the membrane: " if self.snap else "not applied: ") + self.snap_reason
            if self.rule.snap_to_membranes else "off",
            **({"outline_cut_px": round(self.outline_cut, 3)} if self.outline_cut is not None else {}),
        }
        (self.round_dir(r) / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.logger.info(f"pseudo-label round {r + 1}/{self.num_rounds}: {summary}")
        if self._writer is None:
            self._writer = SummaryWriter(log_dir=str(self.output_dir.parent))
        for key, value in summary.items():
            if key != "round" and isinstance(value, (int, float)):
                self._writer.add_scalar(f"pseudo_labels/{key}", value, iteration)
        self._writer.flush()

    def state_dict(self) -> dict:
        """Round number, pseudo-points, fixed counts, the outline decision and the class prior (the label files stay
        in round_r on disk)."""
        counts = torch.as_tensor(self.counts if self.counts is not None else [], dtype=torch.float64)
        snap = -1 if self.snap is None else int(self.snap)
        return {"round": self.round, "pseudo_points": torch.as_tensor(stack_points(self.pseudo)), "counts": counts,
                "snap": snap, "snap_reason": self.snap_reason,
                "outline_cut": -1.0 if self.outline_cut is None else self.outline_cut,
                "class_prior": -1.0 if self.class_prior is None else self.class_prior}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restore the round and points and reinstall the last round's labels from disk."""
        self.round = int(state["round"])
        self.pseudo = points_by_slice(np.asarray(state["pseudo_points"]), len(self.items))
        counts = state.get("counts")  # absent in checkpoints from before fixed_count
        self.counts = [float(c) for c in counts] if counts is not None and len(counts) else None
        snap = int(state.get("snap", -1))  # absent in checkpoints from before the outline premise: decided again
        self.snap, self.snap_reason = (None if snap < 0 else bool(snap)), str(state.get("snap_reason", ""))
        cut = float(state.get("outline_cut", -1.0))  # absent in checkpoints from before the source outline
        self.outline_cut = None if cut < 0 else cut
        prior = float(state.get("class_prior", -1.0))  # absent in checkpoints from before the class prior
        self.class_prior = None if prior < 0 else prior
        self._follow_target_outline()
        if self.round > 0:
            self._install_last_round()

    def _install_last_round(self, read_points: bool = False) -> None:
        """Install round_{round-1}'s labels from disk (and, with `read_points`, its pseudo_points.csv)."""
        if read_points:  # header "z,y,x", then one point per line (np.savetxt in _write_round)
            self.pseudo = points_by_slice(read_pseudo_points(self.round_dir(self.round - 1) / "pseudo_points.csv"), len(self.items))
        labels = read_volume(self.round_dir(self.round - 1) / "labels.tif")
        masks = read_volume(self.round_dir(self.round - 1) / "density_mask.tif")
        point_file = self.round_dir(self.round - 1) / "point_mask.tif"  # absent in runs from before point masks
        point_masks = read_volume(point_file) if point_file.is_file() else None
        densities = [self._target_density(z, label.shape) for z, label in enumerate(labels)]
        self._install(labels, masks, densities, point_masks)

    def targets_md5(self) -> str:
        """md5 of the installed labels, density masks, point masks and densities (all DDP ranks must agree)."""
        digest = hashlib.md5()
        for item in self.items:
            for key, dtype in (("label", np.uint8), ("density_mask", np.uint8), ("point_mask", np.uint8), ("density", float)):
                digest.update(np.ascontiguousarray(item[key], dtype).tobytes())
            if "class_weights" in item:
                digest.update(np.ascontiguousarray(item["class_weights"], np.float32).tobytes())
        return digest.hexdigest()
