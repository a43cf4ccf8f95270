"""CAFA and R4MITO baselines: every loss term by hand, Plackett–Luce, paired weak/strong views, short real-data runs."""

from __future__ import annotations

import io
import math
import subprocess
from itertools import permutations
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import RandGaussianNoised, RandScaleIntensityd
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bundle.data.views import STRONG_KEY, prepare_two_view_batch, two_view_transform
from bundle.inference import FeatureInferer
from bundle.losses import AdaptationLoss, CAFALoss, MultiTaskLoss, R4MITOLoss, TwoViewAdaptationLoss, loss_terms_transform
from bundle.losses.cafa import inter_class_loss, intra_class_loss
from bundle.losses.consistency import (
    feature_mse,
    kl_consistency,
    permutation_table,
    plackett_luce_log_probs,
    pseudo_label_ce,
    rank_consistency,
)
from bundle.losses.prototypes import RunningPrototypes, prototype_similarity
from bundle.losses.r4mito import agent_log_correlation, gather_agents, reliable_prototypes, select_agents
from bundle.networks import MultiTaskUNet
from tests.helpers import REPO, assert_one_line_error, run_bundle
from tests.test_adaptation import adapt_command, crops  # noqa: F401 - the real-crop fixture of the adaptation tests


def _terms(loss: torch.nn.Module) -> dict[str, float]:
    """The loss's last unweighted terms as numbers, as the loss-term curves read them."""
    return loss_terms_transform(loss, prefix="")(None) or {}

UDA = ["configs/train.yaml", "configs/finetune.yaml", "configs/adapt_wda.yaml", "configs/adapt_uda.yaml"]
CAFA_CONFIGS = [*UDA, "configs/adapt_cafa.yaml"]
R4MITO_CONFIGS = [*CAFA_CONFIGS, "configs/adapt_r4mito.yaml"]


def _ce(logits: tuple[float, ...], label: int) -> float:
    """−log softmax(logits)[label] by hand."""
    return -math.log(math.exp(logits[label]) / sum(math.exp(v) for v in logits))


def _pixels(*rows: tuple[float, float]) -> torch.Tensor:
    """(1, D, 1, N) feature map of N pixels with the given D-vectors."""
    return torch.tensor(rows, dtype=torch.float32).T[None, :, None, :]


def _tiny_two_view_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """1 source + 1 target sample of 1x2 pixels with 2-d features (docstrings of the tests give the values)."""
    source = _pixels((0.6, 0.8), (1.0, 0.0))  # pixel 0 mitochondrion, pixel 1 background
    strong = _pixels((0.0, 1.0), (1.0, 0.0))
    weak = _pixels((0.0, 0.5), (1.0, 0.0))
    features = torch.cat([source, strong]).requires_grad_(True)
    output = torch.zeros(2, 3, 1, 2)
    output[1, 1, 0, 0] = 1.0  # strong view logits: pixel 0 (0, 1), pixel 1 (0, 0)
    teacher_output = torch.zeros(1, 3, 1, 2)
    teacher_output[0, 1, 0, 0], teacher_output[0, 0, 0, 1] = 2.0, 2.0  # weak pseudo-label: pixel 0 -> 1, pixel 1 -> 0
    target = {"label": torch.tensor([[[[1.0, 0.0]]], [[[255.0, 255.0]]]]), "num_source": torch.tensor(1)}
    return output, features, teacher_output, weak, target


def test_inter_and_intra_class_by_hand() -> None:
    prototypes = torch.tensor([[2.0, 0.0], [0.6, 0.8]])
    assert inter_class_loss(prototypes).item() == pytest.approx(0.6)  # eq. 2: one pair, cos = 0.6
    assert inter_class_loss(torch.tensor([[1.0, 0.0], [0.0, 0.0]])).item() == 0.0  # a missing class (zero row) adds 0
    features = _pixels((1.0, 0.0), (0.0, 2.0), (0.8, 0.6))
    similarity = prototype_similarity(features, prototypes)  # (1, 2, 1, 3)
    assert torch.allclose(similarity[0, :, 0], torch.tensor([[1.0, 0.0, 0.8], [0.6, 0.8, 0.96]]))
    labels = torch.tensor([[[0, 1, 1]]])
    # class 0: pixel 0 (cos 1); class 1: pixels 1-2 (cos 0.8, 0.96) -> 1 - (1 + 0.88) / 2
    assert intra_class_loss(similarity, labels).item() == pytest.approx(1 - (1.0 + 0.88) / 2)
    mask = torch.tensor([[[True, False, True]]])
    assert intra_class_loss(similarity, labels, mask).item() == pytest.approx(1 - (1.0 + 0.96) / 2)
    assert intra_class_loss(similarity, labels, torch.zeros_like(mask)).item() == 0.0


