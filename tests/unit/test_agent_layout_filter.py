"""layout_filters: match patterns, safe conditions, ${shard_id}/${shard_num}, refusal of bad filters."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from monolith_serving.agent import main as agent_main
from monolith_serving.agent.layout_filter import LayoutFilter, LayoutFilterError, LayoutFilterSet, substitute_shard


def parse(text: str, shard_id: int = 0, shard_num: int = 1) -> LayoutFilter:
    return LayoutFilter.parse(text, shard_id=shard_id, shard_num=shard_num)


def test_parity_filters_split_ps_shards() -> None:
    even, odd = parse("ps_{i}; i % 2 == 0"), parse("ps_{i}; i % 2 == 1")
    subs = [f"ps_{i}" for i in range(6)]
    assert [s for s in subs if even.accepts("m", s)] == ["ps_0", "ps_2", "ps_4"]
    assert [s for s in subs if odd.accepts("m", s)] == ["ps_1", "ps_3", "ps_5"]
    assert not even.accepts("m", "entry")
    assert not even.accepts("m", "ps_x")
    assert not even.accepts("m", "ps_2_extra")  # whole-name match only


def test_shard_variables_are_substituted_before_parsing() -> None:
    flt = parse("ps_{i}; i % ${shard_num} == ${shard_id}", shard_id=2, shard_num=3)
    assert [i for i in range(9) if flt.accepts("m", f"ps_{i}")] == [2, 5, 8]
    assert substitute_shard("/b/layouts/l_${shard_id}", shard_id=4, shard_num=5) == "/b/layouts/l_4"


def test_match_without_condition_and_glob_and_model_qualified() -> None:
    assert parse("entry").accepts("any", "entry")
    assert not parse("entry").accepts("any", "ps_0")
    assert parse("dense*").accepts("m", "dense_3")
    qualified = parse("m1:ps_{k}; k < 2")
    assert qualified.accepts("m1", "ps_1")
    assert not qualified.accepts("m2", "ps_1")
    assert not qualified.accepts("m1", "ps_2")


def test_boolean_and_arithmetic_operators() -> None:
    flt = parse("ps_{i}; (i * 3 + 1) // 2 >= 5 and not i == 7 or -i == -100")
    accepted = [i for i in range(12) if flt.accepts("m", f"ps_{i}")]
    assert accepted == [i for i in range(12) if ((i * 3 + 1) // 2 >= 5 and i != 7)]
    assert flt.accepts("m", "ps_100")
    chained = parse("ps_{i}; 2 <= i < 4")
    assert [i for i in range(6) if chained.accepts("m", f"ps_{i}")] == [2, 3]


def test_division_by_zero_is_not_accepted() -> None:
    flt = parse("ps_{i}; 10 % i == 0")
    assert not flt.accepts("m", "ps_0")
    assert flt.accepts("m", "ps_5")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ps_{i}; i %% 2", "does not parse"),
        ("ps_{i}; j == 1", "unknown name 'j'"),
        ("ps_{i}; __import__('os').system('true')", "Call"),
        ("ps_{i}; i ** 100000", "BinOp"),
        ("ps_{i}; i.real == 0", "Attribute"),
        ("ps_{i}; 'a' == 'a'", "integer constants"),
        ("ps_{i}; [i][0] == 1", "Subscript"),
        ("ps_{i}; (lambda: 1)() == 1", "Call"),
        ("; i == 1", "empty match"),
        ("ps_{i}_{i}; i == 1", "captured twice"),
        ("ps_{1x}; 1 == 1", "bad capture"),
        ("ps_{i}; i == ${shard_idx}", "does not parse"),
    ],
)
def test_bad_filters_are_refused(text: str, needle: str) -> None:
    with pytest.raises(LayoutFilterError) as info:
        parse(text)
    assert needle in info.value.message
    assert repr(text) in info.value.message


def test_filter_set_any_accepts_and_empty_accepts_all() -> None:
    both = LayoutFilterSet.parse(["entry", "ps_{i}; i == 3"], shard_id=0, shard_num=1)
    items = [("m", "entry"), ("m", "ps_0"), ("m", "ps_3")]
    assert both.select(items) == [("m", "entry"), ("m", "ps_3")]
    assert LayoutFilterSet.parse([], shard_id=0, shard_num=1).select(items) == items


@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=64))
def test_modulo_filter_agrees_with_python(index: int, shards: int) -> None:
    for shard in {0, shards - 1}:
        flt = parse("ps_{i}; i % ${shard_num} == ${shard_id}", shard_id=shard, shard_num=shards)
        assert flt.accepts("m", f"ps_{index}") == (index % shards == shard)


DEEP_CONDITIONS = [
    "not " * 1000 + "i",
    "-" * 1000 + "i",
    " + ".join(["i"] * 1000) + " == 1",
    "not " * 5000 + "i",  # too deep for Python's own parser
]


@pytest.mark.parametrize("condition", DEEP_CONDITIONS, ids=["not", "minus", "plus", "parser"])
def test_a_too_deeply_nested_condition_is_refused_naming_the_filter(condition: str) -> None:
    text = f"ps_{{i}}; {condition}"
    with pytest.raises(LayoutFilterError) as info:
        parse(text)
    assert "nests" in info.value.message and repr(text) in info.value.message


def test_a_condition_nested_as_deep_as_the_limit_still_works() -> None:
    flt = parse("ps_{i}; " + "not " * 100 + "i == 1")
    assert flt.accepts("m", "ps_1") and not flt.accepts("m", "ps_2")


def test_the_agent_refuses_to_start_on_a_too_deeply_nested_filter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    conf = tmp_path / "agent.conf"
    conf.write_text(
        "deploy_type unified\nzk_servers 127.0.0.1:1\nbzid b\nlayout_pattern l\n"
        f"layout_filters ps_{{i}}; {DEEP_CONDITIONS[0]}\n"
    )
    parser = argparse.ArgumentParser()
    agent_main.configure(parser)
    args = parser.parse_args(["--conf", str(conf), "--work_dir", str(tmp_path / "work")])
    with caplog.at_level(logging.ERROR):
        assert agent_main.run(args) == 2
    assert "refusing to start" in caplog.text and "nests deeper than" in caplog.text and "ps_{i}; not" in caplog.text
