"""``monolith-serving client``: Monolith's ``tfs_client``, in its own spelling and in ours (docs/client.md).

tfs_client's spelling works unchanged, flags, values, files and output::

    client --cmd_type=get|status|meta|load|profile [--conf agent.conf] [--target H:P[,H:P...]]
           [--model_name M] [--signature_name S] [--input_type T] [--input_file F] [--file_type pb|pbtxt]
           [--batch_size 8] [--lagrangex_header] [--has_sort_id] [--kafka_dump] [--kafka_dump_prefix]
           [--parallel_num 1] [--profile_duration 600] [--profile_data_dir DIR]

and so does this CLI's action spelling, whose first word is the action::

    client predict|status|meta|load|profile [--target H:P] [--model M] [--request_file F] [--spec S] ...

One parser holds every flag (both names of a flag are one flag) and an action ignores the flags it does not
use, as tfs_client does. Without an action word the call is tfs_client's: its defaults apply (``Defaults``:
batch size 8, one worker for 600 s, a 30 s deadline on a Predict and none on status, meta and load, metadata
fields base_path/num_versions/signature_name) and the response is printed as tfs_client prints it (protobuf text
format; profile's ``[Profile] Count: ...`` line). A ``--cmd_type`` other than status, meta, load and profile (its
default ``hb`` included) is a Predict, as in tfs_client.

This module is the command's entry point; the work is done by ``flags`` (the parser), ``settings`` (the flags
resolved), ``call_inputs`` (what is sent, read before connecting) and ``calls`` (the calls and their output).

Exit status: 0 on success; 1 when the server answered with an error or could not be reached (``error: CODE:
message`` on stderr), and for ``profile`` when any request failed; 2 for a usage error: a flag out of range
(argparse), a file named by a flag that cannot be read or parsed (``error: message`` naming the file), flags
that contradict each other; 130 on Ctrl-C. Flags and files are read before any connection is made, so a
usage error never waits for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import grpc

from monolith_serving.client.call_inputs import read_inputs
from monolith_serving.client.calls import ServerReportedError, call
from monolith_serving.client.flags import add_client_flags
from monolith_serving.client.settings import settings_from_args
from monolith_serving.core.errors import MonolithServingError
from monolith_serving.core.grpc_errors import status_code_for

EXIT_OK = 0
EXIT_SERVER_ERROR = 1
EXIT_USAGE = 2  # what argparse exits with, so a bad file and a bad flag look the same to a script
EXIT_INTERRUPTED = 130  # the shell's 128 + SIGINT


def configure(parser: argparse.ArgumentParser) -> None:
    add_client_flags(parser)


def run(args: argparse.Namespace) -> int:
    try:
        return _read_then_call(args)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, exit_status: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return exit_status


def _read_then_call(args: argparse.Namespace) -> int:
    try:
        settings = settings_from_args(args, os.environ)
        inputs = read_inputs(settings)
    except MonolithServingError as error:
        return _fail(error.message, EXIT_USAGE)
    try:
        asyncio.run(call(settings, inputs))
    except grpc.aio.AioRpcError as error:
        return _fail(f"{error.code().name}: {error.details()}", EXIT_SERVER_ERROR)
    except ServerReportedError as error:
        return _fail(error.message, EXIT_SERVER_ERROR)
    except MonolithServingError as error:
        # Raised while talking to the server (unreachable target, an output the codec cannot decode).
        return _fail(f"{status_code_for(error).name}: {error.message}", EXIT_SERVER_ERROR)
    return EXIT_OK
