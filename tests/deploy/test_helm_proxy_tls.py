"""The Helm chart's TLS proxy (`proxy.tls`): what it renders on and off, the values it refuses, its NOTES, and its
container's start and exec probes run for real: the rendered start script over a stand-in Secret folder writes the
SSLConfig and execs a real proxy serving it, the rendered probe command checks that proxy over TLS, also after the
Secret is renewed under it, and a restart of the container serves the renewed certificate."""

from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from deploy_tools import (
    CHART,
    Helm,
    ensure_python_tool,
    free_port,
    helm_binary,
    helm_env,
    helm_template,
    monolith_commands_in_shell,
    parse_command_line,
    render_notes,
    run,
)
from pid_namespace import SKIP_REASON, only_child, pid_namespaces_work
from tls_certs import Authority, cert_pem, key_pem

from monolith_serving.client.health import check_health
from monolith_serving.core.tls_channel import ChannelTls

SERVER_NAME = "proxy.serving.test"
SECRET = "proxy-tls"
TLS_ON = ("--set", f"proxy.tls.secretName={SECRET}", "--set", f"proxy.tls.serverName={SERVER_NAME}")
CLIENT_VERIFY = ("--set", "proxy.tls.clientVerify=true")

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Helm]:
    yield helm_binary(), helm_env(tmp_path_factory.mktemp("helm-home"))


def _render(helm: Helm, *args: str) -> list[dict[str, Any]]:
    done = helm_template(helm, *args)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def _deployment(docs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith(suffix)]
    return found


def _proxy_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod: dict[str, Any] = _deployment(docs, "-proxy")["spec"]["template"]["spec"]
    return pod


def _flag_value(args: Sequence[str], flag: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"{flag}=")]
    return value


def _mounts(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {mount["name"]: mount for mount in container.get("volumeMounts", [])}


@dataclass(frozen=True)
class TlsPod:
    """The parts of a rendered TLS proxy pod the tests look at."""

    pod: dict[str, Any]
    proxy: dict[str, Any]
    volumes: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, docs: list[dict[str, Any]]) -> TlsPod:
        pod = _proxy_pod(docs)
        return cls(pod, pod["containers"][0], {volume["name"]: volume for volume in pod["volumes"]})

    def start_script(self) -> str:
        """The script the proxy container starts with: ``sh -c SCRIPT sh ARGS...`` (its args are the script's
        ``"$@"``)."""
        command = self.proxy["command"]
        assert command[:2] == ["/bin/sh", "-c"] and command[3:] == ["sh"], command
        return str(command[2])

    def ssl_config_argv(self) -> list[str]:
        [argv] = [argv for argv in monolith_commands_in_shell(self.start_script()) if argv[0] == "ssl-config"]
        return argv

    def probe_command(self) -> list[str]:
        commands = [
            self.proxy[probe]["exec"]["command"] for probe in ("startupProbe", "readinessProbe", "livenessProbe")
        ]
        assert all(command == commands[0] for command in commands), commands
        command: list[str] = commands[0]
        return command


# -- rendering --------------------------------------------------------------------------------------------------


def test_tls_is_off_by_default(helm: Helm) -> None:
    pod = _proxy_pod(_render(helm))
    proxy = pod["containers"][0]
    assert "initContainers" not in pod
    assert "command" not in proxy  # the image's entrypoint: monolith-serving
    assert {volume["name"] for volume in pod["volumes"]} == {"config", "tmp"}
    assert not [arg for arg in proxy["args"] if "ssl" in arg]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "grpc" in proxy[probe] and "exec" not in proxy[probe], probe


