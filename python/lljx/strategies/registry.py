"""Strategy discovery through the `lljx.strategies` entry points: lazy, isolated per plugin, filterable."""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING

from lljx.strategies.api import Decoder, Strategy

if TYPE_CHECKING:
    from lljx.models import Model
    from lljx.sampling import SamplerSettings
    from lljx.strategies.slots import SlotDecoder

GROUP = "lljx.strategies"
PLUGINS_ENV = "LLJX_PLUGINS"


class StrategyError(LookupError):
    """An unknown strategy name, a duplicate name, or a plugin that failed to load."""


@dataclass(frozen=True)
class StrategyInfo:
    """One discovered strategy: its name, the distribution providing it and its one-line description."""

    name: str
    package: str
    description: str = ""
    error: str | None = None
    weights: str = ""  # how it reads weights kept in a file's format (see WEIGHTS_IN_PLACE)

    def as_dict(self) -> dict[str, str]:
        row = {"name": self.name, "package": self.package, "weights": self.weights, "description": self.description}
        if self.error is not None:
            row["error"] = self.error
        return row


def package_of(entry_point: EntryPoint) -> str:
    return entry_point.dist.name if entry_point.dist is not None else "?"


def allowed_packages() -> set[str] | None:
    """LLJX_PLUGINS: a comma-separated list of distributions whose strategies may load; unset means all."""
    value = os.environ.get(PLUGINS_ENV)
    if value is None:
        return None
    return {normalize(name) for name in value.split(",") if name.strip()}


def normalize(package: str) -> str:
    return package.strip().lower().replace("_", "-").replace(".", "-")


def discovered() -> list[EntryPoint]:
    """Entry points in the group, limited by LLJX_PLUGINS; nothing is imported here."""
    allowed = allowed_packages()
    found = entry_points(group=GROUP)
    return [ep for ep in found if allowed is None or normalize(package_of(ep)) in allowed]


def by_name() -> dict[str, list[EntryPoint]]:
    names: dict[str, list[EntryPoint]] = {}
    for ep in discovered():
        names.setdefault(ep.name, []).append(ep)
    return names


def duplicate_error(name: str, providers: list[EntryPoint]) -> str:
    packages = " and ".join(sorted(f"'{package_of(ep)}'" for ep in providers))
    return f"strategy '{name}' is provided by more than one package: {packages}"


def instantiate(entry_point: EntryPoint) -> Strategy:
    """Import the entry point; it may name a strategy object, a class or a factory."""
    target = entry_point.load()
    strategy = target() if isinstance(target, type) or not hasattr(target, "build") else target
    missing = [attr for attr in ("name", "description", "build") if not hasattr(strategy, attr)]
    if missing:
        raise TypeError(f"{entry_point.value} is not a strategy (missing {', '.join(missing)})")
    if strategy.name != entry_point.name:
        raise TypeError(f"{entry_point.value} calls itself '{strategy.name}' but is registered as '{entry_point.name}'")
    return strategy


def load(name: str) -> Strategy:
    """Load only the strategy called `name`; errors are StrategyError with one line."""
    names = by_name()
    providers = names.get(name)
    if not providers:
        available = ", ".join(sorted(names)) or "none"
        raise StrategyError(f"unknown strategy '{name}'; available: {available}")
    if len(providers) > 1:
        raise StrategyError(duplicate_error(name, providers))
    try:
        return instantiate(providers[0])
    except Exception as error:  # noqa: BLE001 - a broken plugin is reported, never a crash
        raise StrategyError(
            f"strategy '{name}' from '{package_of(providers[0])}' failed to load: {type(error).__name__}: {error}"
        ) from error


def available() -> list[StrategyInfo]:
    """Every discovered strategy with its description, or with the error that stops it loading."""
    infos = []
    for name, providers in sorted(by_name().items()):
        if len(providers) > 1:
            for ep in providers:
                infos.append(StrategyInfo(name, package_of(ep), error=duplicate_error(name, providers)))
            continue
        try:
            strategy = instantiate(providers[0])
        except Exception as error:  # noqa: BLE001 - listed with its error, breaks nothing else
            infos.append(StrategyInfo(name, package_of(providers[0]), error=f"{type(error).__name__}: {error}"))
            continue
        description = " ".join(str(strategy.description).split())
        infos.append(StrategyInfo(name, package_of(providers[0]), description, weights=weights_note(strategy)))
    return infos


WEIGHTS_IN_PLACE = "file formats in place"
WEIGHTS_DEQUANTIZED = "dequantized to f32"


def reads_file_formats(strategy: Strategy) -> bool:
    """A strategy that multiplies GGUF blocks as they are stored says so with `reads_file_formats = True`."""
    return bool(getattr(strategy, "reads_file_formats", False))


def weights_note(strategy: Strategy) -> str:
    """What happens to weights loaded at dtype auto (GGUF blocks) under this strategy."""
    return WEIGHTS_IN_PLACE if reads_file_formats(strategy) else WEIGHTS_DEQUANTIZED


def weights_dtype(strategy: Strategy, model: Model) -> str:
    """The dtype `strategy` runs `model`'s weights at: the model's own, or the dense twin's for file formats."""
    if model.config.dtype == "auto" and not reads_file_formats(strategy):
        from lljx.models.dense import DENSE_DTYPE

        return DENSE_DTYPE
    return model.config.dtype


_DENSE_TWINS: weakref.WeakKeyDictionary[Model, Model] = weakref.WeakKeyDictionary()


def build(strategy: Strategy, model: Model, sampler: SamplerSettings) -> Decoder:
    """The decoder of `strategy` for `model`: every caller builds through here.

    Weights kept in their file's format (dtype auto) are read only by lljx's Rust kernels; a
    strategy that does not declare `reads_file_formats` (the XLA-only ones, and third-party
    strategies unless they opt in) gets the model's dense f32 twin, made once per model.
    Under --tensor-parallel (`lljx.parallel.configure`) the model is placed on the mesh instead,
    dense where its weights are not (lljx.parallel.build_on_mesh).
    """
    from lljx import parallel

    layout = parallel.active()
    if layout is not None:
        return parallel.build_on_mesh(strategy, model, sampler, layout)
    return strategy.build(_weights_for(strategy, model), sampler)


def build_slots(strategy: Strategy, model: Model) -> SlotDecoder | None:
    """The batched decoder (slots) of `strategy` for `model`, or None when the strategy serves one
    request at a time (it has no `build_slots`, or the model runs on a tensor-parallel mesh, whose
    relay between processes carries one request's decoder calls); weights as in `build`."""
    from lljx import parallel

    make = getattr(strategy, "build_slots", None)
    if make is None or parallel.active() is not None:
        return None
    return make(_weights_for(strategy, model))


def _weights_for(strategy: Strategy, model: Model) -> Model:
    if reads_file_formats(strategy):
        return model
    from lljx.models.dense import dense_model

    twin = _DENSE_TWINS.get(model)
    if twin is None:
        twin = _DENSE_TWINS[model] = dense_model(model)
    return twin


DEFAULT_STRATEGY = "jit-token"  # pure JAX: what runs on every backend
CPU_DEFAULT_STRATEGY = "native-token"  # lljx's Rust decode kernels, faster than XLA:CPU's


def default_strategy() -> str:
    """The strategy `generate` and `serve` use when none is named: native-token on CPU, jit-token elsewhere
    and on a mesh (lljx's CPU kernels run on one device)."""
    import jax

    from lljx import parallel

    return CPU_DEFAULT_STRATEGY if jax.default_backend() == "cpu" and parallel.active() is None else DEFAULT_STRATEGY
