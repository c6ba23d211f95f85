"""The dense server's versions: ``core.version_lifecycle`` holding one network per version.

The states, the switch-over and the retry rules are the PS's (both use ``VersionLifecycle``); a dense version
has nothing to replay when it is published.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

from monolith_serving.core.dense_spec import DenseModelSpec, load_dense_model_spec
from monolith_serving.core.export_layout import version_dir
from monolith_serving.core.version_lifecycle import HostedModel, LifecycleHooks, Servable, VersionLifecycle
from monolith_serving.dense.config import DenseModelConfig
from monolith_serving.dense.metrics import DenseMetrics
from monolith_serving.entry.dense import LocalDenseModel, load_dense_network


@dataclass(frozen=True)
class DenseNetwork:
    """One loaded version: its spec and the network (``entry.dense``'s numpy MLP or ONNX graph)."""

    spec: DenseModelSpec
    network: LocalDenseModel


def load_dense_version(path: Path) -> DenseNetwork:
    """Reads ``dense_spec.json`` and the network it names; every shape is checked here, not per request."""
    spec = load_dense_model_spec(path)
    return DenseNetwork(spec, load_dense_network(spec.dense, spec.input_width, path))


DenseVersion = Servable[DenseNetwork, None]
DenseSubModel = HostedModel[DenseModelConfig, DenseNetwork, None]
Loader = Callable[[Path], DenseNetwork]


class DenseVersionManager(VersionLifecycle[DenseModelConfig, DenseNetwork, None]):
    """Loads and unloads dense sub-model versions per policy; ``loader`` reads one version folder."""

    def __init__(self, *, metrics: DenseMetrics, executor: Executor, loader: Loader = load_dense_version) -> None:
        def published(model: str, version: int, loaded: DenseNetwork, elapsed_s: float) -> str:
            return f"input width {loaded.spec.input_width}, output {loaded.spec.output_name!r}"

        super().__init__(
            hooks=LifecycleHooks(
                load=lambda config, version: loader(version_dir(config.base_path, version)),
                published=published,
            ),
            metrics=metrics,
            executor=executor,
        )
