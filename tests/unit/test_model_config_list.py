"""core.model_config_list and the PS / dense server parsers built on it."""

from __future__ import annotations

import pytest
from google.protobuf import text_format

from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.core.export_layout import PolicyKind
from monolith_serving.dense.config import dense_models_from_proto
from monolith_serving.proto_gen.tensorflow_serving.config import model_server_config_pb2
from monolith_serving.ps.config import sub_models_from_proto


def _config(text: str) -> model_server_config_pb2.ModelServerConfig:
    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


TWO_PS = """
model_config_list {
  config { name: "demo:ps_1" base_path: "/m/ps_1" model_version_policy { specific { versions: 3 } }
           version_labels { key: "stable" value: 3 } }
  config { name: "ps_0" base_path: "/m/ps_0" }
}
"""


def test_entries_in_order_with_policy_and_labels() -> None:
    models = sub_models_from_proto(_config(TWO_PS))
    assert [(m.name, str(m.base_path), m.partition) for m in models] == [
        ("demo:ps_1", "/m/ps_1", 1),
        ("ps_0", "/m/ps_0", 0),
    ]
    assert models[0].policy.kind is PolicyKind.SPECIFIC and models[0].policy.versions == (3,)
    assert dict(models[0].version_labels) == {"stable": 3}
    assert models[1].policy.kind is PolicyKind.LATEST


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('model_config_list { config { name: "ps_0" } }', "needs a name and a base_path"),
        ('model_config_list { config { base_path: "/m" } }', "needs a name and a base_path"),
        (
            'model_config_list { config { name: "ps_0" base_path: "/a" } config { name: "ps_0" base_path: "/b" } }',
            "'ps_0' is configured twice",
        ),
        ('model_config_list { config { name: "entry" base_path: "/m" } }', "is not a PS sub-model"),
    ],
)
def test_bad_ps_configs_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        sub_models_from_proto(_config(text))


def test_dense_names_are_checked_by_the_dense_config() -> None:
    models = dense_models_from_proto(_config('model_config_list { config { name: "demo:dense_0" base_path: "/d" } }'))
    assert [m.name for m in models] == ["demo:dense_0"]
    with pytest.raises(InvalidArgumentError, match="not a dense sub-model"):
        dense_models_from_proto(_config('model_config_list { config { name: "ps_0" base_path: "/d" } }'))


def test_an_empty_list_hosts_nothing_and_custom_config_is_refused() -> None:
    assert sub_models_from_proto(_config("model_config_list {}")) == ()
    custom = model_server_config_pb2.ModelServerConfig()
    custom.custom_model_config.Pack(model_server_config_pb2.ModelServerConfig())
    with pytest.raises(InvalidArgumentError, match="custom_model_config is not supported"):
        dense_models_from_proto(custom)


def test_a_ps_sub_model_named_on_the_command_line_is_checked_when_built() -> None:
    # ``ps --model_name`` builds SubModelConfig directly, without a model_config_list.
    from pathlib import Path

    from monolith_serving.ps.config import SubModelConfig

    assert SubModelConfig("demo:ps_3", Path("/m")).partition == 3
    with pytest.raises(InvalidArgumentError, match="'entry' is not a PS sub-model"):
        SubModelConfig("entry", Path("/m"))
