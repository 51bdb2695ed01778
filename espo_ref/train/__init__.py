"""Training with ESPO and the baselines: a small on-policy RLVR trainer on transformers.

``train(TrainConfig(...))`` runs a training (``espo-ref train``); ``run_demo()`` trains the
tiny model with ESPO and GSPO and writes a report (``espo-ref demo``). Importing this
package is cheap: torch and transformers load when a function is called.
"""

from .config import ALGOS, TrainConfig
from .errors import NonFiniteLossError

__all__ = ["ALGOS", "TrainConfig", "NonFiniteLossError", "train", "run_demo"]


def train(*args, **kwargs):
    from .trainer import train as _train

    return _train(*args, **kwargs)


def run_demo(*args, **kwargs):
    from .demo import run_demo as _run_demo

    return _run_demo(*args, **kwargs)
