"""``--model_config_file_poll_wait_seconds`` of a PS, dense or entry server: its ``--model_config_file`` read again
every so often, and applied when the models it names differ from those hosted.

As in tensorflow_model_server, which reloads the file at every poll, the file wins: a HandleReloadConfigRequest that
made the hosted models differ from it is undone at the next poll. The poll applies a file as that RPC is applied:
one it refuses (``check``: a base path that is not there, a label on a version not served) raises for the poll
step to log and count, as does a file that cannot be read or parsed (being rewritten); the hosted models keep
serving, and the next step reads the file again. A file that sets no config at all (empty, or cut short while being
rewritten) changes nothing, as tensorflow_model_server takes no action for an empty config; an explicit
``model_config_list {}`` does unload every model. The read runs off the event loop, so a stalled file system does
not stall serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from monolith_serving.core.export_layout import read_model_server_config
from monolith_serving.core.model_config_list import check_reload
from monolith_serving.core.version_lifecycle import HostedConfig, VersionLifecycle
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2


class NamedConfig(Protocol):
    @property
    def name(self) -> str: ...


C = TypeVar("C", bound=NamedConfig)


class ModelConfigFile(Generic[C]):
    """The hosted models a ModelServerConfig file names (``parse``: the server's own reading of its entries, which
    refuses models it cannot host), applied by ``apply`` when they differ from ``hosted()`` (name -> config)."""

    def __init__(
        self,
        path: Path,
        parse: Callable[[model_server_config_pb2.ModelServerConfig], tuple[C, ...]],
        apply: Callable[[Sequence[C]], Awaitable[None]],
        hosted: Callable[[], Mapping[str, C]],
        logger: logging.Logger,
        check: Callable[[Sequence[C]], None] = lambda configs: None,
    ) -> None:
        self.path = path
        self._parse = parse
        self._apply = apply
        self._hosted = hosted
        self._log = logger
        self._check = check

    def read(self) -> tuple[C, ...]:
        """The models the file names now; errors (NOT_FOUND, INVALID_ARGUMENT) name the file."""
        return self._parse(read_model_server_config(self.path))

    async def apply_at_start(self) -> None:
        await self._apply(self.read())

    async def poll_step(self) -> None:
        """Reads the file again and applies it when its models differ from the hosted ones."""
        proto = await asyncio.to_thread(read_model_server_config, self.path)
        if proto.WhichOneof("config") is None:
            self._log.info("model config file %s sets no config (empty, or being rewritten): no action", self.path)
            return
        configs = self._parse(proto)
        if {config.name: config for config in configs} == dict(self._hosted()):
            return
        self._check(configs)
        self._log.info("model config file %s differs from the hosted models: applying it", self.path)
        await self._apply(configs)


H = TypeVar("H", bound=HostedConfig)


def hosted_models_config_file(
    path: Path | None,
    parse: Callable[[model_server_config_pb2.ModelServerConfig], tuple[H, ...]],
    versions: VersionLifecycle[H, Any, Any],
    logger: logging.Logger,
) -> ModelConfigFile[H] | None:
    """The ``--model_config_file`` of a PS or dense server, whose models ``versions`` hosts, applied as their
    HandleReloadConfigRequest is (``check_reload``, then the change); None without a file."""
    if path is None:
        return None
    return ModelConfigFile(
        path,
        parse=parse,
        apply=versions.apply_config,
        hosted=lambda: {name: model.config for name, model in versions.models.items()},
        logger=logger,
        check=lambda configs: check_reload(configs, versions),
    )
