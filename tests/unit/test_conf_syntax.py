"""conf_syntax's handling of what real Monolith confs contain: keys without a value, a UTF-8 byte order mark."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from monolith_serving.core.agent_conf import load_agent_config
from monolith_serving.core.conf_syntax import is_none, parse_conf_file, parse_conf_text

MINIMAL_PS = "deploy_type ps\nbase_path /models/m\n"


def test_a_key_without_value_is_an_entry_that_means_unset(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="monolith_serving.core.conf_syntax"):
        entries = parse_conf_text("rough_sort_model_name\nnum_ps = # nothing\n", file="/etc/agent.conf")
    assert [(e.key, e.value, e.line) for e in entries] == [("rough_sort_model_name", "", 1), ("num_ps", "", 2)]
    assert all(is_none(e.value) for e in entries)
    assert "/etc/agent.conf:1: key 'rough_sort_model_name' has no value" in caplog.text


def test_a_monolith_conf_with_value_less_keys_loads(tmp_path: Path) -> None:
    path = tmp_path / "agent.conf"
    path.write_text(MINIMAL_PS + "rough_sort_model_name\nnum_ps 4\nlayout_pattern\n", encoding="utf-8")
    config = load_agent_config(path)
    assert (config.num_ps, config.layout_pattern) == (4, None)


def test_a_byte_order_mark_is_not_part_of_the_first_key(tmp_path: Path) -> None:
    path = tmp_path / "agent.conf"
    path.write_bytes(("\ufeffnum_ps 4\n" + MINIMAL_PS).encode("utf-8"))
    assert parse_conf_file(path)[0].key == "num_ps"
    assert load_agent_config(path).num_ps == 4


def test_a_byte_order_mark_in_an_included_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "common.conf").write_bytes("\ufeffnum_ps 3\n".encode())
    path = tmp_path / "agent.conf"
    path.write_text("include common.conf\n" + MINIMAL_PS, encoding="utf-8")
    assert load_agent_config(path).num_ps == 3
