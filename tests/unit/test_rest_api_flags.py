"""The ``--rest_api_*`` flags as the entry, the unified server and the proxy take them: off by default (TF Serving's
``--rest_api_port 0``), tensorflow_model_server's names honoured, the REST port bound on ``--host``, the deadline and
the body bounds reaching ``RestConfig``, and a value that cannot work (a port already taken by the server, no
deadline, a budget smaller than one body) refused naming its flag."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from monolith_serving.core.cli_flags import unused_tfs_flags
from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.rest_gateway import RestConfig
from monolith_serving.entry import main as entry_main
from monolith_serving.proxy import config as proxy_config
from monolith_serving.proxy import main as proxy_main
from monolith_serving.unified import main as unified_main


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("export")
    write_demo(DemoOptions(out=base, num_ps=2, rows=10, version=1))
    return base


def _args(module: ModuleType, argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    (proxy_main if module is proxy_config else module).configure(parser)
    return parser.parse_args(argv)


def _rest_of(module: ModuleType, export: Path) -> Callable[..., RestConfig | None]:
    """``rest`` of the server's config from flags (with what the server needs besides)."""

    def rest(*argv: str) -> RestConfig | None:
        if module is entry_main:
            base = ["--model_base_path", str(export / "entry"), "--ps_targets", "a:1", "--ps_targets", "b:1"]
            return entry_main.server_config_from_args(_args(entry_main, [*base, *argv]), {}).rest
        if module is unified_main:
            return unified_main.config_from_args(_args(unified_main, ["--agent_address", "a:1", *argv]), {}).rest
        return proxy_config.config_from_args(_args(proxy_config, ["--entry_targets", "a:1", *argv]), {}).rest

    return rest


SERVERS = [entry_main, unified_main, proxy_config]
IDS = ["entry", "unified", "proxy"]


@pytest.mark.parametrize("module", SERVERS, ids=IDS)
def test_no_rest_api_unless_a_port_is_given(module: ModuleType, export: Path) -> None:
    rest = _rest_of(module, export)
    assert rest() is None and rest("--rest_api_port", "0") is None


@pytest.mark.parametrize("module", SERVERS, ids=IDS)
def test_the_flags_reach_the_rest_config(module: ModuleType, export: Path) -> None:
    rest = _rest_of(module, export)
    config = rest("--host", "127.0.0.1", "--rest_api_port", "8601", "--rest-api-timeout-in-ms", "1500")
    assert config is not None
    assert (config.host, config.port, config.timeout_s) == ("127.0.0.1", 8601, 1.5)
    assert (config.max_body_bytes, config.body_budget_bytes) == (
        RestConfig.max_body_bytes,
        RestConfig.body_budget_bytes,
    )
    bounded = rest(
        "--rest_api_port", "8601", "--rest_api_max_body_bytes", "1000", "--rest_api_body_budget_bytes", "5000"
    )
    assert bounded is not None and (bounded.max_body_bytes, bounded.body_budget_bytes) == (1000, 5000)


@pytest.mark.parametrize("module", [entry_main, unified_main], ids=["entry", "unified"])
def test_model_servers_honour_tensorflow_model_servers_rest_flags(module: ModuleType, export: Path) -> None:
    """Declared by the server, so not among the flags named as unused at start."""
    argv = ["--rest_api_port=8601", "--rest_api_timeout_in_ms=2000", "--rest_api_num_threads=8"]
    base = ["--agent_address", "a:1"] if module is unified_main else []
    assert unused_tfs_flags(_args(module, [*base, *argv])) == ("--rest_api_num_threads",)
    config = _rest_of(module, export)(*argv)
    assert config is not None and (config.port, config.timeout_s) == (8601, 2.0)
    assert config.server_name in ("entry", "unified server")


@pytest.mark.parametrize("module", SERVERS, ids=IDS)
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "8601"], "--rest_api_port 8601 is also --port"),
        (["--metrics_port", "8601"], "--rest_api_port 8601 is also --metrics_port"),
        (["--rest_api_timeout_in_ms", "0"], "--rest_api_timeout_in_ms must be > 0"),
        (["--rest_api_max_body_bytes", "0"], "--rest_api_max_body_bytes must be at least 1"),
        (
            ["--rest_api_max_body_bytes", "1000", "--rest_api_body_budget_bytes", "999"],
            "--rest_api_body_budget_bytes (999) must be at least --rest_api_max_body_bytes (1000)",
        ),
    ],
)
def test_a_value_that_cannot_work_is_refused_naming_its_flag(
    module: ModuleType, export: Path, argv: list[str], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        _rest_of(module, export)("--rest_api_port", "8601", *argv)
