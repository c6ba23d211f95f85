"""core.model_config_list and the PS / dense server parsers built on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from monolith_serving.core.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from monolith_serving.core.export_layout import PolicyKind
from monolith_serving.core.model_config_list import check_base_path, check_version_labels
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
    from monolith_serving.ps.config import SubModelConfig

    assert SubModelConfig("demo:ps_3", Path("/m")).partition == 3
    with pytest.raises(InvalidArgumentError, match="'entry' is not a PS sub-model"):
        SubModelConfig("entry", Path("/m"))


def test_a_reload_request_must_set_a_config_but_an_empty_list_is_one() -> None:
    from monolith_serving.core.model_config_list import reload_request_config
    from monolith_serving.proto_gen.tensorflow_serving.apis import model_management_pb2

    for request in (
        model_management_pb2.ReloadConfigRequest(),
        model_management_pb2.ReloadConfigRequest.FromString(b""),  # a zero-length body
        model_management_pb2.ReloadConfigRequest(config=model_server_config_pb2.ModelServerConfig()),
    ):
        with pytest.raises(InvalidArgumentError, match=r"ReloadConfigRequest\.config is not set"):
            reload_request_config(request)
    # The model manager and the agents send an explicit empty list to host nothing: that stays allowed.
    empty = model_management_pb2.ReloadConfigRequest(config=_config("model_config_list {}"))
    assert reload_request_config(empty).WhichOneof("config") == "model_config_list"
    assert sub_models_from_proto(reload_request_config(empty)) == ()


def test_a_base_path_must_be_a_folder_unless_the_model_keeps_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    check_base_path("ps_0", tmp_path)  # an existing folder, versions or not
    for bad in (tmp_path / "missing", tmp_path / "file", Path("/tmp/a\x00b")):
        with pytest.raises(NotFoundError) as info:
            check_base_path("ps_0", bad)
        assert "'ps_0'" in info.value.message and repr(str(bad)) in info.value.message
    check_base_path("ps_0", tmp_path / "missing", hosted_from=tmp_path / "missing")  # unchanged: not checked


def test_a_label_set_by_a_reload_must_point_at_an_available_version() -> None:
    check_version_labels("ps_0", {"stable": 1}, available={1, 2}, kept={})
    check_version_labels("ps_0", {"stable": 9}, available={1}, kept={"stable": 9})  # kept as it was: fine
    for kept in ({}, {"stable": 1}):  # a new label, or one moved to another version
        with pytest.raises(FailedPreconditionError, match=r"'ps_0': version label 'stable' points at version 9"):
            check_version_labels("ps_0", {"stable": 9}, available={1}, kept=kept)
