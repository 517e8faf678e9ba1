"""The generator prior GIFD searches: a small VAE decoder in blocks, trained offline and cached.

No pretrained GAN can be downloaded here, so the attacker trains its own prior on
auxiliary data the clients do not hold and caches the weights by a key of everything
that determines them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsim.params import ParamError
from fedsim.seeding import derive_seed


class BlockGenerator(nn.Module):
    """latent -> 7x7-style base map -> two x2 up-sampling blocks -> image in [0, 1].

    ``forward_from(k, h)`` runs the blocks from ``k`` on, so a search can start at any
    intermediate feature ``h`` (the input of block ``k``; ``k = 0`` is the latent).
    """

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int = 16, width: int = 64) -> None:
        super().__init__()
        c, h, w = image_shape
        if h % 4 or w % 4:
            raise ParamError(f"privacy_attack: the generator needs image sides divisible by 4, got {h}x{w}")
        self.latent_dim = latent_dim
        self.blocks = nn.ModuleList([
            nn.Sequential(nn.Linear(latent_dim, width * (h // 4) * (w // 4)), nn.ReLU(), nn.Unflatten(1, (width, h // 4, w // 4))),
            nn.Sequential(nn.ConvTranspose2d(width, width // 2, 4, 2, 1), nn.ReLU()),
            nn.Sequential(nn.ConvTranspose2d(width // 2, width // 4, 4, 2, 1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(width // 4, c, 3, padding=1), nn.Sigmoid()),
        ])

    def forward_from(self, k: int, h: torch.Tensor) -> torch.Tensor:
        for block in self.blocks[k:]:
            h = block(h)
        return h

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.forward_from(0, z)


class Encoder(nn.Module):
    """The VAE encoder used only to train the generator: image -> (mean, log-variance)."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, 32, 4, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(), nn.Flatten(),
            nn.Linear(64 * (h // 4) * (w // 4), 2 * latent_dim),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x).chunk(2, dim=1)


def train_generator(pixels: np.ndarray, latent_dim: int, epochs: int, seed: int) -> BlockGenerator:
    """Train a VAE on auxiliary images (N, C, H, W) in [0, 1]; return its decoder."""
    shape = tuple(pixels.shape[1:])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "gifd-generator"))
        decoder, encoder = BlockGenerator(shape, latent_dim), Encoder(shape, latent_dim)
        optimizer = torch.optim.Adam([*decoder.parameters(), *encoder.parameters()], lr=2e-3)
        x_all = torch.from_numpy(pixels).float()
        for _ in range(epochs):
            for idx in torch.randperm(len(x_all)).split(64):
                x = x_all[idx]
                mu, logvar = encoder(x)
                z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
                recon = nn.functional.binary_cross_entropy(decoder(z), x, reduction="sum")
                kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum()
                optimizer.zero_grad()
                ((recon + kl) / len(x)).backward()
                optimizer.step()
    return decoder.eval().requires_grad_(False)


def cached_generator(pixels: np.ndarray, latent_dim: int, epochs: int, seed: int, cache_dir: Path) -> BlockGenerator:
    """The generator for these auxiliary images and settings, trained once and reused from ``cache_dir``."""
    key = hashlib.sha256(pixels.tobytes() + json.dumps([latent_dim, epochs, seed, pixels.shape]).encode()).hexdigest()[:16]
    path = Path(cache_dir).expanduser() / f"gifd_generator_{key}.pt"
    if path.exists():
        generator = BlockGenerator(tuple(pixels.shape[1:]), latent_dim)
        generator.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return generator.eval().requires_grad_(False)
    generator = train_generator(pixels, latent_dim, epochs, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(generator.state_dict(), path)
    return generator