def test_consistency_terms_by_hand() -> None:
    student = torch.tensor([[[[0.0]], [[1.0]]]])  # (1, 2, 1, 1) logits (0, 1)
    teacher = torch.tensor([[[[3.0]], [[0.0]]]])  # argmax 0
    assert pseudo_label_ce(student, teacher).item() == pytest.approx(_ce((0.0, 1.0), 0), rel=1e-6)
    assert feature_mse(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx(2.0)
    log_s, log_t = torch.log(torch.tensor([[0.5, 0.5]])), torch.log(torch.tensor([[0.9, 0.1]]))
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)  # KL(teacher ‖ student)
    assert kl_consistency(log_s, log_t).item() == pytest.approx(expected, rel=1e-6)


def test_plackett_luce_sums_to_one_and_by_hand() -> None:
    scores = torch.tensor([0.4, 0.3, 0.2, 0.1])
    probabilities = plackett_luce_log_probs(scores.log()).exp()
    assert probabilities.shape == (24,) and probabilities.sum().item() == pytest.approx(1.0, abs=1e-6)
    order = [tuple(p) for p in permutation_table(4).tolist()]
    assert order == list(permutations(range(4)))
    # π = (a, b, c, d): 0.4/1.0 · 0.3/0.6 · 0.2/0.3 · 0.1/0.1; π = (d, c, b, a): 0.1/1.0 · 0.2/0.9 · 0.3/0.7 · 1
    assert probabilities[order.index((0, 1, 2, 3))].item() == pytest.approx(0.4 * 0.5 * (0.2 / 0.3), rel=1e-6)
    assert probabilities[order.index((3, 2, 1, 0))].item() == pytest.approx(0.1 * (0.2 / 0.9) * (0.3 / 0.7), rel=1e-6)
    assert plackett_luce_log_probs((scores * 7).log()).exp().allclose(probabilities)  # scale free
    batch = torch.rand(2, 3, 5, 4).log()
    assert plackett_luce_log_probs(batch).exp().sum(-1).allclose(torch.ones(2, 3, 5))


def _pl_by_hand(scores: list[float]) -> list[float]:
    """Plackett–Luce probabilities of every permutation, with plain floats."""
    out = []
    for order in permutations(range(len(scores))):
        p = 1.0
        for i in range(len(order)):
            p *= scores[order[i]] / sum(scores[j] for j in order[i:])
        out.append(p)
    return out


def test_rank_consistency_by_hand() -> None:
    teacher = [0.05, 0.4, 0.1, 0.3, 0.15]  # top-4 items: 1, 3, 4, 2 (item 0 dropped)
    student = [0.2, 0.1, 0.3, 0.25, 0.15]
    top = [1, 3, 4, 2]
    p_t, p_s = _pl_by_hand([teacher[i] for i in top]), _pl_by_hand([student[i] for i in top])
    expected = sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    as_map = lambda v: torch.log(torch.tensor(v))[None, :, None, None]  # noqa: E731 - (1, 5, 1, 1)
    assert rank_consistency(as_map(student), as_map(teacher), top=4).item() == pytest.approx(expected, rel=1e-5)
    assert rank_consistency(as_map(teacher), as_map(teacher), top=4).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError):
        rank_consistency(as_map(student)[:, :3], as_map(teacher)[:, :3], top=4)


def test_agents_by_hand() -> None:
    features = _pixels((1.0, 0.0), (0.0, 3.0), (2.0, 0.0), (0.1, 0.1))
    index = select_agents(features, 2)
    assert index.tolist() == [[1, 2]]  # the two largest norms
    agents = gather_agents(features, index)
    assert agents.tolist() == [[[0.0, 3.0], [2.0, 0.0]]]
    log_corr = agent_log_correlation(features, agents, temperature=0.1)  # (1, 2, 1, 4)
    # pixel 0: cos (0, 1) with the agents -> softmax(0, 10)
    assert log_corr[0, :, 0, 0].tolist() == pytest.approx([-math.log(1 + math.exp(10)), 10 - math.log(1 + math.exp(10))], abs=1e-6)
    assert len(set(select_agents(features, 3, "random")[0].tolist())) == 3
    assert select_agents(features, 100).shape == (1, 4)  # K is capped at the pixel count


