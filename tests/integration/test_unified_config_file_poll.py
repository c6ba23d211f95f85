"""The unified server re-reads ``--model_config_file`` every ``--model_config_file_poll_wait_seconds`` and applies a
changed config as a reload: Monolith's v3 agent changes its tensorflow_model_server's models only by rewriting that
file. A file that does not parse or that a reload would refuse changes nothing, and is tried again."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from monolith_serving.core.demo_export import DemoOptions, write_demo
from monolith_serving.core.errors import InvalidArgumentError
from monolith_serving.proto_gen.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc
from monolith_serving.proto_gen.tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig
from monolith_serving.unified.server import UnifiedConfig, UnifiedServer

pytestmark = pytest.mark.integration

AVAILABLE = 30
NO_AGENT = "127.0.0.1:1"  # no entry is hosted here: nothing asks the agent


def config_text(models: dict[str, Path]) -> str:
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
        for name, path in models.items()
    )
    return f"model_config_list {{\n{entries}}}\n"


def write_atomically(path: Path, text: str) -> None:
    staged = path.with_suffix(".tmp")
    staged.write_text(text)
    staged.replace(path)


async def states(stub: model_service_pb2_grpc.ModelServiceStub, name: str) -> list[int] | grpc.StatusCode:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    try:
        reply = await stub.GetModelStatus(request, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error.code()
    return [s.state for s in reply.model_version_status]


async def wait_states(
    stub: model_service_pb2_grpc.ModelServiceStub, name: str, wanted: list[int] | grpc.StatusCode
) -> None:
    deadline = time.monotonic() + 20
    while (seen := await states(stub, name)) != wanted:
        assert time.monotonic() < deadline, f"{name}: {seen}, not {wanted}"
        await asyncio.sleep(0.05)


async def wait_log(caplog: pytest.LogCaptureFixture, level: str, *fragments: str) -> None:
    """Until the poll has logged a ``level`` record holding every fragment."""
    deadline = time.monotonic() + 20
    while not any(r.levelname == level and all(f in r.getMessage() for f in fragments) for r in caplog.records):
        assert time.monotonic() < deadline, f"no {level} record with {fragments}"
        await asyncio.sleep(0.05)


async def wait_warning(caplog: pytest.LogCaptureFixture, *fragments: str) -> None:
    """Until the poll has logged a warning holding every fragment (it read the file and did not apply it)."""
    await wait_log(caplog, "WARNING", *fragments)


def polling_config(config_file: Path) -> UnifiedConfig:
    return UnifiedConfig(
        port=0,
        host="127.0.0.1",
        agent_address=NO_AGENT,
        model_config_file=config_file,
        model_config_file_poll_wait_s=0.1,
        file_system_poll_wait_s=0.2,
    )


@contextlib.asynccontextmanager
async def serving(config_file: Path) -> AsyncIterator[tuple[UnifiedServer, model_service_pb2_grpc.ModelServiceStub]]:
    """A unified server polling ``config_file`` every 0.1 s, and a ModelService stub on it."""
    async with (
        UnifiedServer(polling_config(config_file)) as server,
        grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel,
    ):
        yield server, model_service_pb2_grpc.ModelServiceStub(channel)  # type: ignore[no-untyped-call]


def test_a_rewritten_model_config_file_is_applied(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    export = tmp_path / "demo"
    write_demo(DemoOptions(out=export, num_ps=2, rows=50, dense_alone=True))
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text({}))

    async def scenario() -> None:
        async with serving(config_file) as (_server, stub):
            assert await states(stub, "demo:ps_0") == grpc.StatusCode.NOT_FOUND
            write_atomically(config_file, config_text({"demo:ps_0": export / "ps_0"}))
            await wait_states(stub, "demo:ps_0", [AVAILABLE])

            # Neither a file being written (empty, or not parsable yet) nor a config a reload refuses changes anything.
            config_file.write_text("")
            await wait_log(caplog, "INFO", "sets no config", str(config_file))
            assert await states(stub, "demo:ps_0") == [AVAILABLE]
            config_file.write_text("model_config_list { config { name: ")
            await wait_warning(caplog, "not applied", str(config_file))
            refused = {"demo:ps_0": export / "ps_0", "demo:dense_0": tmp_path / "missing"}
            write_atomically(config_file, config_text(refused))
            await wait_warning(caplog, "not applied", "missing")
            assert await states(stub, "demo:ps_0") == [AVAILABLE]
            assert await states(stub, "demo:dense_0") == grpc.StatusCode.NOT_FOUND

            # Once the file is right it is applied: models come and go with it.
            write_atomically(
                config_file, config_text({"demo:ps_1": export / "ps_1", "demo:dense_0": export / "dense_0"})
            )
            await wait_states(stub, "demo:dense_0", [AVAILABLE])
            await wait_states(stub, "demo:ps_1", [AVAILABLE])
            await wait_states(stub, "demo:ps_0", grpc.StatusCode.NOT_FOUND)

    with caplog.at_level("INFO", logger="monolith_serving.unified.server"):
        asyncio.run(scenario())


def test_the_file_wins_again_after_a_reload_whose_caller_stopped_waiting(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A HandleReloadConfigRequest runs to its end even when its caller is gone; the config it applied is then the
    current one, so the next poll puts the file's config back (it did not: the caller recorded what was applied)."""
    export = tmp_path / "demo"
    write_demo(DemoOptions(out=export, num_ps=2, rows=50))
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text({"demo:ps_0": export / "ps_0"}))
    other = ModelServerConfig()
    other.model_config_list.config.add(name="demo:ps_1", base_path=str(export / "ps_1"))

    async def scenario() -> None:
        async with serving(config_file) as (server, stub):
            await wait_states(stub, "demo:ps_0", [AVAILABLE])
            caller = asyncio.create_task(server.reload(other))
            await asyncio.sleep(0)  # the change has started; its caller now stops waiting
            caller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await caller
            # The start-up config came from the file without the poll; only the cut-off reload makes it differ.
            deadline = time.monotonic() + 20
            while not any("changed: applying it" in r.getMessage() for r in caplog.records):
                assert time.monotonic() < deadline, "the poll never applied the file again"
                await asyncio.sleep(0.05)
            await wait_states(stub, "demo:ps_0", [AVAILABLE])
            await wait_states(stub, "demo:ps_1", grpc.StatusCode.NOT_FOUND)

    with caplog.at_level("INFO", logger="monolith_serving.unified.server"):
        asyncio.run(scenario())


