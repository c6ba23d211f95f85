"""``monolith-serving ctl``: the v3 controller CLI (REFERENCE section 7), in two spellings.

Monolith's ``agent_controller.py`` spelling works unchanged (its operator scripts run as they are)::

    ctl --cmd decl --zk_servers HOSTS --bzid B --export_base DIR [--overwrite=1]
    ctl --cmd pub|unpub --zk_servers HOSTS --bzid B --layout L --model_name 'M:glob'
    ctl --cmd bzid_info --zk_servers HOSTS --bzid B              (--cmd defaults to bzid_info)

and so does this CLI's first, action-style spelling::

    ctl --zk HOSTS --bzid B decl --export-base DIR [--model-name M] [--overwrite]
    ctl --zk HOSTS --bzid B pub|unpub --layout L --model 'M:glob'
    ctl --zk HOSTS --bzid B bzid_info                            (bzid-info is an alias)

Every flag takes both ``_`` and ``-``; flags an action does not use are ignored, as Monolith does.

- ``decl``: declare every sub_graph (``entry``, ``ps_*``, ``dense*``) of an export under
  ``/{bzid}/saved_models/{M}/{sub_graph}`` (entry ``latest``, others ``latest_once``). M is
  ``--model_name``, else the ``model_name`` of the entry's newest ``serving_spec.json`` (Monolith reads the
  name from the entry's ``TfServingRemotePredict`` ops, which our exports do not have), else the export
  folder's name. A local export base is made absolute; a URI (``hdfs://...``) is declared as given and
  listed through fsspec. Without ``--overwrite`` nothing is written if any declaration already exists.
- ``pub`` / ``unpub``: add the declared sub_graphs of M matching the glob to layout L / remove them.
- ``bzid_info``: Monolith's JSON (``backends.ZKBackend.bzid_info``): ``{"model_info": {M: {"sub_graphs_total",
  "sub_graphs_available", sg: {"deploy_config": "<node text>", "bindings": ["cluster:id"]}}},
  "container_info": {cluster: {id: {"service_info": "<node text>", "saved_models": ["M:sg"]}}},
  "layout_info": {L: [items]}}``.

:class:`Controller` holds the logic over the Discovery interface (testable on the static backend);
``run`` only resolves flags and prints JSON. Exit codes: 0 done, 1 refused (nothing matched, would
overwrite, bad export), 2 bad flags or registry unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monolith_serving.agent.saved_model_decl import declaration_for
from monolith_serving.core.cli_flags import add_flag, flag_type
from monolith_serving.core.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    MonolithServingError,
    NotFoundError,
    UnavailableError,
)
from monolith_serving.core.export_layout import list_sub_models, list_versions, parse_version, version_dir
from monolith_serving.core.serving_spec import SPEC_FILE, read_spec_object
from monolith_serving.core.zk_paths import (
    binding_model_path,
    binding_root,
    container_service_path,
    container_service_root,
    layout_item_path,
    layout_path,
    layout_root,
    parse_binding_name,
    parse_container_service_name,
    parse_layout_item_name,
    saved_model_dir,
    saved_model_path,
    saved_models_root,
)
from monolith_serving.discovery.base import Discovery
from monolith_serving.discovery.config import Backend, DiscoveryConfig
from monolith_serving.discovery.factory import create_discovery

__all__ = [
    "Controller",
    "CtlCommand",
    "ExportInfo",
    "command_from_args",
    "configure",
    "parse_model_glob",
    "read_export",
    "run",
]

log = logging.getLogger(__name__)

ACTIONS = ("decl", "pub", "unpub", "bzid_info")
# This CLI's first spelling of bzid_info (REFERENCE section 7 and Monolith say bzid_info).
ALIASES: Mapping[str, str] = {"bzid-info": "bzid_info"}
ARCH = "entry_ps"  # Monolith's --arch: the only architecture it (and we) can declare


def parse_model_glob(text: str) -> tuple[str, str]:
    """``'M:glob'`` -> (model, sub_graph glob); a bare ``M`` means every sub_graph."""
    model, sep, pattern = text.partition(":")
    if not model or (sep and not pattern):
        raise InvalidArgumentError(f"--model {text!r}: expected '<model>:<sub_graph glob>'")
    return model, pattern or "*"


def parse_overwrite(text: str) -> bool:
    """Monolith's ``--overwrite`` is an integer flag (``--overwrite=1``); booleans are accepted too."""
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "y", "t"):
        return True
    if lowered in ("false", "no", "n", "f"):
        return False
    try:
        return int(lowered) != 0
    except ValueError:
        raise ValueError(f"--overwrite takes 0/1 (or true/false), got {text!r}") from None


