"""``monolith-serving demo`` checks its flags before it starts anything: a bad --child_log_level was passed on to
every child, each exited 2, and the demo only said that a cluster process exited early."""

from __future__ import annotations

import argparse

import pytest

from monolith_serving.entry import standalone


def parser() -> argparse.ArgumentParser:
    built = argparse.ArgumentParser(prog="demo")
    standalone.configure(built)
    return built


def test_a_bad_child_log_level_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["--child_log_level", "loud"])
    assert exited.value.code == 2
    assert "--child_log_level" in capsys.readouterr().err


def test_the_child_log_level_takes_any_case() -> None:
    assert parser().parse_args(["--child_log_level", "debug"]).child_log_level == "DEBUG"
