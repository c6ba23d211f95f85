"""Which core of a unified server answers a model name, and the split of a ModelServerConfig between them.

A unified container's one gRPC address serves the sub_graphs its layout assigns (REFERENCE §7): names
``<model>:entry`` / ``entry`` go to the entry core, ``<model>:ps_<i>`` / ``ps_<i>`` to the PS core and
``<model>:dense_<i>`` / ``dense_<i>`` (dense_alone's network) to the dense core.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import ps_index
from monolith_serving.dense.config import is_dense_sub_model
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

__all__ = ["ENTRY_SUB_GRAPH", "HOSTED_SUB_GRAPHS", "Side", "SplitConfig", "side_of", "split_model_server_config"]

ENTRY_SUB_GRAPH = "entry"
HOSTED_SUB_GRAPHS = "<model>:entry, <model>:ps_<i> and <model>:dense_<i>"  # how errors and warnings name them


class Side(StrEnum):
    PS = "ps"
    DENSE = "dense"
    ENTRY = "entry"


def side_of(model_name: str) -> Side | None:
    """The core serving ``model_name``; None for a name no core can host (e.g. ``demo:entry2``)."""
    if ps_index(model_name) is not None:
        return Side.PS
    if is_dense_sub_model(model_name):
        return Side.DENSE
    if model_name.rsplit(":", 1)[-1] == ENTRY_SUB_GRAPH:
        return Side.ENTRY
    return None


@dataclass(frozen=True)
class SplitConfig:
    ps: model_server_config_pb2.ModelServerConfig
    dense: model_server_config_pb2.ModelServerConfig
    entry: model_server_config_pb2.ModelServerConfig


def _empty() -> model_server_config_pb2.ModelServerConfig:
    config = model_server_config_pb2.ModelServerConfig()
    config.model_config_list.SetInParent()  # an empty list is "host nothing", not "no config"
    return config


def split_model_server_config(config: model_server_config_pb2.ModelServerConfig) -> SplitConfig:
    """PS, dense and entry models, each as its own ModelServerConfig (order kept; an empty part unloads).

    Raises InvalidArgumentError for ``custom_model_config`` or a name no core hosts, so a bad reload
    changes nothing.
    """
    if config.WhichOneof("config") == "custom_model_config":
        raise InvalidArgumentError("custom_model_config is not supported; use model_config_list")
    parts = {side: _empty() for side in Side}
    for model in config.model_config_list.config:
        side = side_of(model.name)
        if side is None:
            raise InvalidArgumentError(
                f"model {model.name!r}: a unified server hosts {HOSTED_SUB_GRAPHS} sub_graphs only"
            )
        parts[side].model_config_list.config.add().CopyFrom(model)
    return SplitConfig(ps=parts[Side.PS], dense=parts[Side.DENSE], entry=parts[Side.ENTRY])
