"""ConfigMaps in the API server's protobuf encoding (`application/vnd.kubernetes.protobuf`), for
the stage pods' checkpoint store (bakeline.stagepod.store).

Checkpoint bytes in JSON are base64 strings: a 900 KiB chunk is 1.2 MB of JSON that the API
server decodes and this process encodes, and the created object comes back the same way. In
protobuf `binaryData` values are raw bytes on the wire, as etcd stores them. Only what the store
sends and reads is encoded here, after the messages of k8s.io/api core/v1 and
k8s.io/apimachinery meta/v1 and runtime (field numbers from their generated.proto); fields it
does not know are skipped when decoding, as protobuf intends.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from bakeline.checkpoints.configmap import ConfigMapData

CONTENT_TYPE = "application/vnd.kubernetes.protobuf"
# Every protobuf object the API server sends or accepts: these four bytes, then a
# runtime.Unknown {typeMeta = 1 {apiVersion = 1, kind = 2}, raw = 2 (the object)}.
MAGIC = b"k8s\x00"
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class ProtobufError(ValueError):
    """Bytes that are not the protobuf object expected."""


# ------------------------------------------------------------------ encoding


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    return _varint(number << 3 | _BYTES) + _varint(len(data)) + data


def _map(number: int, entries: Mapping[str, bytes]) -> bytes:
    return b"".join(
        _field(number, _field(1, key.encode()) + _field(2, value))
        for key, value in sorted(entries.items())
    )


def _owner_reference(owner: Mapping[str, Any]) -> bytes:
    parts = [
        _field(1, str(owner.get("kind", "")).encode()),
        _field(3, str(owner.get("name", "")).encode()),
        _field(4, str(owner.get("uid", "")).encode()),
        _field(5, str(owner.get("apiVersion", "")).encode()),
    ]
    for number, key in ((6, "controller"), (7, "blockOwnerDeletion")):
        if key in owner:
            parts.append(_varint(number << 3 | _VARINT) + _varint(int(bool(owner[key]))))
    return b"".join(parts)


def encode_configmap(
    *,
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    owner_references: Sequence[Mapping[str, Any]],
    data: Mapping[str, str],
    binary_data: Mapping[str, bytes],
    immutable: bool,
) -> bytes:
    """A v1 ConfigMap as a request body."""
    meta = b"".join(
        [
            _field(1, name.encode()),
            _field(3, namespace.encode()),
            _map(11, {k: v.encode() for k, v in labels.items()}),
            *(_field(13, _owner_reference(owner)) for owner in owner_references),
        ]
    )
    configmap = b"".join(
        [
            _field(1, meta),
            _map(2, {k: v.encode() for k, v in data.items()}),
            _map(3, binary_data),
            _varint(4 << 3 | _VARINT) + _varint(int(immutable)),
        ]
    )
    return _envelope("ConfigMap", configmap)


def _envelope(kind: str, raw: bytes) -> bytes:
    return MAGIC + _field(1, _field(1, b"v1") + _field(2, kind.encode())) + _field(2, raw)


# ------------------------------------------------------------------ decoding


def _read_varint(buffer: memoryview, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(buffer) or shift > 63:
            raise ProtobufError("a varint runs past the end")
        byte = buffer[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def _fields(buffer: memoryview) -> Iterator[tuple[int, int | memoryview]]:
    """(field number, value) of one message: ints for varints, views for the rest."""
    at = 0
    while at < len(buffer):
        key, at = _read_varint(buffer, at)
        number, wire = key >> 3, key & 7
        value: int | memoryview
        if wire == _VARINT:
            value, at = _read_varint(buffer, at)
        elif wire in (_BYTES, _FIXED64, _FIXED32):
            if wire == _BYTES:
                length, at = _read_varint(buffer, at)
            else:
                length = 8 if wire == _FIXED64 else 4
            if at + length > len(buffer):
                raise ProtobufError(f"field {number} runs past the end")
            value, at = buffer[at : at + length], at + length
        else:
            raise ProtobufError(f"field {number} has wire type {wire}, which protobuf 3 never uses")
        yield number, value


def _view(value: int | memoryview) -> memoryview:
    if isinstance(value, int):
        raise ProtobufError("a length-delimited field was expected, a varint came")
    return value


def _entry(value: int | memoryview) -> tuple[str, memoryview]:
    key, item = "", memoryview(b"")
    for number, part in _fields(_view(value)):
        if number == 1:
            key = bytes(_view(part)).decode()
        elif number == 2:
            item = _view(part)
    return key, item


def _object(body: bytes, kind: str) -> memoryview:
    """The raw object of a runtime.Unknown envelope of this kind."""
    if not body.startswith(MAGIC):
        raise ProtobufError("not a Kubernetes protobuf object (no k8s magic)")
    found, raw = "", memoryview(b"")
    for number, value in _fields(memoryview(body)[len(MAGIC) :]):
        if number == 1:
            found = next((bytes(_view(v)).decode() for n, v in _fields(_view(value)) if n == 2), "")
        elif number == 2:
            raw = _view(value)
    if found != kind:
        raise ProtobufError(f"expected a {kind}, the API server sent a {found or 'nameless'}")
    return raw


def _configmap(raw: memoryview) -> ConfigMapData:
    name, labels = "", {}
    data: dict[str, str] = {}
    binary: dict[str, bytes] = {}
    for number, value in _fields(raw):
        if number == 1:
            for meta_number, meta_value in _fields(_view(value)):
                if meta_number == 1:
                    name = bytes(_view(meta_value)).decode()
                elif meta_number == 11:
                    key, item = _entry(meta_value)
                    labels[key] = bytes(item).decode()
        elif number == 2:
            key, item = _entry(value)
            data[key] = bytes(item).decode()
        elif number == 3:
            key, item = _entry(value)
            binary[key] = bytes(item)
    return ConfigMapData(name=name, labels=labels, data=data, binary_data=binary)


def decode_configmap(body: bytes) -> ConfigMapData:
    """A v1 ConfigMap from a response body."""
    return _configmap(_object(body, "ConfigMap"))


def decode_configmap_list(body: bytes) -> list[ConfigMapData]:
    """The items of a v1 ConfigMapList."""
    raw = _object(body, "ConfigMapList")
    return [_configmap(_view(value)) for number, value in _fields(raw) if number == 2]


def decode_status_message(body: bytes) -> str | None:
    """The message of a meta/v1 Status (the API server's error body), if it is one; some
    errors (a refused token) come as JSON whatever was asked for."""
    if not body.startswith(MAGIC):
        with contextlib.suppress(ValueError, AttributeError):
            return str(json.loads(body)["message"])
        return None
    with contextlib.suppress(ProtobufError, UnicodeDecodeError):
        for number, value in _fields(_object(body, "Status")):
            if number == 3:
                return bytes(_view(value)).decode(errors="replace")
    return None
