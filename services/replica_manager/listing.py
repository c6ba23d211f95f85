"""``monolith-serving replicas``: a one-shot table (or JSON) of every replica registered under a bzid.

Columns: model, type:task (v1) or sub_graph (v3), replica id, address, registry state, whether the replica
answers a probe now (health + GetModelStatus) and the version it reports. Exit 1 when the registry cannot
be reached within ``--timeout_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from typing import TextIO

from monolith_serving.core.cli_flags import add_flag
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.discovery.factory import create_discovery
from monolith_serving.discovery.replica_watcher import ReplicaWatcher
from monolith_serving.replica_manager.cluster_view import ClusterView, ReplicaRow
from monolith_serving.replica_manager.flags import RegistrySettings, add_registry_flags, registry_settings
from monolith_serving.replica_manager.prober import GrpcReplicaProber, ProbeResult

log = logging.getLogger(__name__)

COLUMNS = ("model", "task", "replica", "address", "state", "reachable", "version")


@dataclass(frozen=True)
class ListedReplica:
    row: ReplicaRow
    probe: ProbeResult | None  # None: nothing to probe (no address)

    def as_dict(self) -> dict[str, str | int | bool | None]:
        return {
            "model": self.row.model,
            "sub_graph": self.row.sub_graph,
            "task": self.row.key,
            "server_type": self.row.server_type.value if self.row.server_type is not None else None,
            "replica": self.row.replica,
            "address": self.row.address,
            "state": self.row.state,
            "reachable": self.probe.healthy if self.probe is not None else None,
            "version": self.probe.version if self.probe is not None else None,
            "error": self.probe.error if self.probe is not None else None,
        }


def configure(parser: argparse.ArgumentParser) -> None:
    add_registry_flags(parser)
    add_flag(parser, "--json", action="store_true", help="print a JSON list instead of a table")
    add_flag(parser, "--timeout_s", type=float, default=10.0, help="registry connect timeout")
    add_flag(parser, "--probe_timeout_s", type=float, default=1.0, help="per-RPC timeout of the replica probes")


async def list_replicas(settings: RegistrySettings, *, timeout_s: float, probe_timeout_s: float) -> list[ListedReplica]:
    """Read the registry once and probe every replica with an address (concurrently)."""
    discovery = create_discovery(settings.discovery)
    await discovery.start()
    try:
        if not await discovery.wait_connected(timeout_s):
            raise InvalidArgumentError(f"registry not reachable within {timeout_s:g} s")
        v1 = ReplicaWatcher(discovery=discovery, bzid=settings.bzid, agent_version=1)
        v3 = ReplicaWatcher(discovery=discovery, bzid=settings.bzid, agent_version=3)
        await v1.resync()
        await v3.resync()
        rows = ClusterView(v1=v1, v3=v3, probes=None).rows()
    finally:
        await discovery.stop()
    async with GrpcReplicaProber(timeout_s=probe_timeout_s) as prober:

        async def one(row: ReplicaRow) -> ListedReplica:
            return ListedReplica(row, await prober.probe(row.target) if row.target is not None else None)

        return list(await asyncio.gather(*(one(r) for r in rows)))


def _cells(item: ListedReplica) -> tuple[str, ...]:
    probe = item.probe
    reachable = "-" if probe is None else ("yes" if probe.healthy else "no")
    version = "-" if probe is None or probe.version is None else str(probe.version)
    return (
        item.row.model,
        item.row.key,
        item.row.replica,
        item.row.address or "-",
        item.row.state,
        reachable,
        version,
    )


def write_table(items: list[ListedReplica], out: TextIO) -> None:
    rows = [tuple(c.upper() for c in COLUMNS), *(_cells(i) for i in items)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n")


def run(args: argparse.Namespace) -> int:
    try:
        settings = registry_settings(args)
        items = asyncio.run(list_replicas(settings, timeout_s=args.timeout_s, probe_timeout_s=args.probe_timeout_s))
    except InvalidArgumentError as error:
        log.error("%s", error.message)
        return 1
    if args.json:
        json.dump([i.as_dict() for i in items], sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        write_table(items, sys.stdout)
    return 0