@pytest.mark.parametrize("client_verify", [False, True])
def test_tls_on_renders_the_start_script_volumes_args_and_exec_probes(helm: Helm, client_verify: bool) -> None:
    docs = _render(helm, *TLS_ON, *(CLIENT_VERIFY if client_verify else ()))
    pod = TlsPod.of(docs)
    # No init container: the proxy container's own start copies the Secret into the in-memory volume and writes the
    # SSLConfig from the copy, at every start of the container; then it execs the proxy with its args.
    assert "initContainers" not in pod.pod
    secret_path = _mounts(pod.proxy)["tls-secret"]["mountPath"]
    copy_path = _mounts(pod.proxy)["tls"]["mountPath"]
    assert _mounts(pod.proxy)["tls-secret"]["readOnly"] is True and not _mounts(pod.proxy)["tls"].get("readOnly")
    script = pod.start_script()
    argv = pod.ssl_config_argv()
    args = parse_command_line(argv)
    assert (args.server_cert_file, args.server_key_file) == (Path(f"{copy_path}/tls.crt"), Path(f"{copy_path}/tls.key"))
    assert args.client_verify is client_verify
    assert args.custom_ca_file == (Path(f"{copy_path}/ca.crt") if client_verify else None)
    assert f"{secret_path}/tls.crt" in script and f"{secret_path}/tls.key" in script
    assert (f"{secret_path}/ca.crt" in script) is client_verify
    assert script.rstrip().endswith('\nexec monolith-serving "$@"')
    # Volumes: the Secret and a memory-backed emptyDir.
    assert pod.volumes["tls-secret"]["secret"]["secretName"] == SECRET
    assert pod.volumes["tls"]["emptyDir"]["medium"] == "Memory"
    # The proxy serves the SSLConfig the start script wrote.
    assert pod.proxy["args"][0] == "proxy"
    proxy_args = parse_command_line(pod.proxy["args"])
    assert proxy_args.ssl_config_file == str(args.out)
    assert str(args.out).startswith(f"{copy_path}/")
    assert not [arg for arg in pod.proxy["args"] if "entry_ssl" in arg]  # entries stay plaintext
    # Exec probes over TLS: the proxy's own port, the copy of its certificate, the name it carries.
    command = pod.probe_command()
    assert command[0] == "monolith-serving"
    health = parse_command_line(command[1:])
    assert health.addr == "127.0.0.1:8500"
    assert health.ssl_ca_file == Path(f"{copy_path}/tls.crt")
    assert health.ssl_target_name_override == SERVER_NAME
    client_files = (Path(f"{copy_path}/tls.crt"), Path(f"{copy_path}/tls.key")) if client_verify else (None, None)
    assert (health.ssl_cert_file, health.ssl_key_file) == client_files
    assert health.timeout_s < pod.proxy["startupProbe"]["timeoutSeconds"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())["probes"]
    for probe, key in (("startupProbe", "startup"), ("readinessProbe", "readiness"), ("livenessProbe", "liveness")):
        assert "grpc" not in pod.proxy[probe], probe
        assert pod.proxy[probe]["periodSeconds"] == values[key]["periodSeconds"], probe
        assert pod.proxy[probe]["failureThreshold"] == values[key]["failureThreshold"], probe
    # Hardened like every container of the chart.
    assert pod.proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod.proxy["securityContext"]["allowPrivilegeEscalation"] is False
    # Entries stay plaintext inside the cluster.
    entry = _deployment(docs, "-entry")["spec"]["template"]["spec"]["containers"][0]
    assert not [arg for arg in entry["args"] if "ssl" in arg]


def test_tls_follows_the_grpc_port(helm: Helm) -> None:
    pod = TlsPod.of(_render(helm, *TLS_ON, "--set", "ports.grpc=9443"))
    assert parse_command_line(pod.probe_command()[1:]).addr == "127.0.0.1:9443"
    assert parse_command_line(pod.proxy["args"]).port == 9443