def test_a_start_config_naming_an_entry_without_a_version_starts_and_the_poll_loads_it_later(tmp_path: Path) -> None:
    """Monolith's v3 agent keeps rewriting the file; a restarted container can find it naming an entry whose version
    has not arrived (no serving spec yet). The server starts with what it could apply, as TF Serving waits for
    such models, instead of failing its start and crash-looping."""
    staging, export = tmp_path / "staging", tmp_path / "demo"
    write_demo(DemoOptions(out=staging, num_ps=1, rows=50))
    (export / "entry").mkdir(parents=True)
    (staging / "ps_0").rename(export / "ps_0")
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text({"demo:ps_0": export / "ps_0", "demo:entry": export / "entry"}))

    async def scenario() -> None:
        async with serving(config_file) as (_server, stub):
            await wait_states(stub, "demo:ps_0", [AVAILABLE])
            assert await states(stub, "demo:entry") == grpc.StatusCode.NOT_FOUND
            (staging / "entry" / "1").rename(export / "entry" / "1")
            deadline = time.monotonic() + 20
            while not isinstance(hosted := await states(stub, "demo:entry"), list):
                assert time.monotonic() < deadline, f"the entry was never hosted: {hosted}"
                await asyncio.sleep(0.05)

    asyncio.run(scenario())


def test_a_wrong_start_config_still_stops_the_start_with_the_poll_on(tmp_path: Path) -> None:
    """Only what may come later (an entry's first version) is left to the poll: a config no reload could ever apply
    (two entries; a unified server hosts one) stays a start-up error."""
    export = tmp_path / "demo"
    write_demo(DemoOptions(out=export, num_ps=1, rows=50))
    config_file = tmp_path / "models.config"
    config_file.write_text(config_text({"a:entry": export / "entry", "b:entry": export / "entry"}))

    async def scenario() -> None:
        server = UnifiedServer(polling_config(config_file))
        try:
            with pytest.raises(InvalidArgumentError, match="entry"):
                await server.start()
        finally:
            await server.stop()

    asyncio.run(scenario())
