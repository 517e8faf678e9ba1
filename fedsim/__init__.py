"""fedsim: federated-learning simulation on Flower + Ray.

The core engine lives here; concrete strategies, attacks and defenses live in
``fedsim.strategies``, ``fedsim.attacks`` and ``fedsim.defenses`` and are chosen
through Hydra ``_target_`` paths. Importing this package only sets a default for
Flower's telemetry switch (before flwr is imported: otherwise Flower posts
telemetry with a 60 s timeout on this offline machine).
"""

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

__version__ = "0.1.0"
