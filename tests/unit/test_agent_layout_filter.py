"""layout_filters: Monolith's regex matching, safe conditions, ${shard_id}/${shard_num}, refusal of bad filters."""

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
    assert even.accepts("m", "ps_2_extra")  # re.match: anchored at the start only, as in Monolith


def test_shard_variables_are_substituted_before_parsing() -> None:
    flt = parse("ps_{i}; i % ${shard_num} == ${shard_id}", shard_id=2, shard_num=3)
    assert [i for i in range(9) if flt.accepts("m", f"ps_{i}")] == [2, 5, 8]
    assert substitute_shard("/b/layouts/l_${shard_id}", shard_id=4, shard_num=5) == "/b/layouts/l_4"


def test_match_without_condition_and_old_forms_and_model_qualified() -> None:
    assert parse("entry").accepts("any", "entry")
    assert not parse("entry").accepts("any", "ps_0")
    assert parse("dense*").accepts("m", "dense_3")  # regex "dens" + "e*", a prefix of dense_3
    qualified = parse("m1:ps_{k}; k < 2")
    assert qualified.accepts("m1", "ps_1")
    assert not qualified.accepts("m2", "ps_1")
    assert not qualified.accepts("m1", "ps_2")
    assert not qualified.accepts("m10", "ps_1")  # the ':' follows the model name
    # Kept from the old glob syntax (Monolith would refuse "*" and match nothing with "m:*").
    assert all(parse("*").accepts("m", s) for s in ("entry", "ps_0", "dense_0"))
    every_of_m = parse("m:*")
    assert every_of_m.accepts("m", "ps_3") and every_of_m.accepts("m", "entry")
    assert not every_of_m.accepts("m2", "entry") and not every_of_m.accepts("x", "entry")


ITEMS = ["entry", "ps_0", "ps_1", "ps_2", "ps_3", "ps_10", "dense_0"]


@pytest.mark.parametrize(
    ("match", "accepted"),
    [
        ("ps", ["ps_0", "ps_1", "ps_2", "ps_3", "ps_10"]),  # a prefix
        ("ps_", ["ps_0", "ps_1", "ps_2", "ps_3", "ps_10"]),
        (r"ps_\d+", ["ps_0", "ps_1", "ps_2", "ps_3", "ps_10"]),
        (".*", ITEMS),
        ("(entry|ps_0)", ["entry", "ps_0"]),
        ("(?:entry|ps_0)", ["entry", "ps_0"]),  # its ':' is regex syntax: still matched against the sub_graph
        ("ps_1", ["ps_1", "ps_10"]),  # Monolith's re.match: ps_1 is a prefix of ps_10
        ("ps_1$", ["ps_1"]),
        (r"ps_\d{2}", ["ps_10"]),  # a quantifier, not a capture
        ("ps_[0-2]$|entry", ["entry", "ps_0", "ps_1", "ps_2"]),
        ("dense_{d}", ["dense_0"]),
        (r"m:ps_\d$", ["ps_0", "ps_1", "ps_2", "ps_3"]),  # a literal ':': matched against model:sub_graph
    ],
)
def test_the_match_is_a_regex_anchored_at_the_start_as_in_monolith(match: str, accepted: list[str]) -> None:
    for text in (match, f"{match}; True", f"{match};True"):
        flt = parse(text)
        assert [s for s in ITEMS if flt.accepts("m", s)] == accepted, text


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("True", [0, 1, 2, 3, 4, 5]),
        ("False", []),
        ("i in (0, 3)", [0, 3]),
        ("i not in [1, 2]", [0, 3, 4, 5]),
        ("i in {4, 5}", [4, 5]),
        ("i in (0,)", [0]),
        ("i in range(1, 6, 2)", [1, 3, 5]),
        ("i / 2 == 1.5", [3]),
        ("i ** 2 > 9", [4, 5]),
        ("i & 1 == 1", [1, 3, 5]),  # Python precedence: i & (1 == 1)
        ("(i & 1) == 0 or i ^ 4 == 1", [0, 2, 4, 5]),
        ("~i == -3", [2]),
        ("min(i, 3) == 3 and max(i, 4) == 4", [3, 4]),
        ("abs(i - 3) <= 1", [2, 3, 4]),
        ("(i if i > 2 else 0) == 0", [0, 1, 2]),
        ("(i and 7) == 7", [1, 2, 3, 4, 5]),  # and/or yield their operands, as in Python
        ("not i in (1, 2) and i != 5", [0, 3, 4]),
        ("-1.5 < i - 2 < 1.5", [1, 2, 3]),
    ],
)
def test_conditions_monolith_confs_use_evaluate_like_python(condition: str, expected: list[int]) -> None:
    flt = parse(f"ps_{{i}}; {condition}")
    assert [i for i in range(6) if flt.accepts("m", f"ps_{i}")] == expected


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