def _is_sub_graph(name: str) -> bool:
    """The sub-model folders a declaration covers (as ``export_layout.list_sub_models`` selects them)."""
    return name == "entry" or name.startswith(("ps_", "dense"))


def _is_uri(text: str) -> bool:
    return "://" in text


@dataclass(frozen=True)
class ExportInfo:
    """What ``decl`` needs from an export base: where it is (as declared), its sub_graphs and, when the
    entry's newest version has a serving spec, the model name in it."""

    base: str
    sub_graphs: list[str]
    spec_model_name: str | None


def _spec_model_name(spec: Mapping[str, Any], where: str) -> str:
    name = spec.get("model_name")
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"{where}: 'model_name' must be a non-empty string")
    return name


def _read_local_export(base: Path, read_spec: bool) -> ExportInfo:
    base = base.resolve()
    sub_graphs = list_sub_models(base)
    name = None
    if read_spec and "entry" in sub_graphs:
        versions = list_versions(base / "entry")
        if versions:
            spec_path = version_dir(base / "entry", versions[-1]) / SPEC_FILE
            if spec_path.is_file():
                name = _spec_model_name(read_spec_object(spec_path, str(spec_path)), str(spec_path))
    return ExportInfo(str(base), sub_graphs, name)


def _read_remote_export(url: str, read_spec: bool) -> ExportInfo:
    # The model manager's file-system layer: plain fsspec underneath (``monolith-serving[remote]``).
    from monolith_serving.model_manager.fs import open_filesystem

    fs, root = open_filesystem(url)
    entries = fs.ls(root)
    if not entries and not fs.exists(root):
        raise NotFoundError(f"export base {url!r} does not exist")
    sub_graphs = sorted(e.name for e in entries if e.is_dir and _is_sub_graph(e.name))
    name = None
    if read_spec and "entry" in sub_graphs:
        entry = fs.join(root, "entry")
        versions = sorted(v for e in fs.ls(entry) if e.is_dir and (v := parse_version(e.name)) is not None)
        spec_path = fs.join(entry, str(versions[-1]), SPEC_FILE) if versions else ""
        if spec_path and fs.exists(spec_path):
            try:
                spec = json.loads(fs.read_text(spec_path))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise InvalidArgumentError(f"{spec_path}: not valid JSON: {error}") from error
            if not isinstance(spec, dict):
                raise InvalidArgumentError(f"{spec_path}: top level must be a JSON object")
            name = _spec_model_name(spec, spec_path)
    return ExportInfo(url.rstrip("/"), sub_graphs, name)


def read_export(export_base: str | Path, *, read_spec: bool = True) -> ExportInfo:
    """Blocking: lists the export (local folder or URI) and, with ``read_spec``, reads the model name in the
    serving spec of the entry's newest version (InvalidArgumentError when that spec is malformed)."""
    if isinstance(export_base, str) and _is_uri(export_base):
        return _read_remote_export(export_base, read_spec)
    return _read_local_export(Path(export_base), read_spec)


def _node_text(data: bytes) -> str:
    return data.decode(errors="replace")


