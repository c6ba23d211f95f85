from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class LineId(_message.Message):
    __slots__ = ("uid", "req_time", "item_id", "actions", "chnid", "sample_rate", "device_type", "user_id", "data_source_name")
    UID_FIELD_NUMBER: _ClassVar[int]
    REQ_TIME_FIELD_NUMBER: _ClassVar[int]
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    CHNID_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_TYPE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_SOURCE_NAME_FIELD_NUMBER: _ClassVar[int]
    uid: int
    req_time: int
    item_id: int
    actions: _containers.RepeatedScalarFieldContainer[int]
    chnid: int
    sample_rate: float
    device_type: str
    user_id: str
    data_source_name: str
    def __init__(self, uid: _Optional[int] = ..., req_time: _Optional[int] = ..., item_id: _Optional[int] = ..., actions: _Optional[_Iterable[int]] = ..., chnid: _Optional[int] = ..., sample_rate: _Optional[float] = ..., device_type: _Optional[str] = ..., user_id: _Optional[str] = ..., data_source_name: _Optional[str] = ...) -> None: ...
