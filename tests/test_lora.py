"""LoRA and FFA-LoRA: the pretrained backbone, the adapters, DP-SGD and the accountant, and runs through the engine."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import make_config
from fedsim.training import model_loss
from fedsim.strategies.dp import DPConfig, epsilon_spent, per_sample_grads, private_gradient
from conftest import Run
from fedsim.models.lora import LoRALinear, add_lora, lora_a_names, lora_b_names
from fedsim.models.minilm import MiniLMClassifier, model_dir, pretrained_encoder, tokenize
from fedsim.state import ClientState
from fedsim.strategies.lora import FFALoRA, LoRA
from fedsim.strategy import ClientUpdate, LocalTask
from fedsim.seeding import torch_generator

# A small, fast text setting: 6 topics x 20 lines, 12 tokens, one encoder layer, 3 Dirichlet(0.5) clients.
TINY = ("dataset=chatbot_topics", "dataset.max_per_class=20", "dataset.max_len=12", "model=minilm_lora",
        "model.num_layers=1", "num_clients=3", "clients_per_round=3", "partition=dirichlet", "batch_size=8", "lr=0.5")


def adapter_bytes(model: nn.Module, names: set[str]) -> int:
    params = dict(model.named_parameters())
    return sum(4 * params[n].numel() for n in names)


def test_minilm_encoder_matches_transformers_bert() -> None:
    """Our BERT reading the packaged safetensors equals transformers' BertModel + mean pooling."""
    transformers = pytest.importorskip("transformers")
    ids = torch.from_numpy(tokenize(("Who wrote Hamlet?", "can you write bubble sort in python?"), 12).copy())
    ours = pretrained_encoder(num_layers=2)
    ref = transformers.BertModel.from_pretrained(str(model_dir()), local_files_only=True, num_hidden_layers=2).eval()
    with torch.no_grad():
        hidden = ref(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
        mask = (ids != 0).float()[..., None]
        torch.testing.assert_close(ours(ids), (hidden * mask).sum(1) / mask.sum(1), atol=1e-5, rtol=1e-5)


def test_lora_adapter_starts_as_the_backbone_and_a_is_seeded_per_layer() -> None:
    base = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    x = torch.randn(3, 6)
    want = base(x)
    twin = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    twin.load_state_dict(base.state_dict())
    assert add_lora(base, ["0", "2"], rank=2, alpha=4.0, seed=7) == ["0", "2"]
    add_lora(twin, ["0", "2"], rank=2, alpha=4.0, seed=7)
    torch.testing.assert_close(base(x), want)  # B = 0: the adapted model is the pretrained one
    assert torch.equal(base[0].lora_A, twin[0].lora_A) and bool(base[0].lora_A.abs().sum() > 0)
    assert lora_a_names(base) == {"0.lora_A", "2.lora_A"} and lora_b_names(base) == {"0.lora_B", "2.lora_B"}
    other = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4))
    add_lora(other, ["0"], rank=2, alpha=4.0, seed=8)
    assert not torch.equal(other[0].lora_A, base[0].lora_A)
    assert not base.get_parameter("0.base.weight").requires_grad
    with pytest.raises(ValueError, match="match no linear layer"):
        add_lora(nn.Sequential(nn.Linear(2, 2)), ["query"], rank=2, alpha=4.0, seed=0)