def test_reliable_prototypes_by_hand() -> None:
    source = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    weak = _pixels((0.0, 0.5), (1.0, 0.0), (0.8, 0.6), (0.6, -0.8))
    # cosines to (p0, p1): (0, 0.8) -> 1 reliable; (1, 0.6) -> 0 reliable; (0.8, 0.96) -> 1 reliable; (0.6, -0.28) -> 0 no
    found = reliable_prototypes(weak, source, tau=0.7)
    assert found[0].tolist() == pytest.approx([1.0, 0.0])
    assert found[1].tolist() == pytest.approx([0.4, 0.8])  # mean of unit vectors (0, 1) and (0.8, 0.6)
    none_reliable = reliable_prototypes(weak, source, tau=0.99)  # only pixel 1 (cos 1 > 0.99): class 1 falls back
    assert none_reliable[0].tolist() == pytest.approx([1.0, 0.0]) and none_reliable[1].tolist() == pytest.approx([0.6, 0.8])


def test_cafa_loss_by_hand() -> None:
    """Source prototypes p1 = (0.6, 0.8), p0 = (1, 0); strong target pixels (0, 1), (1, 0): cosines (0, 0.8) and
    (1, 0.6), both nearest-prototype cosines > τ; weak pseudo-label (1, 0); weak features (0, 0.5), (1, 0)."""
    output, features, teacher_output, weak, target = _tiny_two_view_batch()
    loss = CAFALoss(tau=0.7)
    total = loss(output, features, teacher_output, weak, target)
    l_p = (_ce((0.0, 0.8), 1) + _ce((1.0, 0.6), 0)) / 2
    l_cp = (_ce((0.0, 1.0), 1) + _ce((0.0, 0.0), 0)) / 2
    expected = {"intra_source": 0.0, "inter": 0.6, "intra_target": 1 - (0.8 + 1.0) / 2, "prototype_ce": l_p,
                "feature_mse": 0.25 / 4, "prediction_ce": l_cp}  # fmt: skip
    assert _terms(loss) == pytest.approx(expected, abs=1e-6)
    assert total.item() == pytest.approx(0.1 * sum(expected.values()), rel=1e-6)
    total.backward()
    assert torch.isfinite(features.grad).all() and features.grad[1].abs().sum() > 0
    strict = CAFALoss(tau=0.9)  # only pixel 1 (cos 1) aligns
    strict(output, features, teacher_output, weak, target)
    assert _terms(strict)["intra_target"] == pytest.approx(0.0, abs=1e-6)


def test_running_prototypes_by_hand() -> None:
    """m = 0.75: the first batch's prototype is taken as it is, the second blends 0.75 old + 0.25 new (the gradient
    reaching the new batch only, scaled by 0.25), a class absent from a batch keeps its running prototype, and the
    state survives a state_dict round trip. m = 0 returns the batch's prototypes, None included."""
    running = RunningPrototypes(0.75)
    first = running({0: torch.tensor([1.0, 0.0]), 1: None})
    assert first[0].tolist() == [1.0, 0.0] and first[1] is None
    new = torch.tensor([0.0, 1.0], requires_grad=True)
    second = running({0: torch.tensor([0.0, 0.0]), 1: new})
    assert second[0].tolist() == pytest.approx([0.75, 0.0]) and second[1].tolist() == [0.0, 1.0]
    newer = torch.tensor([1.0, 1.0], requires_grad=True)
    third = running({0: None, 1: newer})
    assert third[0].tolist() == pytest.approx([0.75, 0.0]) and third[1].tolist() == pytest.approx([0.25, 1.0])
    third[1].sum().backward()
    assert newer.grad.tolist() == [0.25, 0.25] and new.grad is None  # `new` lives on in the detached state only
    restored = RunningPrototypes(0.75)
    restored.load_state_dict(torch.load(_saved(running.state_dict()), weights_only=True))
    assert {c: p.tolist() for c, p in restored.prototypes.items()} == {c: p.tolist() for c, p in running.prototypes.items()}
    batch = {0: torch.tensor([1.0, 0.0]), 1: None}
    assert RunningPrototypes(0.0)(batch) == batch
    with pytest.raises(ValueError, match="momentum"):
        RunningPrototypes(1.0)