@pytest.mark.parametrize("client_verify", [False, True])
def test_tls_values_pass_lint_and_kubernetes_schema(helm: Helm, client_verify: bool, tmp_path: Path) -> None:
    flags = [*TLS_ON, *(CLIENT_VERIFY if client_verify else ())]
    binary, env = helm
    done = run([binary, "lint", "--strict", CHART, *flags], env=env, check=False)
    assert done.returncode == 0 and "0 chart(s) failed" in done.stdout, done.stdout + done.stderr
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(helm_template(helm, *flags).stdout)
    validate = ensure_python_tool("kubernetes-validate", "kubernetes-validate>=1.29")
    checked = run([validate, "--strict", "-k", "1.29", rendered], check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", f"proxy.tls.secretName={SECRET}"], "proxy.tls.serverName is required when proxy.tls.secretName"),
        (["--set", "proxy.tls.clientVerify=true"], "proxy.tls.clientVerify needs proxy.tls.secretName"),
        (["--set", f"proxy.tls.serverName={SERVER_NAME}"], "proxy.tls.serverName applies only with"),
        (["--set", "proxy.extraArgs[0]=--ssl_config_file=/x"], "set proxy.tls instead of --ssl_config_file"),
        (["--set", "proxy.extraArgs[0]=-ssl-config-file=/x"], "set proxy.tls instead of --ssl_config_file"),
        (["--set", "proxy.tls.secretName=Proxy_TLS"], "proxy.tls.secretName"),
        ([*TLS_ON, "--set", "proxy.tls.serverName=a name"], "proxy.tls.serverName"),
        ([*TLS_ON, "--set-string", "proxy.tls.clientVerify=yes"], "proxy.tls.clientVerify"),
        (["--set", "proxy.tls.port=1"], "proxy.tls: Additional property port is not allowed"),
    ],
)
def test_bad_tls_values_are_refused(helm: Helm, flags: list[str], message: str) -> None:
    done = helm_template(helm, *flags)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def _notes_predict_argv(text: str) -> list[str]:
    """The `monolith-serving client predict ...` line of the notes (with its continuation), as arguments."""
    joined = text.replace("\\\n", " ")
    [argv] = [argv for argv in monolith_commands_in_shell(joined) if argv[0] == "client"]
    return argv


@pytest.mark.parametrize("client_verify", [False, True])
def test_notes_tell_how_to_predict_over_tls(helm: Helm, tmp_path: Path, client_verify: bool) -> None:
    text = render_notes(helm, tmp_path, *TLS_ON, *(CLIENT_VERIFY if client_verify else ()))
    assert f"kubectl -n serving get secret {SECRET} -o jsonpath='{{.data.ca\\.crt}}' | base64 -d > ca.crt" in text
    assert "port-forward service/rel-monolith-serving-proxy 8500:8500" in text
    assert "run monolith-client" not in text  # a pod without the CA could not dial TLS
    argv = _notes_predict_argv(text)
    args = parse_command_line(argv)
    assert args.target == "127.0.0.1:8500"
    assert args.ssl_ca_file == Path("ca.crt") and args.ssl_target_name_override == SERVER_NAME
    assert (args.ssl_cert_file is not None) is client_verify
    assert "\n\nThe proxy's gRPC port serves TLS only" in text  # a paragraph of its own


def test_notes_without_tls_keep_the_plaintext_commands(helm: Helm, tmp_path: Path) -> None:
    text = render_notes(helm, tmp_path)
    assert "ssl" not in text
    assert "\n\nSend a Predict through the proxy from inside the cluster:\n" in text
    assert "client predict --target rel-monolith-serving-proxy:8500 --model entry" in text  # in a `kubectl run` pod
    assert parse_command_line(_notes_predict_argv(text)).target == "127.0.0.1:8500"  # through port-forward


# -- the init container and the probes, run for real ---------------------------------------------------------------


def _leaf(authority: Authority, *, client_auth: bool, expired: bool = False) -> tuple[str, str]:
    """(key PEM, certificate PEM) for SERVER_NAME, allowing server auth and, when asked, client auth; valid for two
    days, or expired yesterday."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    start, end = (
        (now - datetime.timedelta(days=3), now - datetime.timedelta(days=1))
        if expired
        else (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2))
    )
    usages = [ExtendedKeyUsageOID.SERVER_AUTH, *([ExtendedKeyUsageOID.CLIENT_AUTH] if client_auth else [])]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(authority.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(authority.key, hashes.SHA256())
    )
    return key_pem(key), cert_pem(cert)


def _write_secret(
    folder: Path, authority: Authority, *, ca: bool, client_auth: bool = True, expired: bool = False
) -> None:
    """A stand-in for the mounted kubernetes.io/tls Secret: tls.crt, tls.key and, when asked, ca.crt."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = _leaf(authority, client_auth=client_auth, expired=expired)
    (folder / "tls.crt").write_text(cert)
    (folder / "tls.key").write_text(key)
    if ca:
        (folder / "ca.crt").write_text(cert_pem(authority.cert))


