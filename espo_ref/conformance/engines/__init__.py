"""[CONF-PEERS] The training engines whose own loss code the runner meets: one module per engine.

An engine module registers its adapters (named after the engine: ``verl``, ``verl-advantage``)
and calls the engine's real functions. Beside it, one expected-failure file per engine version
it was measured on, ``<engine>-<version>.txt``, every line citing its [BASE-PEERS] row
(specs/baselines.md). An installed version without a file is refused by name: the
differences of another release are not known until measured.

An engine adapter may define ``unsupported(function, config, kwargs) -> str | None``: the option
of a case the engine does not offer. Such a case is not run; it is reported as unsupported with
the option named, and does not count against the engine (the runner asks in its own process).

The next engine is one module here (its adapters named ``<engine>`` or ``<engine>-<what>``,
its place in ORDER), its expected-failure file beside it and its environment script
``tests/peers/setup_<engine>.sh``. The module declares ENGINE, DISTRIBUTION (the package whose
version selects the expected-failure file), ENVIRONMENT (its folder in the repository root, or
None for the project's own environment) and MATRIX: ``(function, callable, adapter)`` rows, or
``(function, callable, adapter, distribution)`` where one environment holds two releases; it may
define ``before_import()``, run before the engine's callable is imported.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from ..adapters import Adapter
from ..errors import SetupError

HERE = Path(__file__).resolve().parent

# the order of the conformance matrix; an engine is a module here, its adapters named
# "<engine>" or "<engine>-<what>" (verl, verl-advantage)
ORDER = ("verl", "trl", "trinity", "skyrl", "areal", "openrlhf")
_MODULES = sorted(p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_"))
ENGINES: tuple[str, ...] = tuple(e for e in ORDER if e in _MODULES) + tuple(e for e in _MODULES if e not in ORDER)


class _AdapterNames(dict):
    """adapter name -> the engine module that registers it (by the naming rule)."""

    def get(self, name, default=None):
        engine = str(name).split("-", 1)[0]
        return engine if engine in ENGINES else default

    def __contains__(self, name) -> bool:
        return self.get(name) is not None

    def __iter__(self):
        return iter(ENGINES)


ENGINE_ADAPTERS = _AdapterNames()


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


def unsupported_option(adapter: str, case) -> str | None:
    """[CONF-PEERS] The option of ``case`` that the engine behind ``adapter`` does not offer, in words
    (``loss_agg_mode=seq-mean-token-sum``), or None. Decided in the runner's process from the
    engine module's own table, so the implementation under test cannot declare its failures away."""
    if adapter not in ENGINE_ADAPTERS:
        return None
    cls = engine_adapter(adapter)
    lacks = getattr(cls, "unsupported", None)
    return lacks(case.function, dict(case.config or {}), dict(case.kwargs or {})) if lacks is not None else None


def engine_module(engine: str):
    """The module of ``engine`` (its ENGINE, DISTRIBUTION, ENVIRONMENT and MATRIX, and its adapters)."""
    if engine not in ENGINES:
        raise SetupError(f"unknown engine {engine!r}; engines: {', '.join(ENGINES)}")
    return importlib.import_module(f"{__name__}.{engine}")


def matrix_rows(engine: str) -> list[tuple[str, str, str, str]]:
    """[CONF-MATRIX] ``(function, callable, adapter, distribution)`` for each row of ``engine``'s MATRIX."""
    mod = engine_module(engine)
    return [tuple(row) if len(row) == 4 else (*row, mod.DISTRIBUTION) for row in mod.MATRIX]


def before_import(adapter: str) -> None:
    """[CONF-PEERS] What an engine needs done before its code is imported (its module's
    ``before_import()``: a typing shim, an environment variable), for the adapter ``adapter``."""
    engine = ENGINE_ADAPTERS.get(adapter)
    if engine is not None:
        hook = getattr(engine_module(engine), "before_import", None)
        if hook is not None:
            hook()


class EngineAdapter(Adapter):
    """[CONF-PEERS] What every engine's loss adapter does when it is built: find the expected-failure
    file of the installed version (refusing an unmeasured one), refuse a function the engine does not
    have and a backend other than torch, then load the engine's own pieces (``load``), once per worker.
    A subclass sets ``engine``, ``distribution``, ``functions``, ``checks`` (what it checks, in words)
    and ``title`` (the engine's name in "TRL has no GMPO"; None: the message names no engine)."""

    provides = ("loss", "grad")
    backend_default = "torch"
    engine: str = ""
    distribution: str = ""
    functions: tuple[str, ...] = ()
    checks: str = ""
    title: str | None = None

    def __init__(self, impl, function: str, backend: str = "torch", device: str = "cpu"):
        self.known_differences = known_differences(self.engine, self.distribution)  # a failure it lists names its row
        if function not in self.functions:
            lacks = f"; {self.title} has no {function.removesuffix('_loss').upper()}" if self.title else ""
            raise SetupError(f"--adapter {self.name} checks {self.checks} ({', '.join(self.functions)}{lacks}); "
                             f"got --function {function}")
        if backend != "torch":
            raise SetupError(f"--adapter {self.name} needs --backend torch")
        self.load(impl)
        super().__init__(impl, function, backend, device)

    def load(self, impl) -> None:
        """The engine's own imports and settings for ``impl``; nothing by default."""