def _saved(state: dict) -> io.BytesIO:
    """`state` through torch.save into memory, as a checkpoint holds it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


def test_cafa_running_prototypes_keep_the_target_terms_on_a_source_batch_without_mitochondria() -> None:
    """With per-batch prototypes (m = 0) a source batch without mitochondria switches L_p and L^t_intra off; with
    running ones (m = 0.9) the foreground prototype of the earlier batch stands in, and the terms stay on."""
    output, features, teacher_output, weak, target = _tiny_two_view_batch()
    background_only = {**target, "label": torch.tensor([[[[0.0, 0.0]]], [[[255.0, 255.0]]]])}
    per_batch, running = CAFALoss(), CAFALoss(prototype_momentum=0.9)
    for loss in (per_batch, running):
        loss(output, features, teacher_output, weak, target)
        assert _terms(loss)["prototype_ce"] > 0
        loss(output, features, teacher_output, weak, background_only)
    assert _terms(per_batch)["prototype_ce"] == 0.0 and _terms(per_batch)["intra_target"] == 0.0
    assert _terms(running)["prototype_ce"] > 0 and _terms(running)["inter"] == pytest.approx(
        (0.6 * 0.98 + 0.8 * 0.04) / math.hypot(0.98, 0.04), rel=1e-5
    )  # background: 0.9 (1, 0) + 0.1 (0.8, 0.4), the mean of the two unit source features
    assert running.running.prototypes[1].tolist() == pytest.approx([0.6, 0.8])  # the first batch's, kept


def test_r4mito_loss_by_hand() -> None:
    """CAFA's terms plus L_pro: the weak view's target prototypes are (1, 0) and (0, 1), so its labels are (1, 0) and
    L_pro equals CE of the strong head (0, 1), (0, 0) against them; correlation and rank terms as their functions."""
    output, features, teacher_output, weak, target = _tiny_two_view_batch()
    weak4 = torch.cat([weak, weak.flip(-1) * 2], dim=-1)  # 4 pixels so that 4 agents exist
    features4 = torch.cat([features, features.flip(-1)], dim=-1).detach().requires_grad_(True)
    output4 = torch.cat([output, output.flip(-1)], dim=-1)
    teacher4 = torch.cat([teacher_output, teacher_output.flip(-1)], dim=-1)
    target4 = {"label": torch.cat([target["label"], target["label"].flip(-1)], dim=-1), "num_source": target["num_source"]}
    loss = R4MITOLoss(num_agents=4, agent_temperature=0.5)
    total = loss(output4, features4, teacher4, weak4, target4)
    cafa = CAFALoss()
    cafa_total = cafa(output4, features4, teacher4, weak4, target4)
    assert {k: _terms(loss)[k] for k in _terms(cafa)} == pytest.approx(_terms(cafa), abs=1e-6)
    assert _terms(loss)["reliable_prototype_ce"] == pytest.approx((_ce((0.0, 1.0), 1) + _ce((0.0, 0.0), 0)) / 2, rel=1e-5)
    index = select_agents(weak4, 4)
    weak_corr = agent_log_correlation(weak4, gather_agents(weak4, index), 0.5)
    strong = features4[1:].detach()
    strong_corr = agent_log_correlation(strong, gather_agents(strong, index), 0.5)
    assert _terms(loss)["correlation_kl"] == pytest.approx(kl_consistency(strong_corr, weak_corr).item(), rel=1e-5)
    assert _terms(loss)["rank_kl"] == pytest.approx(rank_consistency(strong_corr, weak_corr).item(), rel=1e-5, abs=1e-7)
    extra = _terms(loss)["reliable_prototype_ce"] + _terms(loss)["correlation_kl"] + _terms(loss)["rank_kl"]
    assert total.item() == pytest.approx(cafa_total.item() + 0.1 * extra, rel=1e-5)
    total.backward()
    assert torch.isfinite(features4.grad).all()


@pytest.mark.parametrize("make", [CAFALoss, lambda: R4MITOLoss(num_agents=8), lambda: R4MITOLoss(num_agents=8, pro_mode="feature_prediction")])
def test_losses_finite_with_an_empty_class(make) -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 4, 8, 8, requires_grad=True)
    output, teacher_output, teacher_features = torch.randn(2, 3, 8, 8), torch.randn(1, 3, 8, 8), torch.randn(1, 4, 8, 8)
    label = torch.zeros(2, 1, 8, 8)
    label[1] = 255
    target = {"label": label, "density": torch.zeros(2, 1, 8, 8), "num_source": torch.tensor(1)}
    loss = make()  # source batch without mitochondria: no foreground prototype -> target prototype terms add 0
    value = loss(output, features, teacher_output, teacher_features, target)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(features.grad).all()
    assert _terms(loss)["intra_target"] == _terms(loss)["prototype_ce"] == 0.0 and _terms(loss)["inter"] == 0.0
    if "reliable_prototype_ce" in _terms(loss):
        assert _terms(loss)["reliable_prototype_ce"] == 0.0
    combined = TwoViewAdaptationLoss(AdaptationLoss(MultiTaskLoss()), make())
    assert torch.isfinite(combined((output, features, teacher_output, teacher_features), target))
    plain = AdaptationLoss(MultiTaskLoss())(output, target).item()
    assert combined(output, target).item() == pytest.approx(plain) and combined((output, features), target).item() == pytest.approx(plain)


def _image(size: int = 96) -> np.ndarray:
    """(1, size, size) smooth, asymmetric, z-scored test image: an off-centre blob on a ramp (no flip or rotation maps
    it to itself)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float32) / size
    image = np.exp(-((yy - 0.3) ** 2 + (xx - 0.7) ** 2) / 0.02) + 0.5 * yy + 0.2 * xx
    return ((image - image.mean()) / image.std())[None].astype(np.float32)  # z-scored, as the slices are


