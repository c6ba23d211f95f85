"""`ctl` speaks Monolith's agent_controller: its flags, its bzid_info JSON, its decl model name and URIs."""

from __future__ import annotations

import argparse
import json
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import fsspec
import pytest
from ctl_fakes import run_with

from monolith_serving.agent.ctl import Controller, CtlCommand, command_from_args, configure
from monolith_serving.agent.saved_model_decl import declaration_for
from monolith_serving.core.errors import InvalidArgumentError


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(list(argv))


def command(*argv: str) -> CtlCommand:
    return command_from_args(parse(*argv))


# --- flags -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        # Monolith's agent_controller.py spelling
        (
            ["--cmd", "decl", "--zk_servers", "h:1", "--bzid", "b", "--export_base", "/e", "--overwrite=1"],
            CtlCommand(action="decl", export_base="/e", overwrite=True),
        ),
        (
            ["--cmd=decl", "--zk_servers=h:1", "--bzid=b", "--export_base=/e", "--overwrite=0", "--arch=entry_ps"],
            CtlCommand(action="decl", export_base="/e", overwrite=False),
        ),
        (
            ["--cmd", "pub", "--zk_servers", "h:1", "--bzid", "b", "--layout", "L", "--model_name", "m:ps_*"],
            CtlCommand(action="pub", layout="L", model="m", pattern="ps_*"),
        ),
        (
            ["--cmd", "unpub", "--zk_servers", "h:1", "--bzid", "b", "--layout", "L", "--model_name", "m:entry"],
            CtlCommand(action="unpub", layout="L", model="m", pattern="entry"),
        ),
        (["--cmd", "bzid_info", "--zk_servers", "h:1", "--bzid", "b"], CtlCommand(action="bzid_info")),
        (["--zk_servers", "h:1", "--bzid", "b"], CtlCommand(action="bzid_info")),  # Monolith's --cmd default
        # ... flags an action does not use are ignored, as Monolith does
        (
            ["--cmd", "bzid_info", "--zk_servers", "h:1", "--bzid", "b", "--export_base", "/e", "--layout", "L"],
            CtlCommand(action="bzid_info"),
        ),
        # this CLI's action spelling
        (
            ["--zk", "h:1", "--bzid", "b", "decl", "--export-base", "/e", "--model-name", "M", "--overwrite"],
            CtlCommand(action="decl", export_base="/e", model_name="M", overwrite=True),
        ),
        (["--zk", "h:1", "--bzid", "b", "decl", "--export-base", "/e"], CtlCommand(action="decl", export_base="/e")),
        (
            ["--zk", "h:1", "--bzid", "b", "pub", "--layout", "L", "--model", "m:ps_*"],
            CtlCommand(action="pub", layout="L", model="m", pattern="ps_*"),
        ),
        (["--zk", "h:1", "--bzid", "b", "bzid-info"], CtlCommand(action="bzid_info")),
        # mixed: both spellings agree
        (["--zk-servers", "h:1", "--bzid", "b", "--cmd", "bzid-info", "bzid_info"], CtlCommand(action="bzid_info")),
    ],
)
def test_both_spellings_resolve_to_the_same_command(argv: list[str], expected: CtlCommand) -> None:
    assert command(*argv) == expected


def test_zk_servers_is_the_zk_flag() -> None:
    assert parse("--zk_servers", "a:1,b:2", "--bzid", "b").zk == "a:1,b:2"
    assert parse("--zk", "a:1", "--bzid", "b").zk == "a:1"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--cmd", "decl"], "--export_base"),
        (["--cmd", "pub", "--layout", "L"], "--model_name"),
        (["--cmd", "unpub", "--model_name", "m:*"], "--layout"),
        (["decl", "--cmd", "pub"], "disagree"),
        (["--cmd", "pub", "--layout", "L", "--model", "m:a", "--model_name", "m:b"], "disagree"),
    ],
)
def test_missing_or_conflicting_flags_are_refused(argv: list[str], needle: str) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        command("--zk_servers", "h:1", "--bzid", "b", *argv)


