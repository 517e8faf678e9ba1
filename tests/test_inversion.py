"""Gradient-inversion privacy attacks: label rule, scores, IG progress, GIFD's l1 ball, end to end."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from flwr.app import RecordDict
from torch import nn

from fedsim.params import ParamError
from fedsim.privacy import DataFacts
from fedsim.attacks.inversion.gifd import GIFD, auxiliary_pixels, project_onto_l1_ball, ramp
from fedsim.attacks.inversion.inverting_gradients import InvertingGradients
from fedsim.data import ImageData, digits
from fedsim.attacks.inversion.base import InversionTarget
from fedsim.models import CNN
from fedsim.engine.reconstruction_scores import PSNR_CAP_DB, score_batch
from fedsim.state import ClientState
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import LocalTask

DATA = digits()


def fedsgd_target(model: nn.Module, n: int, seed: int = 0) -> tuple[InversionTarget, torch.Tensor, torch.Tensor]:
    """The one-step (FedSGD) update of the first ``n`` training digits, as the server sees it."""
    x, y = torch.from_numpy(DATA.x_train[:n]), torch.from_numpy(DATA.y_train[:n])
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    update = {k: -0.1 * g for (k, _), g in zip(model.named_parameters(), grads)}
    target = InversionTarget.from_update(model, update, DATA, 0.1, 1, n, n, torch.Generator().manual_seed(seed))
    return target, x, y


def facts_of(data) -> DataFacts:
    """The public data facts a server's view carries."""
    return DataFacts(tuple(data.input_shape), data.num_classes, tuple(data.mean), tuple(data.std))


def test_inversion_idlg_label_rule_on_hand_made_gradient():
    model = nn.Sequential(nn.Flatten(), nn.Linear(DATA.x_train[0].size, 10))
    features = torch.rand(3, 64)  # non-negative inputs of the last layer
    probs = torch.full((3, 10), 0.1)
    labels = torch.tensor([7, 2, 7])
    weight_grad = (probs - nn.functional.one_hot(labels, 10)).T @ features / 3  # cross-entropy gradient by hand
    update = {"1.weight": -0.5 * weight_grad, "1.bias": torch.zeros(10)}
    for n, expected in ((1, [7]), (2, [7, 2]), (3, [7, 2, 7])):
        target = InversionTarget.from_update(model, update, DATA, 0.5, 1, n, n, torch.Generator())
        assert target.infer_labels().tolist() == expected


def test_inversion_metrics_on_known_images():
    rng = np.random.default_rng(0)
    true = rng.uniform(0.2, 0.8, size=(3, 1, 16, 16)).astype(np.float32)
    exact = score_batch(true, np.array([1, 2, 3]), true[[2, 0, 1]], np.array([3, 1, 2]))  # order does not matter
    assert exact["psnr"] == PSNR_CAP_DB and exact["ssim"] == pytest.approx(1.0) and exact["mse"] == 0.0
    assert exact["label_acc"] == 1.0
    shifted = score_batch(true, np.array([1, 2, 3]), true + 0.1, np.array([1, 2, 9]))
    assert shifted["mse"] == pytest.approx(0.01, rel=1e-4)
    assert shifted["psnr"] == pytest.approx(20.0, abs=1e-3)  # 10 log10(1 / 0.01)
    assert 0.9 < shifted["ssim"] < 1.0  # a constant shift changes luminance only
    assert shifted["label_acc"] == pytest.approx(2 / 3)
    noise = score_batch(true, np.array([1, 2, 3]), rng.uniform(size=true.shape).astype(np.float32), np.zeros(3, int))
    assert noise["ssim"] < 0.2 and noise["psnr"] < 12 and noise["label_acc"] == 0.0


def test_inversion_short_ig_run_reduces_matching_loss():
    torch.manual_seed(0)
    target, _, y = fedsgd_target(CNN(DATA.input_shape, 10, channels=(8,), hidden=32), n=2)
    attack = InvertingGradients(iterations=40, tv_weight=0.0)
    start = target.random_images()
    before = target.matching_objective(start, y, 0.0).item()
    target.generator.manual_seed(0)  # the trial starts from the same random images
    images, after = attack.trial(target, y)
    assert after < 0.5 * before
    assert torch.equal(images, images.clamp(target.from_pixels(torch.zeros(1)), target.from_pixels(torch.ones(1))))


