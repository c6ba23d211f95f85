"""Whether a file the client reads is text: the one rule for every file that may be text or binary.

A request file that looks like text is parsed only as text, and a data file that looks like text gets the hint to
read it as text (``--file_type pbtxt``), so both must draw the line in the same place.
"""

from __future__ import annotations

# Whitespace is the only control character a text-format file holds (protobuf's tokenizer skips all of these),
# while a binary message always has others: a TensorProto starts with its dtype tag, 0x08; short lengths are bytes
# below 0x20.
_TEXT_CONTROLS = frozenset("\t\n\r\f\v")


def decoded_if_text(data: bytes) -> str | None:
    """``data`` decoded when it looks like a text file (UTF-8 without control characters but whitespace), else
    None. The whole of ``data`` is judged: a prefix could end inside a multi-byte character."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any((char < " " and char not in _TEXT_CONTROLS) or char == "\x7f" for char in text):
        return None
    return text
