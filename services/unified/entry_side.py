"""The entry core of a unified server: at most one entry model, rebuilt when the model changes.

An ``EntryServer`` core is bound to one entry name (its PS model names and the agent key filter
``<model>:ps_<i>`` derive from it) and one shard count, so a reload naming another entry model (or one
whose serving spec has another ``num_ps``) replaces the core; the same model with a new policy is
reconfigured in place (availability-preserving, see ``EntryModel.reconfigure``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path

from monolith_serving.core.agent_conf import DEFAULT_FETCH_PS_RETRY, DEFAULT_FETCH_PS_TIMEOUT_MS
from monolith_serving.core.errors import FailedPreconditionError, NotFoundError
from monolith_serving.core.model_config_list import check_base_path
from monolith_serving.entry.main import EntryServer, EntryServerConfig, spec_num_ps
from monolith_serving.entry.metrics import EntryMetrics
from monolith_serving.entry.model import EntryModel, EntryModelConfig
from monolith_serving.entry.ps_coalesce import CoalesceConfig
from monolith_serving.entry.request_coalesce import RequestCoalescing
from monolith_serving.entry.request_parser import DEFAULT_MAX_FIDS_PER_REQUEST
from monolith_serving.entry.servicer import EntryModelServicer, EntryPredictionServicer, entry_config_from_proto
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2

__all__ = ["EntryReadiness", "EntrySettings", "EntrySide"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class EntrySettings:
    """What every entry core of this server shares (flags of ``monolith-serving unified``)."""

    agent_address: str
    fetch_ps_timeout_ms: int = DEFAULT_FETCH_PS_TIMEOUT_MS
    fetch_ps_retry: int = DEFAULT_FETCH_PS_RETRY
    coalesce: CoalesceConfig = field(default_factory=CoalesceConfig)
    coalesce_requests: RequestCoalescing = field(default_factory=RequestCoalescing)
    max_batch_size: int | None = None
    poll_interval_s: float = 1.0
    max_fids_per_request: int = DEFAULT_MAX_FIDS_PER_REQUEST  # the PS side's limit too (one flag for both)


@dataclass(frozen=True)
class _Hosted:
    server: EntryServer
    prediction: EntryPredictionServicer
    model: EntryModelServicer


@dataclass(frozen=True)
class EntryReadiness:
    """The entry model as ``core.model_health`` sees a hosted model: it serves once a version is served, i.e.
    GetModelStatus says AVAILABLE (every PS shard, and a remote dense network, has the version somewhere)."""

    model: EntryModel

    def serving(self) -> int | None:
        served = self.model.served_versions
        return max(served) if served else None


class EntrySide:
    """Holds the current entry core. ``apply`` runs on the event loop; callers serialise it."""

    def __init__(self, *, settings: EntrySettings, metrics: EntryMetrics) -> None:
        self._settings = settings
        self._metrics = metrics  # one set for every core: a registry cannot hold the same metric twice
        self._hosted: _Hosted | None = None

    @property
    def model_name(self) -> str | None:
        hosted = self._hosted
        return hosted.server.model.config.name if hosted and hosted.server.model.config else None

    def readiness(self) -> dict[str, EntryReadiness]:
        """The hosted entry model by name (empty without one), for the server's health."""
        hosted = self._hosted
        name = self.model_name
        return {name: EntryReadiness(hosted.server.model)} if hosted is not None and name is not None else {}

    def check(self, wanted: EntryModelConfig | None) -> None:
        """NOT_FOUND when ``wanted`` moves the entry to a base path that is not a folder (``apply`` would fail
        only after the PS side changed); a model keeping its path is not checked."""
        if wanted is None:
            return
        hosted = self._hosted
        current = hosted.server.model.config if hosted is not None else None
        same = current is not None and current.name == wanted.name
        check_base_path(wanted.name, wanted.base_path, hosted_from=current.base_path if same and current else None)

    def _current(self, name: str) -> _Hosted:
        hosted = self._hosted
        if hosted is None:
            raise NotFoundError(f"model {name!r} is not served here (no entry model loaded)")
        return hosted

    def prediction(self, name: str) -> EntryPredictionServicer:
        return self._current(name).prediction

    def model_servicer(self, name: str) -> EntryModelServicer:
        return self._current(name).model

    def parse(self, config: model_server_config_pb2.ModelServerConfig) -> EntryModelConfig | None:
        """The entry model of a config (None: unload); InvalidArgumentError for more than one or a bad one."""
        defaults = EntryModelConfig(
            name="",
            base_path=Path("."),
            fetch_ps_timeout_ms=self._settings.fetch_ps_timeout_ms,
            max_batch_size=self._settings.max_batch_size,
        )
        return entry_config_from_proto(config, defaults)

    async def apply(self, wanted: EntryModelConfig | None) -> None:
        if wanted is None:
            await self._replace(None)
            return
        num_ps = await asyncio.to_thread(spec_num_ps, wanted)
        if num_ps is None:
            raise FailedPreconditionError(
                f"entry {wanted.name!r}: no version with a serving spec under {wanted.base_path} yet, "
                "so the number of PS shards is unknown"
            )
        hosted = self._hosted
        if hosted is not None and self.model_name == wanted.name and hosted.server.config.num_ps == num_ps:
            await hosted.server.model.reconfigure(wanted)
            return
        server = EntryServer(
            EntryServerConfig(
                model=wanted,
                num_ps=num_ps,
                agent_address=self._settings.agent_address,
                fetch_ps_retry=self._settings.fetch_ps_retry,
                coalesce=self._settings.coalesce,
                coalesce_requests=self._settings.coalesce_requests,
                poll_interval_s=self._settings.poll_interval_s,
                max_fids_per_request=self._settings.max_fids_per_request,
            ),
            metrics=self._metrics,
        )
        await server.open()
        prediction, model = server.servicers()
        log.info("entry %s hosted: %d PS shards from agent %s", wanted.name, num_ps, self._settings.agent_address)
        await self._replace(_Hosted(server, prediction, model))

    async def _replace(self, hosted: _Hosted | None) -> None:
        old, self._hosted = self._hosted, hosted
        if old is not None:
            await old.server.close()

    async def close(self) -> None:
        await self._replace(None)
