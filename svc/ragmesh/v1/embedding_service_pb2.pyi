from ragmesh.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EmbeddingPurpose(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EMBEDDING_PURPOSE_UNSPECIFIED: _ClassVar[EmbeddingPurpose]
    EMBEDDING_PURPOSE_QUERY: _ClassVar[EmbeddingPurpose]
    EMBEDDING_PURPOSE_DOCUMENT: _ClassVar[EmbeddingPurpose]
EMBEDDING_PURPOSE_UNSPECIFIED: EmbeddingPurpose
EMBEDDING_PURPOSE_QUERY: EmbeddingPurpose
EMBEDDING_PURPOSE_DOCUMENT: EmbeddingPurpose

class EmbedRequest(_message.Message):
    __slots__ = ("texts", "purpose")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    purpose: EmbeddingPurpose
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., purpose: _Optional[_Union[EmbeddingPurpose, str]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("embeddings", "model")
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    embeddings: _common_pb2.VectorBatch
    model: str
    def __init__(self, embeddings: _Optional[_Union[_common_pb2.VectorBatch, _Mapping]] = ..., model: _Optional[str] = ...) -> None: ...