@dataclass(frozen=True)
class Controller:
    """The controller actions over one bzid. Every method needs a connected ``discovery``."""

    discovery: Discovery
    bzid: str

    async def decl(
        self, export_base: str | Path, *, model_name: str | None = None, overwrite: bool = False
    ) -> list[str]:
        """Declare every sub_graph of ``export_base``; returns the declared paths."""
        try:
            export = await asyncio.to_thread(read_export, export_base)
        except InvalidArgumentError as error:
            if not model_name:
                raise
            log.warning("export's serving spec unreadable (using --model_name %s): %s", model_name, error.message)
            export = await asyncio.to_thread(read_export, export_base, read_spec=False)
        if model_name and export.spec_model_name and model_name != export.spec_model_name:
            log.warning("--model_name %r differs from the export's serving spec %r", model_name, export.spec_model_name)
        # The folder name: Path("/x/y/").name and "hdfs://nn/x/y".rsplit("/") agree.
        model = model_name or export.spec_model_name or export.base.rsplit("/", 1)[-1]
        if not export.sub_graphs:
            raise NotFoundError(f"no sub_graphs (entry, ps_*, dense*) under {export.base!r}")
        paths = {sg: saved_model_path(self.bzid, model, sg) for sg in export.sub_graphs}
        if not overwrite:
            # Checked before writing anything, so a refused decl leaves the tree as it was.
            existing = [p for p in paths.values() if await self.discovery.get_data(p) is not None]
            if existing:
                raise FailedPreconditionError(
                    f"{len(existing)} declarations exist (first: {existing[0]}); pass --overwrite to replace them"
                )
        base: str | Path = export.base if _is_uri(export.base) else Path(export.base)
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
        """Monolith's ``bzid_info`` JSON (module docstring). Node data is given as text, as Monolith does;
        a node that vanishes while being read is left out, a malformed binding or container name skipped."""
        d = self.discovery
        model_info: dict[str, dict[str, Any]] = {}
        for model in await d.get_children(saved_models_root(self.bzid)):
            sub_graphs = await d.get_children(saved_model_dir(self.bzid, model))
            info = model_info.setdefault(model, {})
            info["sub_graphs_total"] = len(sub_graphs)
            for sub_graph in sub_graphs:
                data = await d.get_data(saved_model_path(self.bzid, model, sub_graph))
                if data is not None:
                    info.setdefault(sub_graph, {})["deploy_config"] = _node_text(data)

        container_info: dict[str, dict[str, dict[str, Any]]] = {}
        for name in await d.get_children(container_service_root(self.bzid)):
            try:
                leaf = parse_container_service_name(name)
            except InvalidArgumentError as error:
                log.warning("skipped: %s", error.message)
                continue
            data = await d.get_data(container_service_path(self.bzid, leaf.ctx_cluster, leaf.ctx_id))
            if data is not None:
                container_info.setdefault(leaf.ctx_cluster, {}).setdefault(leaf.ctx_id, {})["service_info"] = (
                    _node_text(data)
                )

        layout_info = {
            layout: sorted(await d.get_children(layout_path(self.bzid, layout)))
            for layout in await d.get_children(layout_root(self.bzid))
        }

        for model in await d.get_children(binding_root(self.bzid)):
            for name in await d.get_children(binding_model_path(self.bzid, model)):
                try:
                    binding = parse_binding_name(name)
                except InvalidArgumentError as error:
                    log.warning("skipped: %s", error.message)
                    continue
                info = model_info.setdefault(model, {})
                sub_graph = info.setdefault(binding.sub_graph, {})
                if "bindings" not in sub_graph:
                    sub_graph["bindings"] = []
                    info["sub_graphs_available"] = info.get("sub_graphs_available", 0) + 1
                sub_graph["bindings"].append(f"{binding.ctx_cluster}:{binding.ctx_id}")
                container = container_info.setdefault(binding.ctx_cluster, {}).setdefault(binding.ctx_id, {})
                container.setdefault("saved_models", []).append(f"{model}:{binding.sub_graph}")

        return {"model_info": model_info, "container_info": container_info, "layout_info": layout_info}


@dataclass(frozen=True, kw_only=True)
class CtlCommand:
    """One resolved invocation, whichever spelling it came in."""

    action: str
    export_base: str | None = None
    model_name: str | None = None  # decl
    model: str | None = None  # pub/unpub
    pattern: str = "*"  # pub/unpub
    layout: str | None = None
    overwrite: bool = False