def test_inversion_simulates_a_multi_step_local_update_exactly():
    torch.manual_seed(0)
    model = CNN(DATA.input_shape, 10, channels=(8,), hidden=32)
    x, y = torch.from_numpy(DATA.x_train[[0, 400, 800]]), torch.from_numpy(DATA.y_train[[0, 400, 800]])
    local = CNN(DATA.input_shape, 10, channels=(8,), hidden=32)
    local.load_state_dict(model.state_dict())
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    task = LocalTask(1, 0, local, start, x, y, 0.5, 1, 1, torch.Generator().manual_seed(5), ClientState(RecordDict()))
    update = FedAvg().local_update(task).update  # 3 SGD steps of one image each, in a shuffled order
    target = InversionTarget.from_update(model, update, DATA, 0.5, 1, 1, 3, torch.Generator())
    assert target.local_steps == 3
    order = torch.randperm(3, generator=torch.Generator().manual_seed(5))  # the client's order (the batch is free)
    simulated = target.simulate_update(x[order], y[order])
    one_step = {k: -0.5 * 3 * g for k, g in target.gradient(x, y).items()}  # the FedSGD reading of the same update
    for k in update:
        assert torch.allclose(simulated[k], update[k], rtol=1e-4, atol=1e-6)
    error = sum((one_step[k] - update[k]).norm() for k in update) / sum(update[k].norm() for k in update)
    assert error > 0.05  # treating the update as one gradient step is measurably off


def test_gifd_l1_projection_holds_after_every_step(tmp_path):
    v = torch.randn(4, 50)
    for radius in (0.5, 5.0, 100.0):
        p = project_onto_l1_ball(v, radius)
        assert torch.all(p.abs().sum(1) <= radius * (1 + 1e-5))
        inside = v.abs().sum(1) <= radius
        assert torch.equal(p[inside], v[inside])
    # the projection is the nearest point of the ball: no random point of the ball is closer
    ball = project_onto_l1_ball(torch.randn(2000, 50) * 3, 5.0)
    assert torch.all((ball - v[0]).norm(dim=1) >= (project_onto_l1_ball(v[:1], 5.0) - v[0]).norm() - 1e-5)

    checked: list[float] = []

    class CheckedGIFD(GIFD):
        def constrain(self, k, h, start):
            out = super().constrain(k, h, start)
            if k > 0:
                deviation = (out - start).flatten(1).abs().sum(1)
                assert torch.all(deviation <= self.radius(k, start) * (1 + 1e-5))
                checked.append(float(deviation.max() / self.radius(k, start)))
            return out

    torch.manual_seed(0)
    target, _, _ = fedsgd_target(CNN(DATA.input_shape, 10, channels=(8,), hidden=32), n=1)
    attack = CheckedGIFD(steps=6, restarts=1, radii=[0.05, 0.05, 0.05], generator_epochs=2, cache_dir=str(tmp_path))
    attack.prepare_prior(facts_of(DATA), DATA.x_test, 0)
    attack.reconstruct(target, None)
    assert len(checked) == 3 * 6
    assert max(checked) > 0.99  # the constraint was active, not vacuous
    cached = list(tmp_path.glob("gifd_generator_*.pt"))
    assert len(cached) == 1
    again = GIFD(generator_epochs=2, cache_dir=str(tmp_path))
    again.prepare_prior(facts_of(DATA), DATA.x_test, 0)  # loaded from the cache, identical weights
    for a, b in zip(attack.generator.state_dict().values(), again.generator.state_dict().values()):
        assert torch.equal(a, b)