def _venv_env(root: Path) -> dict[str, str]:
    """The environment with a `monolith-serving` on PATH that runs this venv's (the image's console script)."""
    bin_dir = root / "bin"
    bin_dir.mkdir(exist_ok=True)
    command = bin_dir / "monolith-serving"
    command.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m monolith_serving "$@"\n')
    command.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


@dataclass(frozen=True)
class LocalPod:
    """A rendered TLS proxy pod whose volumes are folders under ``root`` (a volume named v at ``root/v``), its
    containers run as the kubelet runs them, with `monolith-serving` on PATH (_venv_env)."""

    pod: TlsPod
    root: Path

    def local(self, text: str, container: dict[str, Any]) -> str:
        """``text`` with the container's mount paths replaced by their folders, in one pass (the folders are under
        /tmp, itself a mount path), a longer path before one it extends."""
        folders = {mount["mountPath"]: str(self.root / mount["name"]) for mount in container["volumeMounts"]}
        paths = "|".join(re.escape(path) for path in sorted(folders, key=len, reverse=True))
        return re.sub(rf"({paths})(?=/|\s|$)", lambda match: folders[match.group(1)], text)

    def argv(self, container: dict[str, Any], args: Sequence[str]) -> list[str]:
        """The command line of ``container``: its command (the image's ENTRYPOINT, monolith-serving, when it has none),
        its paths made local, then ``args`` as given."""
        command = container.get("command", ["monolith-serving"])
        return [*(self.local(part, container) for part in command), *args]

    def proxy_args(self, port: int) -> list[str]:
        """The proxy container's args with the rendered --port and --ssl_config_file; its other flags need the cluster:
        discovery is replaced by a static entry target nothing listens on."""
        ssl_config = self.local(_flag_value(self.pod.proxy["args"], "--ssl_config_file"), self.pod.proxy)
        return [
            "proxy",
            f"--port={port}",
            "--host=127.0.0.1",
            f"--ssl_config_file={ssl_config}",
            f"--rest_api_port={free_port()}",
            f"--entry_targets=127.0.0.1:{free_port()}",
        ]

    def start_pod(self) -> None:
        """What the pod's start does before its containers run: the emptyDir, then every init container, each to its
        end."""
        (self.root / "tls").mkdir(exist_ok=True)
        for init in self.pod.pod.get("initContainers", []):
            done = subprocess.run(
                self.argv(init, [self.local(arg, init) for arg in init.get("args", [])]),
                env=_venv_env(self.root),
                capture_output=True,
                check=False,
                timeout=120,
            )
            assert done.returncode == 0, done.stderr

    def start_container(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """The proxy container started with ``args``."""
        with open(log, "ab") as out:
            return subprocess.Popen(
                self.argv(self.pod.proxy, args), stdout=out, stderr=subprocess.STDOUT, env=_venv_env(self.root)
            )

    def run_container(self) -> subprocess.CompletedProcess[str]:
        """A start of the proxy container that must end before the proxy runs (`--help` if it does not)."""
        (self.root / "tls").mkdir(exist_ok=True)
        argv = self.argv(self.pod.proxy, ["proxy", "--help"])
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120, env=_venv_env(self.root))

    def probe(self) -> subprocess.CompletedProcess[str]:
        argv = [self.local(arg, self.pod.proxy) for arg in self.pod.probe_command()]
        assert argv[0] == "monolith-serving"
        return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60, env=_venv_env(self.root))

    def ssl_config_file(self) -> str:
        return self.local(_flag_value(self.pod.proxy["args"], "--ssl_config_file"), self.pod.proxy)