def command_from_args(args: argparse.Namespace) -> CtlCommand:
    """Resolve both spellings into one command; InvalidArgumentError names the flag that is missing or in conflict."""
    positional = ALIASES.get(args.action, args.action) if args.action else None
    cmd = ALIASES.get(args.cmd, args.cmd) if args.cmd else None
    if positional and cmd and positional != cmd:
        raise InvalidArgumentError(f"the action {args.action!r} and --cmd {args.cmd!r} disagree")
    action = positional or cmd or "bzid_info"  # Monolith's --cmd default
    if action == "decl":
        if not args.export_base:
            raise InvalidArgumentError("decl needs --export_base (--export-base)")
        return CtlCommand(
            action=action, export_base=args.export_base, model_name=args.model_name or None, overwrite=args.overwrite
        )
    if action in ("pub", "unpub"):
        # Monolith passes 'M:glob' in --model_name; this CLI in --model.
        if args.model and args.model_name and args.model != args.model_name:
            raise InvalidArgumentError(f"--model {args.model!r} and --model_name {args.model_name!r} disagree")
        text = args.model or args.model_name
        if not args.layout or not text:
            raise InvalidArgumentError(f"{action} needs --layout and --model_name 'M:glob' (or --model)")
        model, pattern = parse_model_glob(text)
        return CtlCommand(action=action, layout=args.layout, model=model, pattern=pattern)
    return CtlCommand(action=action)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "Monolith's agent_controller spelling:\n"
        "  ctl --cmd decl --zk_servers H --bzid B --export_base DIR [--overwrite=1]\n"
        "  ctl --cmd pub|unpub --zk_servers H --bzid B --layout L --model_name 'M:glob'\n"
        "  ctl --cmd bzid_info --zk_servers H --bzid B\n"
        "Action spelling:\n"
        "  ctl --zk H --bzid B decl --export-base DIR [--model-name M] [--overwrite]\n"
        "  ctl --zk H --bzid B pub|unpub --layout L --model 'M:glob'\n"
        "  ctl --zk H --bzid B bzid_info"
    )
    choices = [*ACTIONS, *ALIASES]
    parser.add_argument("action", nargs="?", choices=choices, metavar="ACTION", help="|".join(choices))
    add_flag(parser, "--cmd", choices=choices, default=None, help="the action (Monolith's spelling; default bzid_info)")
    parser.add_argument(
        "--zk", "--zk_servers", "--zk-servers", dest="zk", required=True, help="ZooKeeper hosts (host:port[,...])"
    )
    add_flag(parser, "--bzid", required=True, help="business id: the root of the tree")
    add_flag(parser, "--timeout_s", type=float, default=15.0, help="how long to wait for ZooKeeper")
    add_flag(parser, "--export_base", default=None, help="decl: export base (holds entry/, ps_0/, ...); a path or URI")
    add_flag(
        parser,
        "--model_name",
        default=None,
        help="decl: the model name (default: the entry's serving spec, else the folder's name); "
        "pub/unpub (Monolith): '<model>:<sub_graph glob>'",
    )
    add_flag(parser, "--model", default=None, help="pub/unpub: '<model>:<sub_graph glob>', e.g. 'm:ps_*'")
    add_flag(parser, "--layout", default=None, help="pub/unpub: layout name")
    add_flag(
        parser,
        "--overwrite",
        nargs="?",
        const=True,
        default=False,
        type=flag_type(parse_overwrite),
        help="decl: replace existing declarations (--overwrite, --overwrite=1)",
    )
    add_flag(parser, "--arch", choices=(ARCH,), default=ARCH, help="accepted for Monolith's CLI; only entry_ps")


async def _act(controller: Controller, command: CtlCommand) -> Any:
    if command.action == "decl":
        assert command.export_base is not None  # command_from_args checked it
        return await controller.decl(command.export_base, model_name=command.model_name, overwrite=command.overwrite)
    if command.action in ("pub", "unpub"):
        assert command.layout is not None and command.model is not None
        method = controller.pub if command.action == "pub" else controller.unpub
        return await method(command.layout, command.model, command.pattern)
    if command.action == "bzid_info":
        return await controller.bzid_info()
    raise InvalidArgumentError(f"unknown action {command.action!r}")


async def _main(args: argparse.Namespace, command: CtlCommand) -> int:
    discovery = create_discovery(DiscoveryConfig(backend=Backend.ZOOKEEPER, zk_servers=args.zk))
    async with discovery:
        if not await discovery.wait_connected(args.timeout_s):
            log.error("ZooKeeper %s not reachable after %.0f s", args.zk, args.timeout_s)
            return 2
        try:
            result = await _act(Controller(discovery, args.bzid), command)
        except UnavailableError as error:
            log.error("%s", error.message)
            return 2
        except MonolithServingError as error:
            log.error("%s refused: %s", command.action, error.message)
            return 1
    json.dump(result, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        command = command_from_args(args)
    except InvalidArgumentError as error:
        log.error("%s", error.message)
        return 2
    return asyncio.run(_main(args, command))
