"""Poisoning attacks: data (label flipping, unreliable clients) and update (sign flip, additive noise) attacks."""
