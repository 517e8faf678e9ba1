"""The model factory's pool: a reused model is indistinguishable from a fresh copy, and one whose structure a
strategy changed is never reused."""

from __future__ import annotations

import torch

from fedsim.engine.context import Layout, ModelFactory



class NormNet(torch.nn.Module):
    """A small convolutional net with BatchNorm buffers (running statistics change in place when it trains)."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.conv, self.norm = torch.nn.Conv2d(input_shape[0], 4, 3), torch.nn.BatchNorm2d(4)
        self.head = torch.nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.conv(x)).mean((2, 3)))


def factory() -> ModelFactory:
    return ModelFactory({"_target_": "test_model_pool.NormNet"}, (1, 8, 8), 10, seed=3, device=torch.device("cpu"))


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def assert_like_fresh(model: torch.nn.Module, models: ModelFactory, state: dict[str, torch.Tensor]) -> None:
    fresh = models()
    fresh.load_state_dict(state, strict=False)
    got, want = tensors(model), tensors(fresh)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
        assert got[name].requires_grad == want[name].requires_grad and got[name].grad is None
    assert [m.training for m in model.modules()] == [m.training for m in fresh.modules()]


def test_a_released_model_comes_back_reset_to_the_initial_state_plus_the_new_payload() -> None:
    models = factory()
    names = [n for n, _ in models().named_parameters()]
    first = models.holding({names[0]: torch.ones_like(dict(models().named_parameters())[names[0]])})
    first(torch.randn(4, 1, 8, 8))  # a training-mode forward moves the BatchNorm statistics in place
    with torch.no_grad():  # what a strategy may do to its model: change tensors in place, freeze, train, eval
        for p in first.parameters():
            p.add_(1.0)
            p.grad = torch.ones_like(p)
        first.requires_grad_(False)
        first.eval()
    models.release(first)
    payload = {names[-1]: torch.full_like(dict(first.named_parameters())[names[-1]], 0.5)}  # a partial payload
    second = models.holding(payload)
    assert second is first
    assert_like_fresh(second, models, payload)


def test_a_model_whose_structure_changed_is_not_reused() -> None:
    models = factory()
    for change in (lambda m: m.register_forward_hook(lambda *a: None), lambda m: setattr(m, "cache", []),
                   lambda m: m.add_module("extra", torch.nn.Linear(2, 2))):
        model = models.holding({})
        change(model)
        models.release(model)
        again = models.holding({})
        assert again is not model
        assert_like_fresh(again, models, {})


def test_a_wrong_payload_shape_raises_load_state_dicts_error() -> None:
    models = factory()
    models.release(models.holding({}))
    name = next(n for n, _ in models().named_parameters())
    try:
        models.holding({name: torch.zeros(1)})
    except RuntimeError as exc:
        assert "size mismatch" in str(exc)
    else:
        raise AssertionError("a payload of the wrong shape was loaded")


class TiedNet(torch.nn.Module):
    """One weight under two names and one module under two names (tied embeddings), plus a non-persistent buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(3, 3)
        self.out = torch.nn.Linear(3, 3)
        self.out.weight = self.embed.weight
        self.again = self.embed
        self.register_buffer("scale", torch.ones(3), persistent=False)


def test_the_layout_lists_modules_and_tensors_as_torch_does() -> None:
    for model in (NormNet((1, 8, 8), 10), TiedNet(), torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())):
        layout = Layout.of(model)
        assert list(layout.modules) == list(model.modules())
        assert list(layout.params.items()) == list(model.named_parameters())
        assert list(layout.tensors.items()) == [*model.named_parameters(), *model.named_buffers()]


def test_lent_models_are_taken_back_when_the_block_ends() -> None:
    models = factory()
    with models.lending() as lend:
        first = lend()
        with torch.no_grad():
            for p in first.parameters():
                p.add_(1.0)
        second = lend()
        assert second is not first
    again = [models.holding({}), models.holding({})]  # both back in the pool, and lent again reset
    assert {id(m) for m in again} == {id(first), id(second)}
    for model in again:
        assert_like_fresh(model, models, {})
