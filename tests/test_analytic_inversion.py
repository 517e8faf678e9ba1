"""The analytic Linear-layer attack: exact on a first layer, no oracle in the row pick, through HyperFL's heads."""

from __future__ import annotations

import pytest
import torch
from flwr.app import RecordDict
from torch import nn

from conftest import make_config
from fedsim.attacks.inversion.analytic import AnalyticLinear, hidden_code, read_upload
from fedsim.attacks.inversion.base import InversionTarget
from fedsim.data import digits
from fedsim.engine.context import Run
from fedsim.engine.reconstruction_scores import score_batch
from fedsim.models import MLP
from fedsim.seeding import torch_generator
from fedsim.state import ClientState
from fedsim.strategy import LocalTask

DATA = digits()


def test_the_agreed_row_is_picked_over_mixtures_without_seeing_the_images():
    a, b = torch.rand(64), torch.rand(64)
    # 5 units see only a, 3 only b, 6 units a mixture each (their ratios are all different)
    mixtures = [w * a + (1 - w) * b for w in torch.linspace(0.2, 0.8, 6)]
    rows = torch.stack([*[a] * 5, *[b] * 3, *mixtures])[torch.randperm(14, generator=torch.Generator().manual_seed(0))]
    picked = AnalyticLinear().pick(rows, 2)
    assert torch.equal(picked[0], a) and torch.equal(picked[1], b)
    assert AnalyticLinear().pick(rows[:1], 3).shape == (3, 64)  # fewer distinct rows than images: repeats


def test_a_plain_first_linear_layer_gives_a_single_image_exactly():
    torch.manual_seed(0)
    model = MLP(DATA.input_shape, 10, hidden=(32,))
    x, y = torch.from_numpy(DATA.x_train[:1]), torch.from_numpy(DATA.y_train[:1])
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    update = {k: -0.1 * g for (k, _), g in zip(model.named_parameters(), grads)}
    target = InversionTarget.from_update(model, update, DATA, 0.1, 1, 1, 1, torch.Generator())
    images, labels = AnalyticLinear().reconstruct(target, None)
    assert torch.allclose(images, x, atol=1e-4) and labels.tolist() == y.tolist()


def test_the_hidden_code_is_fitted_through_a_weight_decay_term():
    g = torch.Generator().manual_seed(0)
    bias_change, hidden, weight = torch.randn(300, generator=g), torch.rand(16, generator=g), torch.randn(300, 16, generator=g)
    weight_change = torch.outer(bias_change, hidden) - 0.03 * weight
    fitted, decay = hidden_code(weight_change, bias_change, weight)
    assert torch.allclose(fitted, hidden, atol=1e-4) and decay.item() == pytest.approx(-0.03, abs=1e-5)


def hyperfl_upload(model: str, local_epochs: int) -> tuple[Run, InversionTarget, torch.Tensor, torch.Tensor]:
    env = Run(make_config("dataset=digits", f"model={model}", "model.hidden=" + ("[64]" if model == "mlp" else "64"),
                          "strategy=hyperfl", "num_clients=300", "partition=iid", "batch_size=32"))
    state = env.strategy.init_global(env.new_model())
    x, y = env.client_data(0)
    task = LocalTask(1, 0, env.new_model(), state, x, y, 0.02, local_epochs, 32, torch_generator(0, "train", 1, 0), ClientState(RecordDict()))
    update = env.strategy.local_update(task).update
    target = InversionTarget.from_update(env.strategy.attack_model(state, env.new_model), update, env.data, 0.02, local_epochs, 32, len(y),
                                         torch.Generator().manual_seed(0))
    return env, target, x, y


def test_hyperfl_mlp_uploads_give_the_images_through_the_head_biases():
    env, target, x, y = hyperfl_upload("mlp", 1)
    images, _ = AnalyticLinear().reconstruct(target, y)
    scores = score_batch(env.data.denormalise(x.numpy()), y.numpy(), env.data.denormalise(images.numpy()), y.numpy())
    assert scores["psnr"] > 30  # the generated first layer leaks the client's digits


def test_hyperfl_cnn_reads_features_and_recovers_the_clients_generated_layers():
    env, target, x, y = hyperfl_upload("cnn", 1)
    net, grads, weights = read_upload(target.model, target.update)
    # the client's true generated layers (its private embedding is drawn from (seed, client id))
    strategy = env.strategy
    truth = strategy.build(env.new_model())
    strategy.load_shared(truth, {f"hypernet.{k}": v for k, v in target.model.hypernet.state_dict().items()})
    strategy.load_private(truth, strategy.initial_private(truth, torch_generator(strategy.seed, "hyperfl", 0)))
    with torch.no_grad():
        generated = truth.generate()
    for name, value in generated.items():  # one local step from the true code: the fitted code generates them
        assert nn.functional.cosine_similarity(weights[name].flatten(), value.flatten(), dim=0) > 0.99, name
    attack = AnalyticLinear(feature_steps=5)
    images, _ = attack.reconstruct(target, y)
    assert images.shape == x.shape and torch.isfinite(images).all()
    with pytest.raises(ValueError, match="privacy_attack.feature_steps=0"):
        AnalyticLinear(feature_steps=0)
