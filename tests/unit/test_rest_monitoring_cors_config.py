"""``--monitoring_config_file`` and ``--rest_api_enable_cors_support`` as the entry, the unified server and the proxy
take them: the MonitoringConfig file read as tensorflow_model_server reads it (text format, TF Serving's default path
when enabled without one, nothing served unless enabled), the result reaching ``RestConfig``, and every file or
combination that cannot work refused naming the flag."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.monitoring_config import (
    DEFAULT_PROMETHEUS_PATH,
    prometheus_path_from_file,
    read_monitoring_config,
)
from monolith_serving.core.rest_gateway import RestBackend, RestConfig, RestGateway
from monolith_serving.entry import main as entry_main
from monolith_serving.proxy import config as proxy_config
from monolith_serving.proxy import main as proxy_main
from monolith_serving.unified import main as unified_main


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "monitoring.config"
    path.write_text(text)
    return path


def _rest_of(module: ModuleType, tmp_path: Path) -> Callable[..., RestConfig | None]:
    """``rest`` of the server's config made from flags (with what the server needs besides)."""

    def rest(*argv: str) -> RestConfig | None:
        parser = argparse.ArgumentParser()
        (proxy_main if module is proxy_config else module).configure(parser)
        if module is entry_main:
            base = ["--model_base_path", str(tmp_path / "entry"), "--ps_targets", "a:1", "--ps_targets", "b:1"]
            return entry_main.server_config_from_args(parser.parse_args([*base, *argv]), {}).rest
        if module is unified_main:
            return unified_main.config_from_args(parser.parse_args(["--agent_address", "a:1", *argv]), {}).rest
        return proxy_config.config_from_args(parser.parse_args(["--entry_targets", "a:1", *argv]), {}).rest

    return rest


SERVERS = [entry_main, unified_main, proxy_config]
IDS = ["entry", "unified", "proxy"]


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('prometheus_config { enable: true path: "/custom/metrics" }\n', "/custom/metrics"),
        (
            'prometheus_config: {\n  enable: true,\n  path: "/monitoring/prometheus/metrics"\n}\n',
            DEFAULT_PROMETHEUS_PATH,
        ),
        ("prometheus_config { enable: true }\n", DEFAULT_PROMETHEUS_PATH),  # TF Serving's default when empty
        ('prometheus_config { enable: true path: "" }\n', DEFAULT_PROMETHEUS_PATH),
        ('prometheus_config { enable: true path: "/" }\n', "/"),
        ('prometheus_config { enable: true path: "/m%20x/v1/a:b@c" }\n', "/m%20x/v1/a:b@c"),
        ('prometheus_config { enable: true path: "/v1" }\n', "/v1"),  # not under /v1/: the API answers it 404
        ('prometheus_config { path: "/custom/metrics" }\n', None),  # not enabled: nothing served
        ('prometheus_config { enable: false path: "no slash" }\n', None),  # nor checked
        ("", None),
        ("# comments only\n", None),
    ],
)
def test_the_file_gives_the_path_served_or_none(tmp_path: Path, text: str, path: str | None) -> None:
    assert prometheus_path_from_file(str(_file(tmp_path, text))) == path


def test_an_empty_flag_is_no_file() -> None:
    """TF Serving's default: no monitoring config, nothing read."""
    assert prometheus_path_from_file("") is None