def _views_config() -> ConfigParser:
    """The CAFA config layering, parsed (nothing read from disk)."""
    parser = ConfigParser()
    parser.read_config([str(REPO / c) for c in CAFA_CONFIGS])
    parser["crop_size"] = [64, 64]
    return parser


def test_views_share_the_crop_and_differ_in_noise() -> None:
    parser = _views_config()
    geometric = parser.get_parsed_content("views#geometric")
    label = (_image() > 1.0).astype(np.uint8)
    for seed in range(6):  # geometry only: the two views are identical, whatever crop, flip, rotation, deformation
        transform = two_view_transform(geometric, [], [])
        transform.set_random_state(seed)
        out = transform({"image": _image(), "label": label})
        assert out["image"].shape == (1, 64, 64) and torch.equal(out["image"], out[STRONG_KEY])
    transform = parser.get_parsed_content("views#transform")
    differs = 0
    for seed in range(6):  # the configured views: same geometry (highly correlated), different intensities
        transform.set_random_state(seed)
        out = transform({"image": _image(), "label": label})
        weak, strong = out["image"].flatten().numpy(), out[STRONG_KEY].flatten().numpy()
        differs += not np.allclose(weak, strong)
        matched = np.corrcoef(weak, strong)[0, 1]
        flipped = np.corrcoef(weak, out[STRONG_KEY].flip(-1).flatten().numpy())[0, 1]  # another geometry
        assert matched > 0.5 and matched > flipped + 0.2
        assert isinstance(out[STRONG_KEY], torch.Tensor) and out[STRONG_KEY].shape == out["image"].shape
    assert differs == 6
    with pytest.raises(ValueError, match="image_strong"):
        two_view_transform(geometric, [], [RandGaussianNoised(keys=["image_strong", "label"])])
    with pytest.raises(ValueError, match="'image'"):
        two_view_transform(geometric, [RandScaleIntensityd(keys=STRONG_KEY, factors=0.1)], [])


def test_views_noise_is_independent() -> None:
    """Weak and strong noise drawn separately: their difference has the variance of both noises."""
    noise = lambda key: RandGaussianNoised(keys=key, prob=1.0, std=0.5, sample_std=False)  # noqa: E731
    transform = two_view_transform([], [noise("image")], [noise(STRONG_KEY)])
    transform.set_random_state(0)
    out = transform({"image": np.zeros((1, 128, 128), np.float32)})
    difference = (out["image"] - out[STRONG_KEY]).numpy()
    assert difference.std() == pytest.approx(math.sqrt(2) * 0.5, rel=0.05)


