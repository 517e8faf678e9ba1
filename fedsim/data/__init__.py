"""Offline data layer: normalised image datasets, tokenised text datasets and client partitioners.

Datasets come from packages already installed (``embedded``) or from files on
local disk (``files``); nothing is ever downloaded. Partitioners (``partition``)
map labels to per-client index arrays as pure functions of their arguments.
"""

from fedsim.data.embedded import digits, mnist5k
from fedsim.data.files import cifar10, cifar100, fashion_mnist, mnist, read_idx
from fedsim.data.image_data import ImageData, from_uint8
from fedsim.data.leaf import femnist
from fedsim.data.partition import dirichlet, iid, natural, shards
from fedsim.data.text import TextData, chatbot_topics

__all__ = [
    "ImageData",
    "TextData",
    "chatbot_topics",
    "cifar10",
    "cifar100",
    "digits",
    "dirichlet",
    "fashion_mnist",
    "femnist",
    "from_uint8",
    "iid",
    "mnist",
    "mnist5k",
    "natural",
    "read_idx",
    "shards",
]