@dataclass
class RunningProxy:
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> int:
        """SIGTERM, as the kubelet stops a container; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def _start_proxy(local: LocalPod, port: int, dial: ChannelTls | None) -> RunningProxy:
    """The proxy container started (LocalPod.proxy_args); returned once it is SERVING over TLS to ``dial``, or, with
    None, once its port accepts connections."""
    log = local.root / "proxy.log"
    process = local.start_container(local.proxy_args(port), log)
    proxy = RunningProxy(process, log)
    deadline = time.monotonic() + 60
    while not _up(port, dial):
        if process.poll() is not None or time.monotonic() > deadline:
            proxy.stop()
            raise AssertionError(f"proxy not up over TLS:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proxy


def _up(port: int, dial: ChannelTls | None) -> bool:
    if dial is not None:
        return check_health(f"127.0.0.1:{port}", timeout_s=1.0, tls=dial).serving
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _served_certificate(port: int) -> str:
    """The certificate the port presents, unverified (it may have expired)."""
    return ssl.get_server_certificate(("127.0.0.1", port))


@pytest.fixture
def authority() -> Authority:
    return Authority.create()


def _local_pod(helm: Helm, tmp_path: Path, port: int, *, client_verify: bool) -> LocalPod:
    flags = [*TLS_ON, "--set", f"ports.grpc={port}", *(CLIENT_VERIFY if client_verify else ())]
    return LocalPod(TlsPod.of(_render(helm, *flags)), tmp_path)


def _dial(authority: Authority, secret: Path, *, client_cert: bool) -> ChannelTls:
    return ChannelTls(
        root_certificates=cert_pem(authority.cert),
        certificate_chain=(secret / "tls.crt").read_text() if client_cert else None,
        private_key=(secret / "tls.key").read_text() if client_cert else None,
        target_name_override=SERVER_NAME,
    )


@pytest.mark.parametrize("client_verify", [False, True])
def test_the_rendered_start_script_and_probes_work_with_a_real_proxy_and_survive_a_renewal(
    helm: Helm, tmp_path: Path, authority: Authority, client_verify: bool
) -> None:
    """Without clientVerify the Secret has no ca.crt (a publicly issued certificate's shape): the probe trusts the
    certificate itself. With it, the probe presents that certificate as its client certificate. A renewal of the
    Secret afterwards changes nothing for the running container: the probe still trusts the copy the proxy serves,
    where one trusting the renewed Secret would fail. The start script execs the proxy: the kubelet's SIGTERM reaches
    it, and it drains and exits 0."""
    port = free_port()
    local = _local_pod(helm, tmp_path, port, client_verify=client_verify)
    secret = tmp_path / "tls-secret"
    _write_secret(secret, authority, ca=client_verify)
    local.start_pod()
    proxy = _start_proxy(local, port, _dial(authority, secret, client_cert=client_verify))
    try:
        config = Path(local.ssl_config_file())
        assert config.stat().st_mode & 0o077 == 0
        cmdline = Path(f"/proc/{proxy.process.pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:4] == [sys.executable.encode(), b"-m", b"monolith_serving", b"proxy"], cmdline
        probe = local.probe()
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert probe.stdout.strip() == f"127.0.0.1:{port} SERVING"
        # cert-manager renews the certificate: the kubelet updates the mounted Secret in place.
        _write_secret(secret, Authority.create(), ca=client_verify)
        probe = local.probe()
        assert probe.returncode == 0, probe.stdout + probe.stderr
        trusting_the_secret = [
            sys.executable, "-m", "monolith_serving", "health", f"--addr=127.0.0.1:{port}",
            f"--ssl_ca_file={secret / 'tls.crt'}", f"--ssl_target_name_override={SERVER_NAME}",
        ]  # fmt: skip
        assert subprocess.run(trusting_the_secret, capture_output=True, check=False, timeout=60).returncode == 1
    finally:
        status = proxy.stop()
    assert status == 0, proxy.log.read_text()[-3000:]


def test_a_restart_of_the_proxy_container_serves_the_renewed_certificate(
    helm: Helm, tmp_path: Path, authority: Authority
) -> None:
    """The certificate expires under a running pod: its probes, which trust the copy it serves, fail, and the
    kubelet restarts the proxy container (the container alone: init containers run only when the pod starts).
    cert-manager has renewed the Secret meanwhile: the restarted container must serve the renewed certificate, or its
    probes fail again and it crash-loops until the pod is deleted."""
    port = free_port()
    local = _local_pod(helm, tmp_path, port, client_verify=False)
    secret = tmp_path / "tls-secret"
    _write_secret(secret, authority, ca=False, expired=True)  # as it is once the running pod's certificate expired
    local.start_pod()
    proxy = _start_proxy(local, port, dial=None)
    try:
        assert _served_certificate(port) == (secret / "tls.crt").read_text()
        probe = local.probe()
        assert probe.returncode == 1 and "UNAVAILABLE" in probe.stderr, probe.stdout + probe.stderr
    finally:
        proxy.stop()
    _write_secret(secret, authority, ca=False)  # renewed by cert-manager
    proxy = _start_proxy(local, port, dial=None)  # the container restarted
    try:
        assert _served_certificate(port) == (secret / "tls.crt").read_text()
        probe = local.probe()
        assert probe.returncode == 0, probe.stdout + probe.stderr
        assert check_health(f"127.0.0.1:{port}", timeout_s=5.0, tls=_dial(authority, secret, client_cert=False)).serving
    finally:
        proxy.stop()


@pytest.mark.skipif(not pid_namespaces_work(), reason=SKIP_REASON)
@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_the_start_ends_the_container_before_the_proxy_runs(
    helm: Helm, tmp_path: Path, authority: Authority, signal_number: signal.Signals
) -> None:
    """Until it execs the proxy, the start script is the container's PID 1, which has no default signal actions: the
    kubelet's SIGTERM must end it (128 + the signal) while ssl-config still runs, here a stand-in that never ends, not
    be dropped while the pod waits out its grace period for the SIGKILL; and the proxy must not start."""
    local = _local_pod(helm, tmp_path, free_port(), client_verify=False)
    _write_secret(tmp_path / "tls-secret", authority, ca=False)
    (tmp_path / "tls").mkdir()
    ssl_config_started = tmp_path / "ssl-config-started"
    proxy_started = tmp_path / "proxy-started"
    bin_dir = tmp_path / "stand-in"
    bin_dir.mkdir()
    (bin_dir / "monolith-serving").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = ssl-config ]; then touch {shlex.quote(str(ssl_config_started))}; exec sleep 3600; fi\n'
        f"touch {shlex.quote(str(proxy_started))}\n"
    )
    (bin_dir / "monolith-serving").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    command = local.argv(local.pod.proxy, local.pod.proxy["args"])
    launcher = subprocess.Popen(
        ["unshare", "-fp", "--mount-proc", *command], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env
    )
    pid_1 = only_child(launcher.pid)
    try:
        deadline = time.monotonic() + 60
        while not ssl_config_started.exists():
            assert launcher.poll() is None and time.monotonic() < deadline, "the start script never ran ssl-config"
            time.sleep(0.05)
        os.kill(pid_1, signal_number)
        # A guard against hanging, not a timed assertion: ssl-config never ends, so only the signal ends the script.
        try:
            code = launcher.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the start script, as PID 1, ignored {signal_number.name}") from None
    finally:
        if launcher.poll() is None:
            os.kill(pid_1, signal.SIGKILL)  # the namespace ends with its PID 1, and its other processes with it
            launcher.wait()
    assert launcher.stdout is not None
    assert code == 128 + signal_number, launcher.stdout.read().decode(errors="replace")
    assert not proxy_started.exists()
    assert not (tmp_path / "tls" / "ssl.config").exists()


def test_client_verify_probes_need_a_certificate_allowing_client_auth(
    helm: Helm, tmp_path: Path, authority: Authority
) -> None:
    """What docs/deploy.md says: a server-auth-only certificate fails every probe of a clientVerify proxy."""
    port = free_port()
    local = _local_pod(helm, tmp_path, port, client_verify=True)
    secret = tmp_path / "tls-secret"
    _write_secret(secret, authority, ca=True, client_auth=False)
    local.start_pod()
    client_key, client_cert = _leaf(authority, client_auth=True)
    dial = ChannelTls(cert_pem(authority.cert), client_cert, client_key, SERVER_NAME)
    proxy = _start_proxy(local, port, dial)
    try:
        probe = local.probe()
        assert probe.returncode == 1, probe.stdout + probe.stderr
        assert "UNAVAILABLE" in probe.stderr
    finally:
        proxy.stop()


def test_client_verify_with_a_secret_lacking_ca_crt_stops_the_container(
    helm: Helm, tmp_path: Path, authority: Authority
) -> None:
    local = _local_pod(helm, tmp_path, free_port(), client_verify=True)
    _write_secret(tmp_path / "tls-secret", authority, ca=False)
    done = local.run_container()
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"proxy.tls.clientVerify is true but Secret {SECRET} has no ca.crt" in done.stderr
    assert not (tmp_path / "tls" / "ssl.config").exists()


def test_a_key_that_is_not_the_certificates_stops_the_container_naming_the_flag(
    helm: Helm, tmp_path: Path, authority: Authority
) -> None:
    local = _local_pod(helm, tmp_path, free_port(), client_verify=False)
    secret = tmp_path / "tls-secret"
    _write_secret(secret, authority, ca=False)
    other_key, _ = _leaf(authority, client_auth=True)
    (secret / "tls.key").write_text(other_key)
    done = local.run_container()
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--server_key_file" in done.stderr and "is not the private key of the certificate" in done.stderr
    assert not (tmp_path / "tls" / "ssl.config").exists()


def test_an_ip_address_is_accepted_as_server_name(helm: Helm) -> None:
    address = "10.0.0.7"
    pod = TlsPod.of(
        _render(helm, "--set", f"proxy.tls.secretName={SECRET}", "--set", f"proxy.tls.serverName={address}")
    )
    assert parse_command_line(pod.probe_command()[1:]).ssl_target_name_override == address


def test_a_restart_as_the_pod_user_copies_over_the_last_copy(
    helm: Helm, tmp_path_factory: pytest.TempPathFactory, authority: Authority
) -> None:
    """Every start of the container copies the Secret again into the memory-backed emptyDir, which keeps the copy of
    the last start, its files mode 0440 like the Secret's: they must not stop the new copy. Run as the pod's user
    would (not root, the Secret readable through its group), with a stand-in `monolith-serving` on PATH (the
    interpreter of this venv is not readable by that user)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the script as another user")
    user = 65534  # nobody: the pod's runAsUser and fsGroup stand-in
    root = Path(tempfile.mkdtemp(prefix="tls-rerun-"))  # not under pytest's tmp_path, which only root can enter
    try:
        root.chmod(0o755)
        local = LocalPod(TlsPod.of(_render(helm, *TLS_ON)), root)
        bin_dir = root / "stand-in"
        bin_dir.mkdir()
        (bin_dir / "monolith-serving").write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / "monolith-serving").chmod(0o755)
        secret = root / "tls-secret"
        copy = root / "tls"
        copy.mkdir()
        copy.chmod(0o777)  # an emptyDir
        as_user = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups"]
        argv = [*as_user, *local.argv(local.pod.proxy, local.pod.proxy["args"])]
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
        for run_number in range(2):
            _write_secret(secret, authority, ca=False)
            secret.chmod(0o755)
            for name in ("tls.crt", "tls.key"):
                os.chown(secret / name, 0, user)
                (secret / name).chmod(0o440)
            done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60, env=env)
            assert done.returncode == 0, f"run {run_number}: {done.stderr}"
            assert (copy / "tls.crt").read_text() == (secret / "tls.crt").read_text(), f"run {run_number}"
            assert (copy / "tls.crt").stat().st_uid == user
    finally:
        shutil.rmtree(root)