def test_gifd_stages_radii_schedule_and_scoring(tmp_path):
    # radii scale with the feature size and grow per stage
    attack = GIFD(steps=4, restarts=2, generator_epochs=2, cache_dir=str(tmp_path))
    features = [torch.zeros(1, 64, 2, 2), torch.zeros(1, 32, 4, 4)]
    assert attack.radius(1, features[0]) == pytest.approx(0.2 * 256)
    assert attack.radius(2, features[1]) == pytest.approx(0.3 * 512)
    # the official schedule: zero at the start, full from 5% to 25%, half at 62.5%, near zero at the end
    assert ramp(0.0) == 0.0 and ramp(0.1) == pytest.approx(1.0) and ramp(0.625) == pytest.approx(0.5)
    assert ramp(0.99) < 0.01
    torch.manual_seed(0)
    target, _, y = fedsgd_target(CNN(DATA.input_shape, 10, channels=(8,), hidden=32), n=1)
    attack.prepare_prior(facts_of(DATA), DATA.x_test, 0)
    target.generator.manual_seed(7)
    results = attack.candidates(target, y)
    assert [(r.restart, r.stage) for r in results] == [(t, k) for t in range(2) for k in range(4)]
    for r in results:  # the objective adds TV and l2 to the matching cost
        assert r.objective > r.matching
        assert r.matching == pytest.approx(target.matching_objective(r.images, y, 0.0).item(), rel=1e-5)
    for score in ("objective", "matching"):  # the returned images are those of the best-scored stage
        attack.score = score
        target.generator.manual_seed(7)
        images, _ = attack.reconstruct(target, y)
        assert torch.equal(images, min(results, key=lambda r: getattr(r, score)).images)
    latent_only = GIFD(steps=4, restarts=1, stages=1, generator_epochs=2, cache_dir=str(tmp_path))
    latent_only.prepare_prior(facts_of(DATA), DATA.x_test, 0)
    assert [r.stage for r in latent_only.candidates(target, y)] == [0]
    with pytest.raises(ValueError, match="privacy_attack.stages=5"):
        GIFD(stages=5)
    with pytest.raises(ValueError, match="privacy_attack.score='psnr'"):
        GIFD(score="psnr")


@pytest.mark.parametrize("field,value", [("iterations", 0), ("restarts", 0), ("lr", -1.0), ("tv_weight", -1.0)])
def test_inversion_bad_hyper_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"privacy_attack.{field}={value}"):
        InvertingGradients(**{field: value})
    with pytest.raises(ValueError, match="privacy_attack.labels='guess'"):
        InvertingGradients(labels="guess")
    with pytest.raises(ValueError, match="privacy_attack.aux_data"):
        GIFD(aux_data="imagenet")


TINY_CLIENTS = ["model=cnn", "model.channels=[8]", "model.hidden=32", "num_clients=400", "clients_per_round=2",
                "rounds=1", "batch_size=8", "local_epochs=1"]


def test_inversion_observer_in_simulation_scores_and_draws(run_sim):
    _, rounds, out = run_sim(*TINY_CLIENTS, "privacy_attack=inverting_gradients", "privacy_attack.iterations=150")
    privacy = rounds[0]["privacy"]
    assert privacy["attack"] == "InvertingGradients" and len(privacy["clients"]) == 2
    assert privacy["label_acc"] == 1.0 and privacy["psnr"] > 13.0  # random images score ~8 dB
    assert len(list(out.glob("privacy_InvertingGradients_round1_client*.png"))) == 2


def test_inversion_skips_clients_above_max_images_and_refuses_a_run_where_it_skips_all(run_sim, caplog):
    _, rounds, _ = run_sim(*TINY_CLIENTS, "privacy_attack=idlg", "privacy_attack.max_images=3", "privacy_attack.iterations=2")
    assert "privacy_attack: " in caplog.text and "will be skipped" in caplog.text  # said up front
    notes = rounds[0]["privacy"]["clients"]
    assert notes and all("max_images=3" in c["skipped"] for c in notes.values() if "skipped" in c)
    with pytest.raises(ParamError, match=r"privacy_attack.max_images=1: must be >= 3 \(the smallest attacked client's examples\)"):
        run_sim(*TINY_CLIENTS, "privacy_attack=idlg", "privacy_attack.max_images=1")


def test_inversion_through_ray_backend(run_sim):
    _, rounds, out = run_sim("backend=ray", "num_clients=200", "clients_per_round=1", "model=cnn", "model.channels=[8]",
                             "model.hidden=32", "rounds=1", "batch_size=8", "privacy_attack=idlg",
                             "privacy_attack.iterations=100")
    privacy = rounds[0]["privacy"]
    assert privacy["label_acc"] == 1.0 and privacy["psnr"] > 11.0  # 7 images, 100 L-BFGS steps; random ~8 dB
    assert list(out.glob("privacy_IDLG_round1_client*.png"))


def test_gifd_out_of_distribution_prior_images_are_resized_digits():
    target_like = ImageData("tiny", np.zeros((1, 3, 16, 12), np.float32), np.zeros(1, np.int64),
                            np.zeros((1, 3, 16, 12), np.float32), np.zeros(1, np.int64), 10, (0.5,) * 3, (0.25,) * 3)
    pixels = auxiliary_pixels("digits", target_like, target_like.x_test)
    assert pixels.shape == (1797, 3, 16, 12) and pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert pixels.std() > 0.1  # real digit strokes, not blank images
