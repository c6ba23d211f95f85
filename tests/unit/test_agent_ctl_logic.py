"""Controller actions (decl/pub/unpub/bzid_info) over the in-memory static Discovery backend."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from ctl_fakes import run_with

from monolith_serving.agent.ctl import Controller, _act, command_from_args, configure, parse_model_glob
from monolith_serving.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError


def export(tmp_path: Path, name: str, sub_graphs: list[str]) -> Path:
    base = tmp_path / name
    for sub_graph in sub_graphs:
        (base / sub_graph / "1").mkdir(parents=True)
    (base / "not_a_sub_graph").mkdir()
    return base


def test_decl_declares_every_sub_graph_with_policies(tmp_path: Path) -> None:
    base = export(tmp_path, "mdl", ["entry", "ps_0", "ps_1"])

    async def body(ctl: Controller) -> dict[str, object]:
        paths = await ctl.decl(base)
        assert paths == [f"/b1/saved_models/mdl/{s}" for s in ("entry", "ps_0", "ps_1")]
        return await ctl.bzid_info()

    info = run_with(body)
    model = info["model_info"]["mdl"]  # type: ignore[index]
    assert model["sub_graphs_total"] == 3
    assert {sg: json.loads(model[sg]["deploy_config"]) for sg in ("entry", "ps_0", "ps_1")} == {
        "entry": {"model_base_path": str(base / "entry"), "version_policy": "latest"},
        "ps_0": {"model_base_path": str(base / "ps_0"), "version_policy": "latest_once"},
        "ps_1": {"model_base_path": str(base / "ps_1"), "version_policy": "latest_once"},
    }


def test_decl_refuses_to_overwrite_without_the_flag(tmp_path: Path) -> None:
    first = export(tmp_path, "a", ["entry", "ps_0"])
    second = export(tmp_path / "other", "a", ["entry", "ps_0", "ps_1"])

    async def body(ctl: Controller) -> dict[str, object]:
        await ctl.decl(first, model_name="m")
        with pytest.raises(FailedPreconditionError, match="--overwrite"):
            await ctl.decl(second, model_name="m")
        unchanged = await ctl.bzid_info()
        assert sorted(unchanged["model_info"]["m"]) == ["entry", "ps_0", "sub_graphs_total"]  # type: ignore[index]
        await ctl.decl(second, model_name="m", overwrite=True)
        return await ctl.bzid_info()

    model = run_with(body)["model_info"]["m"]  # type: ignore[index]
    assert json.loads(model["ps_1"]["deploy_config"])["model_base_path"] == str(second / "ps_1")
    assert json.loads(model["entry"]["deploy_config"])["model_base_path"] == str(second / "entry")


def test_decl_of_a_folder_without_sub_graphs_fails(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    async def body(ctl: Controller) -> None:
        with pytest.raises(NotFoundError):
            await ctl.decl(tmp_path / "empty")
        with pytest.raises(NotFoundError):
            await ctl.decl(tmp_path / "missing")

    run_with(body)


def test_pub_unpub_globs(tmp_path: Path) -> None:
    base = export(tmp_path, "m", ["entry", "ps_0", "ps_1", "ps_10"])

    async def body(ctl: Controller) -> None:
        await ctl.decl(base)
        assert await ctl.pub("L", "m", "ps_1*") == ["m:ps_1", "m:ps_10"]
        assert await ctl.pub("L", "m", "entry") == ["m:entry"]
        with pytest.raises(NotFoundError):
            await ctl.pub("L", "m", "dense*")
        with pytest.raises(NotFoundError):
            await ctl.pub("L", "undeclared", "*")
        assert (await ctl.bzid_info())["layout_info"] == {"L": ["m:entry", "m:ps_1", "m:ps_10"]}
        assert await ctl.unpub("L", "m", "ps_*") == ["m:ps_1", "m:ps_10"]
        with pytest.raises(NotFoundError):
            await ctl.unpub("L", "m", "ps_*")
        assert (await ctl.bzid_info())["layout_info"] == {"L": ["m:entry"]}

    run_with(body)


def test_bzid_info_lists_containers_and_bindings() -> None:
    async def body(ctl: Controller) -> dict[str, object]:
        await ctl.discovery.register_ephemeral(
            "/b1/container_service/c:10.0.0.1:9", json.dumps({"grpc": "x:1"}).encode()
        )
        await ctl.discovery.register_ephemeral("/b1/binding/m/ps_0:c:10.0.0.1:9", b"")
        return await ctl.bzid_info()

    info = run_with(body)
    # Our ctx_id may hold ':' (host:port): it is kept whole, where Monolith's split(":")[:2] would cut it.
    assert info["container_info"] == {
        "c": {"10.0.0.1:9": {"service_info": '{"grpc": "x:1"}', "saved_models": ["m:ps_0"]}}
    }
    assert info["model_info"] == {"m": {"sub_graphs_available": 1, "ps_0": {"bindings": ["c:10.0.0.1:9"]}}}


def test_parse_model_glob() -> None:
    assert parse_model_glob("m:ps_*") == ("m", "ps_*")
    assert parse_model_glob("m") == ("m", "*")
    for bad in (":ps_0", "m:"):
        with pytest.raises(InvalidArgumentError):
            parse_model_glob(bad)


@pytest.mark.parametrize("action", ["bzid_info", "bzid-info"])  # REFERENCE section 7's spelling, and the alias
def test_the_cli_accepts_bzid_info_in_both_spellings(action: str) -> None:
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--zk", "zk:2181", "--bzid", "b", action])
    info = run_with(lambda ctl: _act(ctl, command_from_args(args)))
    assert info == {"model_info": {}, "container_info": {}, "layout_info": {}}