@pytest.mark.parametrize("bad", [["--arch", "dense_alone"], ["--overwrite=maybe"], ["--cmd", "list"]])
def test_bad_flag_values_are_usage_errors(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse("--zk_servers", "h:1", "--bzid", "b", *bad)
    assert exit_info.value.code == 2


def test_run_exits_2_on_missing_flags_before_touching_zookeeper(caplog: pytest.LogCaptureFixture) -> None:
    from monolith_serving.agent import ctl

    with caplog.at_level(logging.ERROR):
        assert ctl.run(parse("--cmd", "decl", "--zk_servers", "127.0.0.1:1", "--bzid", "b")) == 2
    assert "--export_base" in caplog.text


# --- bzid_info ---------------------------------------------------------------------------------------------


def test_bzid_info_has_monolith_shape() -> None:
    """The dict Monolith's backends.ZKBackend.bzid_info builds for the same tree."""
    decl_entry = b'{"model_base_path": "/e/entry", "version_policy": "latest"}'
    decl_ps = b'{"model_base_path": "/e/ps_0", "version_policy": "latest_once"}'
    service = b'{"grpc": "10.0.0.1:8500", "http": "10.0.0.1:8501"}'

    async def body(ctl: Controller) -> dict[str, Any]:
        d = ctl.discovery
        await d.set_persistent("/b1/saved_models/m/entry", decl_entry)
        await d.set_persistent("/b1/saved_models/m/ps_0", decl_ps)
        await d.set_persistent("/b1/saved_models/m/ps_1", decl_ps)
        await d.set_persistent("/b1/layouts/front/m:entry", b"")
        await d.set_persistent("/b1/layouts/back/m:ps_1", b"")
        await d.set_persistent("/b1/layouts/back/m:ps_0", b"")
        await d.set_persistent("/b1/layouts/empty/m:entry", b"")
        await d.delete("/b1/layouts/empty/m:entry")  # a layout with no items left lists []
        await d.register_ephemeral("/b1/container_service/c1:pod-a", service)
        await d.register_ephemeral("/b1/container_service/c1:pod-b", b"")
        await d.register_ephemeral("/b1/binding/m/ps_0:c1:pod-a", b"")
        await d.register_ephemeral("/b1/binding/m/ps_0:c1:pod-b", b"")
        await d.register_ephemeral("/b1/binding/m/entry:c2:pod-c", b"")  # no container_service node
        await d.register_ephemeral("/b1/binding/other/ps_0:c1:pod-a", b"")  # no declaration
        return await ctl.bzid_info()

    info = run_with(body)
    if "empty" not in info["layout_info"]:  # a backend that drops empty parents
        info["layout_info"]["empty"] = []
    assert info == {
        "model_info": {
            "m": {
                "sub_graphs_total": 3,
                "sub_graphs_available": 2,
                "entry": {"deploy_config": decl_entry.decode(), "bindings": ["c2:pod-c"]},
                "ps_0": {"deploy_config": decl_ps.decode(), "bindings": ["c1:pod-a", "c1:pod-b"]},
                "ps_1": {"deploy_config": decl_ps.decode()},
            },
            "other": {"sub_graphs_available": 1, "ps_0": {"bindings": ["c1:pod-a"]}},
        },
        "container_info": {
            "c1": {
                "pod-a": {"service_info": service.decode(), "saved_models": ["m:ps_0", "other:ps_0"]},
                "pod-b": {"service_info": "", "saved_models": ["m:ps_0"]},
            },
            "c2": {"pod-c": {"saved_models": ["m:entry"]}},
        },
        "layout_info": {"back": ["m:ps_0", "m:ps_1"], "empty": [], "front": ["m:entry"]},
    }
    assert set(info) == {"model_info", "container_info", "layout_info"}  # no other top-level keys


def test_bzid_info_of_an_empty_bzid() -> None:
    assert run_with(lambda ctl: ctl.bzid_info()) == {"model_info": {}, "container_info": {}, "layout_info": {}}


# --- decl: model name and export base ----------------------------------------------------------------------


def export(base: Path, spec_names: dict[int, str | None], num_ps: int = 2) -> Path:
    for version, name in spec_names.items():
        version_dir = base / "entry" / str(version)
        version_dir.mkdir(parents=True)
        if name is not None:
            (version_dir / "serving_spec.json").write_text(json.dumps({"format_version": 1, "model_name": name}))
    for i in range(num_ps):
        (base / f"ps_{i}" / "1").mkdir(parents=True)
    return base


def declared(ctl_call: Callable[[Controller], Awaitable[list[str]]]) -> list[str]:
    return run_with(ctl_call)


def test_decl_names_the_model_after_the_entry_spec_not_the_folder(tmp_path: Path) -> None:
    # Monolith's standard layout: the export base is called exported_models, whatever the model.
    base = export(tmp_path / "exported_models", {1: "ctr"})
    paths = declared(lambda ctl: ctl.decl(base))
    assert paths == ["/b1/saved_models/ctr/entry", "/b1/saved_models/ctr/ps_0", "/b1/saved_models/ctr/ps_1"]


def test_decl_reads_the_newest_entry_version(tmp_path: Path) -> None:
    base = export(tmp_path / "exported_models", {7: "old", 10: "new", 9: None})
    assert declared(lambda ctl: ctl.decl(base))[0] == "/b1/saved_models/new/entry"


def test_decl_without_a_spec_uses_the_folder_name(tmp_path: Path) -> None:
    base = export(tmp_path / "mdl", {1: None})
    assert declared(lambda ctl: ctl.decl(base))[0] == "/b1/saved_models/mdl/entry"


def test_model_name_flag_wins_and_a_mismatch_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = export(tmp_path / "exported_models", {1: "ctr"})
    with caplog.at_level(logging.WARNING):
        assert declared(lambda ctl: ctl.decl(base, model_name="ctr_v2"))[0] == "/b1/saved_models/ctr_v2/entry"
    assert "differs" in caplog.text and "'ctr'" in caplog.text


def test_a_malformed_spec_refuses_decl_unless_the_name_is_given(tmp_path: Path) -> None:
    base = export(tmp_path / "exported_models", {1: None})
    (base / "entry" / "1" / "serving_spec.json").write_text('{"num_ps": 2}')

    async def body(ctl: Controller) -> list[str]:
        with pytest.raises(InvalidArgumentError, match="model_name"):
            await ctl.decl(base)
        return await ctl.decl(base, model_name="given")

    assert run_with(body)[0] == "/b1/saved_models/given/entry"


def test_decl_of_the_demo_export_uses_its_spec_name(tmp_path: Path) -> None:
    from monolith_serving.core.demo_export import DemoOptions, write_demo

    base = tmp_path / "exported_models"
    write_demo(DemoOptions(out=base, num_ps=2, rows=20))
    paths = declared(lambda ctl: ctl.decl(base))
    assert paths == [f"/b1/saved_models/demo/{sg}" for sg in ("entry", "ps_0", "ps_1")]


@pytest.fixture()
def memory_root() -> Iterator[str]:
    fs = fsspec.filesystem("memory")
    root = f"/ctl-{uuid.uuid4().hex}"
    try:
        yield root
    finally:
        if fs.exists(root):
            fs.rm(root, recursive=True)


def test_a_uri_export_base_is_declared_as_given(memory_root: str) -> None:
    fs = fsspec.filesystem("memory")
    base = f"{memory_root}/exported_models"
    fs.pipe(f"{base}/entry/3/serving_spec.json", json.dumps({"model_name": "ctr"}).encode())
    fs.pipe(f"{base}/entry/3/saved_model.pb", b"")
    for i in range(2):
        fs.pipe(f"{base}/ps_{i}/3/saved_model.pb", b"")
    fs.pipe(f"{base}/README", b"not a sub_graph")
    url = f"memory://{base}/"

    async def body(ctl: Controller) -> dict[str, Any]:
        assert await ctl.decl(url) == [f"/b1/saved_models/ctr/{sg}" for sg in ("entry", "ps_0", "ps_1")]
        return await ctl.bzid_info()

    model = run_with(body)["model_info"]["ctr"]
    assert json.loads(model["entry"]["deploy_config"]) == {
        "model_base_path": f"memory://{base}/entry",
        "version_policy": "latest",
    }
    assert json.loads(model["ps_1"]["deploy_config"])["model_base_path"] == f"memory://{base}/ps_1"


def test_a_missing_uri_export_base_is_not_found(memory_root: str) -> None:
    from monolith_serving.core.errors import NotFoundError

    async def body(ctl: Controller) -> None:
        with pytest.raises(NotFoundError, match="does not exist"):
            await ctl.decl(f"memory://{memory_root}/nothing")

    run_with(body)


def test_declaration_for_keeps_hdfs_uris() -> None:
    assert declaration_for("hdfs://nn:9000/user/x/exported_models", "ps_0").model_base_path == (
        "hdfs://nn:9000/user/x/exported_models/ps_0"
    )
    assert declaration_for(Path("/data/x"), "entry").model_base_path == "/data/x/entry"
    assert declaration_for("/data/x", "entry").model_base_path == "/data/x/entry"
