from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class MultiHashTableMetadata(_message.Message):
    __slots__ = ("table_name", "num_entries")
    TABLE_NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    table_name: str
    num_entries: int
    def __init__(self, table_name: _Optional[str] = ..., num_entries: _Optional[int] = ...) -> None: ...
