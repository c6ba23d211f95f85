"""``monolith-serving ctl --zk HOSTS --bzid BZID <action>``: the v3 controller CLI (REFERENCE section 7).

Actions:
- ``decl --export-base DIR [--model-name M] [--overwrite]``: declare every sub_graph of an export under
  ``/{bzid}/saved_models/{M}/{sub_graph}`` (entry ``latest``, PS ``latest_once``). Without
  ``--overwrite`` nothing is written if any declaration already exists.
- ``pub --layout L --model 'M:glob'``: add the declared sub_graphs of M matching the glob to layout L.
- ``unpub --layout L --model 'M:glob'``: remove matching items of M from layout L.
- ``bzid_info`` (REFERENCE spelling; ``bzid-info`` is kept as an alias): JSON of models (declarations),
  containers, layouts and bindings.

:class:`Controller` holds the logic over the Discovery interface (testable on the static backend);
``run`` only parses flags and prints. Exit codes: 0 done, 1 refused (nothing matched, would overwrite,
bad export), 2 registry unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monolith_serving.agent.saved_model_decl import declaration_for
from monolith_serving.core.cli_flags import add_flag
from monolith_serving.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MonolithServingError,
    NotFoundError,
    UnavailableError,
)
from monolith_serving.core.export_layout import list_sub_models
from monolith_serving.core.zk_paths import (
    binding_model_path,
    binding_root,
    container_service_path,
    container_service_root,
    layout_item_path,
    layout_path,
    layout_root,
    parse_layout_item_name,
    saved_model_dir,
    saved_model_path,
    saved_models_root,
)
from monolith_serving.discovery.base import Discovery
from monolith_serving.discovery.config import Backend, DiscoveryConfig
from monolith_serving.discovery.factory import create_discovery

__all__ = ["Controller", "configure", "parse_model_glob", "run"]

log = logging.getLogger(__name__)


def parse_model_glob(text: str) -> tuple[str, str]:
    """``'M:glob'`` -> (model, sub_graph glob); a bare ``M`` means every sub_graph."""
    model, sep, pattern = text.partition(":")
    if not model or (sep and not pattern):
        raise InvalidArgumentError(f"--model {text!r}: expected '<model>:<sub_graph glob>'")
    return model, pattern or "*"


def _json_or_text(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError, ValueError):  # a node holding anything
        return data.decode(errors="replace")


@dataclass(frozen=True)
class Controller:
    """The controller actions over one bzid. Every method needs a connected ``discovery``."""

    discovery: Discovery
    bzid: str

    async def decl(self, export_base: Path, *, model_name: str | None = None, overwrite: bool = False) -> list[str]:
        """Declare every sub_graph of ``export_base``; returns the declared paths."""
        base = export_base.resolve()
        model = model_name or base.name
        sub_graphs = list_sub_models(base)
        if not sub_graphs:
            raise NotFoundError(f"no sub_graphs (entry, ps_*, dense*) under {str(base)!r}")
        paths = {sg: saved_model_path(self.bzid, model, sg) for sg in sub_graphs}
        if not overwrite:
            # Checked before writing anything, so a refused decl leaves the tree as it was.
            existing = [p for p in paths.values() if await self.discovery.get_data(p) is not None]
            if existing:
                raise FailedPreconditionError(
                    f"{len(existing)} declarations exist (first: {existing[0]}); pass --overwrite to replace them"
                )
        for sub_graph, path in paths.items():
            await self.discovery.set_persistent(path, declaration_for(base, sub_graph).to_json())
        return list(paths.values())

    async def _declared(self, model: str) -> list[str]:
        return await self.discovery.get_children(saved_model_dir(self.bzid, model))

    async def pub(self, layout: str, model: str, pattern: str) -> list[str]:
        """Add declared ``model`` sub_graphs matching ``pattern`` to ``layout``; returns the item names."""
        matched = fnmatch.filter(await self._declared(model), pattern)
        if not matched:
            raise NotFoundError(f"no declared sub_graph of model {model!r} matches {pattern!r}")
        for sub_graph in matched:
            await self.discovery.set_persistent(layout_item_path(self.bzid, layout, model, sub_graph), b"")
        return [f"{model}:{sg}" for sg in matched]

    async def unpub(self, layout: str, model: str, pattern: str) -> list[str]:
        """Remove items of ``model`` matching ``pattern`` from ``layout``; returns the removed names."""
        removed: list[str] = []
        for name in await self.discovery.get_children(layout_path(self.bzid, layout)):
            try:
                item = parse_layout_item_name(name)
            except InvalidArgumentError:
                continue
            if item.model == model and fnmatch.fnmatchcase(item.sub_graph, pattern):
                await self.discovery.delete(layout_item_path(self.bzid, layout, item.model, item.sub_graph))
                removed.append(name)
        if not removed:
            raise NotFoundError(f"layout {layout!r} has no item of model {model!r} matching {pattern!r}")
        return removed

    async def bzid_info(self) -> dict[str, Any]:
        """``{"models": {m: {sg: decl}}, "containers": {c: info}, "layouts": {l: [items]}, "bindings": {m: [..]}}``."""
        d = self.discovery
        models: dict[str, dict[str, Any]] = {}
        for model in await d.get_children(saved_models_root(self.bzid)):
            models[model] = {
                sg: _json_or_text(await d.get_data(saved_model_path(self.bzid, model, sg)))
                for sg in await d.get_children(saved_model_dir(self.bzid, model))
            }
        containers: dict[str, Any] = {}
        for name in await d.get_children(container_service_root(self.bzid)):
            cluster, _, ctx_id = name.partition(":")
            containers[name] = _json_or_text(await d.get_data(container_service_path(self.bzid, cluster, ctx_id)))
        layouts = {
            layout: await d.get_children(layout_path(self.bzid, layout))
            for layout in await d.get_children(layout_root(self.bzid))
        }
        bindings = {
            model: await d.get_children(binding_model_path(self.bzid, model))
            for model in await d.get_children(binding_root(self.bzid))
        }
        return {"models": models, "containers": containers, "layouts": layouts, "bindings": bindings}


BZID_INFO = "bzid_info"
BZID_INFO_ALIAS = "bzid-info"


def configure(parser: argparse.ArgumentParser) -> None:
    add_flag(parser, "--zk", required=True, help="ZooKeeper hosts (host:port[,host:port...])")
    add_flag(parser, "--bzid", required=True, help="business id: the root of the tree")
    add_flag(parser, "--timeout_s", type=float, default=15.0, help="how long to wait for ZooKeeper")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    decl = actions.add_parser("decl", help="declare every sub_graph of an export under saved_models")
    add_flag(decl, "--export-base", required=True, help="export base folder (holds entry/, ps_0/, ...)")
    add_flag(decl, "--model-name", default=None, help="model name (default: the export base folder's name)")
    decl.add_argument("--overwrite", action="store_true", help="replace existing declarations")
    for name, summary in (("pub", "add sub_graphs to a layout"), ("unpub", "remove sub_graphs from a layout")):
        sub = actions.add_parser(name, help=summary)
        add_flag(sub, "--layout", required=True, help="layout name")
        add_flag(sub, "--model", required=True, help="'<model>:<sub_graph glob>', e.g. 'm:ps_*'")
    # REFERENCE section 7 names it bzid_info; bzid-info, this CLI's first spelling, stays accepted.
    actions.add_parser(BZID_INFO, aliases=[BZID_INFO_ALIAS], help="JSON of models, containers, layouts and bindings")


async def _act(controller: Controller, args: argparse.Namespace) -> Any:
    if args.action == "decl":
        return await controller.decl(Path(args.export_base), model_name=args.model_name, overwrite=args.overwrite)
    if args.action in ("pub", "unpub"):
        model, pattern = parse_model_glob(args.model)
        method = controller.pub if args.action == "pub" else controller.unpub
        return await method(args.layout, model, pattern)
    if args.action in (BZID_INFO, BZID_INFO_ALIAS):
        return await controller.bzid_info()
    raise InvalidArgumentError(f"unknown action {args.action!r}")


async def _main(args: argparse.Namespace) -> int:
    discovery = create_discovery(DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=args.zk))
    async with discovery:
        if not await discovery.wait_connected(args.timeout_s):
            log.error("ZooKeeper %s not reachable after %.0f s", args.zk, args.timeout_s)
            return 2
        try:
            result = await _act(Controller(discovery, args.bzid), args)
        except UnavailableError as error:
            log.error("%s", error.message)
            return 2
        except MonolithServingError as error:
            log.error("%s refused: %s", args.action, error.message)
            return 1
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_main(args))
