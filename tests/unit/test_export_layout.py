from __future__ import annotations

from pathlib import Path

import pytest

from monolith_serving.core.errors import InvalidArgumentError, NotFoundError
from monolith_serving.core.export_layout import (
    PolicyKind,
    VersionPolicy,
    list_sub_models,
    list_versions,
    parse_version,
    ps_index,
    read_listener_state,
    read_model_server_config,
    version_dir,
    write_listener_state,
)


def test_versions_ignore_temp_and_files(tmp_path: Path) -> None:
    for name in ("3", "10", "2", "11-temp", "tmp"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert list_versions(tmp_path) == [2, 3, 10]


def test_only_plain_decimal_names_are_versions(tmp_path: Path) -> None:
    # isdigit() takes "1\u00b2" (int() then raises), "0123" would be found again as the missing folder "123",
    # and a 20-digit name does not fit the int64 a version travels as: none of them is a version.
    for name in ("5", "0", "1\u00b2", "\u0663", "0123", "99999999999999999999", str(2**63), str(2**63 - 1)):
        (tmp_path / name).mkdir()
    assert list_versions(tmp_path) == [0, 5, 2**63 - 1]
    assert [version_dir(tmp_path, v).is_dir() for v in list_versions(tmp_path)] == [True, True, True]
    assert parse_version("12 ") is None and parse_version("+1") is None and parse_version("") is None


def test_missing_folder_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nope"):
        list_versions(tmp_path / "nope")
    with pytest.raises(NotFoundError, match="nope"):
        list_sub_models(tmp_path / "nope")


def test_sub_models(tmp_path: Path) -> None:
    for name in ("entry", "ps_0", "ps_1", "dense_0", "other"):
        (tmp_path / name).mkdir()
    assert list_sub_models(tmp_path) == ["dense_0", "entry", "ps_0", "ps_1"]
    assert ps_index("ps_12") == 12
    assert ps_index("model:ps_3") == 3
    assert ps_index("entry") is None
    assert ps_index("ps_x") is None


@pytest.mark.parametrize(
    ("policy", "available", "chosen", "expected"),
    [
        (VersionPolicy(PolicyKind.LATEST, 1), [1, 5, 3], (), [5]),
        (VersionPolicy(PolicyKind.LATEST, 2), [1, 5, 3], (), [3, 5]),
        (VersionPolicy(PolicyKind.LATEST, 2), [], (), []),
        (VersionPolicy(PolicyKind.ALL), [4, 1], (), [1, 4]),
        (VersionPolicy(PolicyKind.SPECIFIC, versions=(1, 9)), [1, 5, 3], (), [1]),
        (VersionPolicy(PolicyKind.LATEST_ONCE, 1), [1, 5, 3], (), [5]),
        (VersionPolicy(PolicyKind.LATEST_ONCE, 1), [1, 5, 7], (5,), [5]),
    ],
)
def test_policy_choice(
    policy: VersionPolicy, available: list[int], chosen: tuple[int, ...], expected: list[int]
) -> None:
    assert policy.choose(available, chosen) == expected


@pytest.mark.parametrize(
    "policy",
    [
        VersionPolicy(PolicyKind.LATEST, 3),
        VersionPolicy(PolicyKind.LATEST_ONCE, 1),
        VersionPolicy(PolicyKind.ALL),
        VersionPolicy(PolicyKind.SPECIFIC, versions=(2, 4)),
    ],
)
def test_policy_proto_round_trip(policy: VersionPolicy) -> None:
    assert VersionPolicy.from_proto(policy.to_proto()) == policy


def test_model_server_config_file(tmp_path: Path) -> None:
    path = tmp_path / "models.config"
    path.write_text(
        """
        model_config_list {
          config { name: "ps_0" base_path: "/m/ps_0" model_platform: "tensorflow"
                   model_version_policy { latest_once { num_versions: 1 } } }
          config { name: "entry" base_path: "/m/entry" model_platform: "tensorflow"
                   model_version_policy { specific { versions: 3 versions: 4 } }
                   version_labels { key: "stable" value: 3 } }
        }
        """
    )
    config = read_model_server_config(path)
    ps, entry = config.model_config_list.config
    assert VersionPolicy.from_proto(ps.model_version_policy) == VersionPolicy(PolicyKind.LATEST_ONCE, 1)
    assert VersionPolicy.from_proto(entry.model_version_policy).versions == (3, 4)
    assert entry.version_labels["stable"] == 3
    path.write_text("model_config_list { config { nme: 1 } }")
    with pytest.raises(InvalidArgumentError, match="models.config"):
        read_model_server_config(path)
    with pytest.raises(NotFoundError, match="absent"):
        read_model_server_config(tmp_path / "absent")


def test_listener_state_round_trip(tmp_path: Path) -> None:
    assert read_listener_state(tmp_path) == []
    write_listener_state(tmp_path, [("/x/1", 10), ("/x/2", 20)])
    entries = read_listener_state(tmp_path)
    assert [(e.export_dir, e.global_step) for e in entries] == [("/x/1", 10), ("/x/2", 20)]
    (tmp_path / "ExportSaverListenerState").write_text("entries { bogus: 1 }")
    with pytest.raises(InvalidArgumentError, match="ServingModelState"):
        read_listener_state(tmp_path)
