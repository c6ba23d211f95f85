"""Fixtures of the deployment tests (images, tools). Helpers live in deploy_tools.py."""

from __future__ import annotations

import pytest
from deploy_tools import Images, build_images, docker_problem


@pytest.fixture(scope="session")
def images() -> Images:
    """The local images, built once per machine (later sessions find them cached).

    Fails rather than skips without Docker: the machines `make test` runs on have an engine, and a missing
    one must not pass silently. Deselect with `-m "not docker"` where there is none.
    """
    problem = docker_problem()
    if problem is not None:
        pytest.fail(f"Docker needed for the deployment tests: {problem}", pytrace=False)
    built = Images()
    build_images(built)
    return built