def test_the_message_has_tf_servings_field_numbers(tmp_path: Path) -> None:
    """monitoring_config.proto's package, names and field numbers: prometheus_config 1, enable 1, path 2."""
    config = read_monitoring_config(_file(tmp_path, 'prometheus_config { enable: true path: "/p" }'))
    assert config.SerializeToString() == b"\x0a\x06" + b"\x08\x01" + b"\x12\x02/p"
    assert config.DESCRIPTOR.full_name == "tensorflow.serving.MonitoringConfig"
    assert config.prometheus_config.DESCRIPTOR.full_name == "tensorflow.serving.PrometheusConfig"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prometheus_config { enable: maybe }", "not a text-format tensorflow.serving.MonitoringConfig: 1:"),
        ("prometheus_config { enable: true port: 9 }", 'has no field named "port"'),
        ("prometheus_config { enable: true", "not a text-format tensorflow.serving.MonitoringConfig"),
        ('prometheus_config { enable: true path: "metrics" }', "prometheus_config.path 'metrics' must start with '/'"),
        ('prometheus_config { enable: true path: "/v1/metrics" }', "'/v1/metrics' is under /v1/, where every path"),
        ('prometheus_config { enable: true path: "/V1/Models/m" }', "'/V1/Models/m' is under /v1/"),
        ('prometheus_config { enable: true path: "/a b" }', "'/a b' holds a character a URL path carries only"),
        ('prometheus_config { enable: true path: "/m?x=1" }', "holds a character a URL path carries only"),
        ('prometheus_config { enable: true path: "/m#x" }', "holds a character a URL path carries only"),
        ('prometheus_config { enable: true path: "/m%zz" }', "a '%' not starting an escape"),
        ('prometheus_config { enable: true path: "/m\\303\\251" }', "non-ASCII"),
        ('prometheus_config { enable: true path: "/a/../m" }', "holds a '.' or '..' segment"),
    ],
)
def test_a_file_that_cannot_work_is_refused_naming_the_flag(tmp_path: Path, text: str, message: str) -> None:
    path = _file(tmp_path, text)
    with pytest.raises(InvalidArgumentError, match=re.escape(f"--monitoring_config_file {path}: ")) as caught:
        prometheus_path_from_file(str(path))
    assert message in caught.value.message


def test_an_unreadable_file_is_refused_naming_the_flag(tmp_path: Path) -> None:
    missing = tmp_path / "nope.config"
    with pytest.raises(InvalidArgumentError, match=f"--monitoring_config_file {missing}: cannot read the file: "):
        prometheus_path_from_file(str(missing))
    binary = tmp_path / "binary.config"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InvalidArgumentError, match="cannot read the file: 'utf-8' codec can't decode"):
        prometheus_path_from_file(str(binary))


@pytest.mark.parametrize("module", SERVERS, ids=IDS)
def test_the_flags_reach_the_rest_config(module: ModuleType, tmp_path: Path) -> None:
    rest = _rest_of(module, tmp_path)
    plain = rest("--rest_api_port", "8601")
    assert plain is not None and (plain.cors, plain.prometheus_path) == (False, None)
    monitoring = _file(tmp_path, 'prometheus_config { enable: true path: "/custom" }')
    config = rest("--rest_api_port", "8601", "--rest_api_enable_cors_support", f"--monitoring_config_file={monitoring}")
    assert config is not None and (config.cors, config.prometheus_path) == (True, "/custom")
    spelled = rest("--rest_api_port", "8601", "--rest-api-enable-cors-support=false", "--monitoring-config-file", "")
    assert spelled is not None and (spelled.cors, spelled.prometheus_path) == (False, None)


@pytest.mark.parametrize("module", SERVERS, ids=IDS)
def test_a_monitoring_config_without_a_rest_port_is_refused(module: ModuleType, tmp_path: Path) -> None:
    """tensorflow_model_server ignores the file then, without reading it; here metrics asked for would be missing."""
    monitoring = _file(tmp_path, "prometheus_config { enable: true }")
    rest = _rest_of(module, tmp_path)
    message = f"--monitoring_config_file {monitoring} configures the REST port, but --rest_api_port is 0"
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        rest(f"--monitoring_config_file={monitoring}")
    with pytest.raises(InvalidArgumentError, match=re.escape(message)):
        rest("--rest_api_port=0", f"--monitoring_config_file={monitoring}")
    assert rest("--rest_api_enable_cors_support") is None  # CORS asks nothing of a port there is not


@pytest.mark.parametrize("module", SERVERS, ids=IDS)
def test_a_bad_monitoring_config_is_refused_by_every_server(module: ModuleType, tmp_path: Path) -> None:
    monitoring = _file(tmp_path, 'prometheus_config { enable: true path: "/v1/models/m" }')
    with pytest.raises(InvalidArgumentError, match=re.escape(f"--monitoring_config_file {monitoring}: ")):
        _rest_of(module, tmp_path)("--rest_api_port", "8601", f"--monitoring_config_file={monitoring}")


def test_the_gateway_needs_the_registry_it_is_to_serve() -> None:
    backend: RestBackend = object()  # type: ignore[assignment]  # never called: the constructor refuses first
    with pytest.raises(ValueError, match="serving metrics at /m needs the registry"):
        RestGateway(backend, RestConfig(prometheus_path="/m"))
