"""One rule says whether a file is text: a request file that looks like text is parsed only as text, and a data file
that looks like text, read as binary, gets the hint to add ``--file_type pbtxt``. The two must agree on every file,
including text with a form feed, text whose first 4096 bytes end inside a multi-byte character, and a DEL byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from monolith_serving.client.call_inputs import read_request_file
from monolith_serving.client.tfs_client_files import RecordHeader, read_example_batch
from monolith_serving.core.errors import InvalidArgumentError

TEXT_HINT = "looks like text: add --file_type pbtxt"
TEXT_ERROR = "not a text-format PredictRequest"


def read_as_text_request(path: Path) -> bool:
    """Whether ``read_request_file`` took the file for text (it then reports a text-format error)."""
    try:
        read_request_file(path)
    except InvalidArgumentError as error:
        return TEXT_ERROR in error.message
    return False  # parsed as a binary request


def hinted_as_text(path: Path) -> bool:
    """Whether reading the file as a binary data file hints that it is text."""
    with pytest.raises(InvalidArgumentError) as raised:
        read_example_batch(path, "pb", RecordHeader())
    return TEXT_HINT in raised.value.message


@pytest.mark.parametrize(
    ("data", "is_text"),
    [
        (b"batch_size: 3\n", True),
        (b"batch_size:\f3\n", True),  # a form feed is whitespace to protobuf's text format
        (("# " + "x" * 4093 + "é\nbatch_size: 3\n").encode(), True),  # byte 4096 is inside the "é"
        (b"batch_size: 3\x7f\n", False),  # DEL is no text
        (b"\x08\x01\x12\x00\x00\x00\x00\x00\x00\x00", False),
    ],
    ids=["plain", "form feed", "multi-byte at 4096", "DEL", "binary"],
)
def test_request_files_and_data_files_take_the_same_files_for_text(tmp_path: Path, data: bytes, is_text: bool) -> None:
    path = tmp_path / "file"
    path.write_bytes(data)
    assert read_as_text_request(path) is is_text
    assert hinted_as_text(path) is is_text