def test_two_view_batch_and_inferer() -> None:
    source = {"image": torch.zeros(1, 1, 32, 32), "label": torch.ones(1, 1, 32, 32), "density": torch.zeros(1, 1, 32, 32)}
    target = {"image": torch.ones(1, 1, 32, 32), STRONG_KEY: torch.full((1, 1, 32, 32), 2.0), "label": torch.full((1, 1, 32, 32), 255.0),
              "density": torch.zeros(1, 1, 32, 32), "density_mask": torch.zeros(1, 1, 32, 32)}  # fmt: skip
    images, targets, args, kwargs = prepare_two_view_batch({"source": source, "target": target})
    assert images[:, 0, 0, 0].tolist() == [0.0, 2.0] and kwargs["teacher"][0, 0, 0, 0].item() == 1.0 and args == ()
    assert int(targets["num_source"]) == 1 and targets["label"].shape[0] == 2
    torch.manual_seed(0)
    network = MultiTaskUNet(width=8)
    x, weak = torch.randn(2, 1, 32, 32), torch.randn(1, 1, 32, 32)
    separate = FeatureInferer()(x, network, teacher=weak)
    batched = FeatureInferer(batched=True)(x, network, teacher=weak)
    assert len(separate) == 4 and not separate[2].requires_grad and not batched[3].requires_grad and separate[0].requires_grad
    for a, b in zip(separate, batched):  # instance norm: a sample's result does not depend on its batch
        assert torch.allclose(a, b, atol=1e-5)
    assert len(FeatureInferer()(x, network)) == 2


def _run(configs: list[str], crops: dict[str, Path], run_dir: Path, extra: list[str]) -> str:  # noqa: F811
    """A 4-iteration run of `configs` on the real crops; returns its log."""
    command = adapt_command(crops, run_dir, iterations=4)
    command[command.index("--config_file") + 1] = str(configs)
    at = command.index("--target_points")  # unsupervised: no points
    del command[at : at + 2]
    result = subprocess.run(command + extra, cwd=REPO, capture_output=True, text=True)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    return log


@pytest.mark.parametrize("configs", [CAFA_CONFIGS, R4MITO_CONFIGS], ids=["cafa", "r4mito"])
def test_baseline_config_short_run(configs: list[str], crops: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    """Each baseline runs end to end on real crops (4 iterations, 2 epochs), without pseudo-label rounds."""
    run_dir = tmp_path / "run"
    extra = ["--loss_terms#0#iteration_log", "2", "--loss_terms#1#iteration_log", "$lambda engine, iteration: True"] + (["--num_agents", "32"] if configs == R4MITO_CONFIGS else [])
    log = _run(configs, crops, run_dir, extra)
    final = torch.load(run_dir / "checkpoints" / "checkpoint_epoch=2.pt", weights_only=True)
    assert final["trainer"]["iteration"] == 4 and "pseudo_labels" not in final
    # CAFA's running source prototypes (its default) are checkpointed; R4MITO's default is per batch: none kept
    kept = final["prototypes"]["prototypes"]
    assert (0 in kept and kept[0].ndim == 1) if configs == CAFA_CONFIGS else kept == {}
    assert not (run_dir / "pseudo_labels").exists() and (run_dir / "model.pt").is_file()
    assert "pseudo-label round" not in log
    # every term of the loss, the source part's and the baseline's: in the log and in TensorBoard (`loss_terms/*`)
    names = ["source/ce", "source/density", "feature_mse", "prediction_ce"]
    assert all(f"loss_terms/{name}: " in log for name in names), log[-3000:]
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    assert {f"loss_terms/{name}" for name in names} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("loss_terms/source/ce")] == [2, 4]


@pytest.mark.parametrize("configs", [CAFA_CONFIGS, R4MITO_CONFIGS], ids=["cafa", "r4mito"])
def test_a_bad_prototype_momentum_stops_before_any_output(configs: list[str], crops: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    """adapt_wda.yaml's `prepare` builds the stack's loss, so a bad --prototype_momentum is one line and nothing written."""
    out = tmp_path / "run"
    command = adapt_command(crops, out, iterations=4)
    command[command.index("--config_file") + 1] = str(configs)
    at = command.index("--target_points")
    del command[at : at + 2]
    assert_one_line_error(run_bundle(*command[4:], "--prototype_momentum", "1.5"), "prototype_momentum", "--prototype_momentum")
    assert not out.exists()
