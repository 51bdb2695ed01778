"""[CONF-PEERS] The training engines whose own loss code the runner meets: one module per engine.

An engine module registers its adapters (named after the engine: ``verl``, ``verl-advantage``)
and calls the engine's real functions. Beside it, one expected-failure file per engine version
it was measured on, ``<engine>-<version>.txt``, every line citing its [BASE-PEERS] row
(specs/baselines.md). An installed version without a file is refused by name: the
differences of another release are not known until measured.

The next engine is one module here, its adapters in ENGINE_ADAPTERS, its expected-failure
file and its environment script under tests/peers/.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..errors import SetupError

HERE = Path(__file__).resolve().parent

# adapter name -> the engine module that registers it
ENGINE_ADAPTERS: dict[str, str] = {"verl": "verl", "verl-advantage": "verl"}


def engine_adapter(name: str):
    """The adapter class registered under ``name`` by its engine module (imported on first use); None if no engine has it."""
    module = ENGINE_ADAPTERS.get(name)
    if module is None:
        return None
    importlib.import_module(f"{__name__}.{module}")
    from ..adapters import ADAPTERS

    return ADAPTERS.get(name)


def installed_version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def known_differences(engine: str, distribution: str) -> str:
    """The shipped expected-failure file of the installed engine version (its name, e.g. ``verl-0.9.1``);
    SetupError naming the measured versions when the installed one has none."""
    found = installed_version(distribution)
    measured = sorted(p.stem for p in HERE.glob(f"{engine}-*.txt"))
    if found is None:
        raise SetupError(f"--adapter {engine} needs {distribution} installed (measured versions: "
                         f"{', '.join(v.split('-', 1)[1] for v in measured)})")
    name = f"{engine}-{found}"
    if name not in measured:
        raise SetupError(f"--adapter {engine}: {distribution} {found} is installed, but the adapter was measured on "
                         f"{', '.join(v.split('-', 1)[1] for v in measured)} only (its loss code changes between "
                         "releases; install a measured version)")
    return name