@pytest.mark.parametrize("strategy, exact", [(FFALoRA(), True), (LoRA(), False)])
def test_lora_aggregation_exact_only_with_frozen_shared_a(strategy: LoRA, exact: bool) -> None:
    """FFA-LoRA: mean(B_i) A == mean(B_i A); vanilla LoRA averages A and B apart and misses it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8))
    add_lora(model, ["0"], rank=2, alpha=2.0, seed=0)
    global_state = strategy.init_global(model)
    assert ("0.lora_A" in global_state) is not exact and "0.lora_B" in global_state
    updates, merged = [], []
    for cid, n in enumerate((10, 30, 60)):
        delta = {k: torch.randn_like(v) for k, v in global_state.items()}
        updates.append(ClientUpdate(cid, delta, n))
        local = LoRALinear(nn.Linear(8, 8), 2, 2.0, torch_generator(0, "unused"))
        local.load_state_dict({**model[0].state_dict(), **{k[2:]: global_state[k] + delta[k] for k in delta}})
        merged.append(local.merged_weight() * (n / 100))
    new = strategy.aggregate(1, global_state, updates, strategy.combine)
    model[0].load_state_dict({k[2:]: v for k, v in new.items()}, strict=False)
    assert torch.allclose(model[0].merged_weight(), sum(merged), atol=1e-5) is exact


def test_lora_dp_accountant_finite_grows_with_steps_and_solves_epsilon() -> None:
    eps = [epsilon_spent(1.0, 0.1, steps, 1e-5) for steps in (10, 100, 1000)]
    assert all(math.isfinite(e) and e > 0 for e in eps) and eps == sorted(eps) and eps[0] < eps[-1]
    assert epsilon_spent(1.0, 0.1, 0, 1e-5) == 0.0
    assert epsilon_spent(2.0, 0.1, 100, 1e-5) < eps[1]  # more noise, less privacy spent
    sigma = DPConfig(epsilon=3.0).sigma(sample_rate=0.1, total_steps=200)
    assert 2.9 <= epsilon_spent(sigma, 0.1, 200, 1e-5) <= 3.0


@pytest.mark.parametrize(
    "field, value, message",
    [("noise_multiplier", -1.0, "dp.noise_multiplier=-1.0"), ("clip", 0.0, "dp.clip=0.0"),
     ("delta", 1.0, "dp.delta=1.0"), ("epsilon", 0.0, "dp.epsilon=0.0")],
)
def test_lora_dp_config_rejects_bad_values(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DPConfig(**{field: value})


def test_lora_dp_sgd_clips_each_example_and_adds_calibrated_noise() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    add_lora(model, ["0"], rank=2, alpha=2.0, seed=0)
    trainable = {"0.lora_B": model.get_parameter("0.lora_B"), "0.base.bias": model.get_parameter("0.base.bias")}
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    grads, losses = per_sample_grads(model_loss(model), trainable, x, y)
    for i in range(5):  # per-example gradients equal a plain backward pass on each example
        model.zero_grad()
        trainable["0.base.bias"].requires_grad_(True)
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        loss.backward()
        assert losses[i] == pytest.approx(float(loss.detach()), rel=1e-5)
        for name, p in trainable.items():
            torch.testing.assert_close(grads[name][i], p.grad)
    grads = {k: v * 100 for k, v in grads.items()}  # every example far above the clip norm
    clipped = private_gradient(grads, clip=0.5, sigma=0.0, expected_batch=5, generator=torch.Generator().manual_seed(0))
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
    want = {k: torch.einsum("b,b...->...", 0.5 / norms, g) / 5 for k, g in grads.items()}
    for k in want:
        torch.testing.assert_close(clipped[k], want[k], atol=1e-5, rtol=1e-4)
    big = {"w": torch.zeros(0, 200, 100)}  # empty Poisson batch: pure noise with std sigma * clip / expected batch
    noise = private_gradient(big, clip=2.0, sigma=1.5, expected_batch=10, generator=torch.Generator().manual_seed(1))["w"]
    assert float(noise.std()) == pytest.approx(0.3, rel=0.02)


@pytest.mark.parametrize("strategy, a_moves", [("ffa_lora", False), ("lora", True)])
def test_lora_local_training_keeps_a_fixed_on_every_client_only_for_ffa(strategy: str, a_moves: bool) -> None:
    cfg = make_config(*TINY, f"strategy={strategy}", "dp.noise_multiplier=1.0")
    env = Run(cfg)
    fresh = env.new_model()
    a_names = lora_a_names(fresh)
    global_state = env.strategy.init_global(fresh)
    assert (a_names <= set(global_state)) is a_moves and lora_b_names(fresh) <= set(global_state)
    for cid in range(3):
        model = env.new_model()
        model.load_state_dict(global_state, strict=False)
        x, y = env.client_data(cid)
        task = LocalTask(1, cid, model, global_state, x, y, 0.5, 1, 8, torch_generator(0, "train", 1, cid), ClientState({}))
        result = env.strategy.local_update(task)
        if a_moves:  # LoRA trains and uploads A; FFA-LoRA neither trains nor sends it
            assert all(bool(result.update[n].abs().sum() > 0) for n in a_names)
        else:
            assert not a_names & set(result.update)
        assert set(result.update) == set(global_state)
        assert all(bool(result.update[n].abs().sum() > 0) for n in lora_b_names(fresh))
        assert result.metrics["dp_epsilon"] > 0


def test_lora_strategy_refuses_a_model_without_adapters() -> None:
    with pytest.raises(ValueError, match="needs a model with LoRA adapters"):
        FFALoRA().init_global(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="token-id inputs"):
        MiniLMClassifier((1, 28, 28), 10)


def test_ffa_lora_sends_only_b_and_head_and_epsilon_grows_through_the_engine(run_sim) -> None:
    """Real replies through the inline engine: FFA-LoRA's hold B + head (half LoRA's adapter bytes)."""
    seeded = "dp.reproducible_noise=true"  # a learning check must not depend on fresh OS entropy
    summary, ffa, _ = run_sim(*TINY, "strategy=ffa_lora", "rounds=2", "dp.noise_multiplier=1.0", seeded)
    assert summary["dp_epsilon"] == max(c["dp_epsilon"] for r in ffa for c in r["clients"].values())  # in summary.json
    _, lora, _ = run_sim(*TINY, "strategy=lora", "rounds=1", "dp.noise_multiplier=1.0", seeded)
    model = Run(make_config(*TINY, "strategy=lora")).new_model()
    a_bytes, b_bytes = adapter_bytes(model, lora_a_names(model)), adapter_bytes(model, lora_b_names(model))
    head_bytes = adapter_bytes(model, {"head.weight", "head.bias"})
    assert a_bytes == b_bytes
    for record in ffa + lora:
        assert record["clients_aggregated"] == 3 and not record["rejected"]  # the server accepted exactly these arrays
    assert [r["bytes_up"] for r in ffa] == [3 * (b_bytes + head_bytes)] * 2
    assert lora[0]["bytes_up"] == 3 * (a_bytes + b_bytes + head_bytes)
    for cid in ("0", "1", "2"):
        first, second = ffa[0]["clients"][cid]["dp_epsilon"], ffa[1]["clients"][cid]["dp_epsilon"]
        assert 0 < first < second < math.inf
    assert ffa[-1]["test_acc"] > 1 / 6  # it learns something in two private rounds


def test_dp_noise_comes_from_a_secret_key_kept_only_in_the_checkpoint(tmp_path) -> None:
    """Two runs with the same public seed draw different DP noise (so the seed cannot regenerate it);
    the key is in no results file, only in the checkpoint, and a resume from it continues exactly."""
    import shutil

    from conftest import read_rounds
    from fedsim.engine.simulation import simulate

    run = (*TINY, "strategy=ffa_lora", "dp.noise_multiplier=1.0", "rounds=2", "checkpoint_every=1")
    for name in ("a", "b"):
        simulate(make_config(*run), tmp_path / name, progress=False)
    a, b = read_rounds(tmp_path / "a"), read_rounds(tmp_path / "b")
    assert a[-1]["test_loss"] != b[-1]["test_loss"]  # same seed, different noise
    key = torch.load(tmp_path / "a" / "checkpoints" / "round_000002.pt", weights_only=True)["components"]["strategy"]["noise_key"]
    assert isinstance(key, int) and key > 0
    for path in (tmp_path / "a").rglob("*"):
        if path.is_file() and path.suffix != ".pt":
            assert str(key) not in path.read_text(errors="ignore"), path
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "a", resumed)
    (resumed / "checkpoints" / "round_000002.pt").unlink()
    simulate(make_config(*run, "resume=true"), resumed, progress=False)
    assert [r["test_loss"] for r in read_rounds(resumed)] == [r["test_loss"] for r in a]


def test_reproducible_noise_draws_from_the_public_seed() -> None:
    strategy = FFALoRA(dp={"noise_multiplier": 1.0, "reproducible_noise": True})
    strategy.init_global(Run(make_config(*TINY, "strategy=ffa_lora")).new_model())
    assert strategy.noise_key is None and strategy.extra_for(0) == {}
    secret = FFALoRA(dp={"noise_multiplier": 1.0})
    secret.init_global(Run(make_config(*TINY, "strategy=ffa_lora")).new_model())
    seeds = [int(secret.extra_for(c)["dp.noise_seed"]) for c in (0, 1)]
    assert seeds[0] != seeds[1] and secret.noise_key not in seeds  # each client its own, none the run's key