def test_a_condition_failing_for_one_item_does_not_accept_it(caplog: pytest.LogCaptureFixture) -> None:
    huge = parse("ps_{i}; ((i ** 64) ** 64) ** 64 > 0")
    assert huge.accepts("m", "ps_1")
    with caplog.at_level(logging.WARNING):
        assert not huge.accepts("m", "ps_2")  # 2**262144: refused, not computed
    assert "too large" in caplog.text
    assert not parse("ps_{i}; i / 0.5 > 0").accepts("m", "ps_" + "9" * 400)  # float overflow
    optional = parse("ps(_{i})?; i == 1")
    assert optional.accepts("m", "ps_1") and not optional.accepts("m", "ps")  # i did not take part
    # A user's own named group is an integer capture too (Monolith int()s every group); text is not accepted.
    named = parse("(?P<kind>[a-z]+)_{i}; i == 0")
    assert not named.accepts("m", "ps_0")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("ps_{i}; i %% 2", "does not parse"),
        ("ps_{i}; j == 1", "unknown name 'j'"),
        ("ps_{i}; __import__('os').system('true')", "only calls of"),
        ("ps_{i}; eval('1')", "only calls of"),
        ("ps_{i}; range(i, step=2)", "only calls of"),
        ("ps_{i}; min((1, 2))", "min() takes 2..64 arguments"),
        ("ps_{i}; i ** 100000", "exponent of **"),
        ("ps_{i}; i ** i", "exponent of **"),
        ("ps_{i}; i.real == 0", "Attribute"),
        ("ps_{i}; 'a' == 'a'", "only number and boolean constants"),
        ("ps_{i}; [i][0] == 1", "Subscript"),
        ("ps_{i}; (lambda: 1)() == 1", "only calls of"),
        ("ps_{i}; [x for x in (1,)]", "ListComp"),
        ("ps_{i}; i is 1", "Compare"),
        ("ps_{i}; i << 1", "BinOp"),
        ("ps_{i}; i in 3", "condition fails"),  # tried once with i = 0 at start-up
        ("ps_{i}; (0,) * 10**9", "condition fails: arithmetic on tuple"),
        ("; i == 1", "empty match"),
        ("ps_{i}_{i}; i == 1", "redefinition of group name 'i'"),
        ("ps_{1x}; 1 == 1", "bad capture"),
        ("ps_{i-j}; 1 == 1", "bad capture"),
        ("ps_(; True", "is not a regular expression"),
        ("*ps; True", "is not a regular expression"),
        ("ps_[; True", "is not a regular expression"),
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


def _agent_args(tmp_path: Path, filters: str) -> argparse.Namespace:
    conf = tmp_path / "agent.conf"
    conf.write_text(
        f"deploy_type unified\nzk_servers 127.0.0.1:1\nbzid b\nlayout_pattern l\nlayout_filters {filters}\n"
    )
    parser = argparse.ArgumentParser()
    agent_main.configure(parser)
    return parser.parse_args(["--conf", str(conf), "--work_dir", str(tmp_path / "work")])


def test_the_agent_takes_monolith_style_filters(tmp_path: Path) -> None:
    prepared = agent_main.prepare(_agent_args(tmp_path, "ps_{i}; i in (0, 3)"), {})
    assert prepared.filters is not None
    assert prepared.filters.select([("m", f"ps_{i}") for i in range(5)]) == [("m", "ps_0"), ("m", "ps_3")]


def test_the_agent_refuses_a_bad_regex_naming_the_filter(tmp_path: Path) -> None:
    # prepare() is what run() turns into exit 2 (below); calling it starts nothing, whatever the code accepts.
    with pytest.raises(LayoutFilterError) as info:
        agent_main.prepare(_agent_args(tmp_path, "ps_(\\d+; True"), {})
    assert "not a regular expression" in info.value.message and "'ps_(\\\\d+; True'" in info.value.message


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
