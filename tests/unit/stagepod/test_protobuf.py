"""The protobuf ConfigMaps stage pods send and read: what is encoded decodes to the same data,
for any keys and bytes; what is not a ConfigMap is refused, never misread."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bakeline.checkpoints.configmap import ConfigMapData
from bakeline.stagepod.protobuf import (
    MAGIC,
    ProtobufError,
    _envelope,
    _field,
    _object,
    decode_configmap,
    decode_configmap_list,
    decode_status_message,
    encode_configmap,
)

keys = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=20)


@given(
    name=keys,
    labels=st.dictionaries(keys, keys, max_size=4),
    data=st.dictionaries(keys, st.text(max_size=50), max_size=4),
    binary=st.dictionaries(keys, st.binary(max_size=300), max_size=4),
)
def test_a_configmap_decodes_to_what_was_encoded(
    name: str, labels: dict[str, str], data: dict[str, str], binary: dict[str, bytes]
) -> None:
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u", "controller": True}
    body = encode_configmap(
        name=name,
        namespace="ns",
        labels=labels,
        owner_references=[owner],
        data=data,
        binary_data=binary,
        immutable=True,
    )
    assert decode_configmap(body) == ConfigMapData(name, labels, data, binary)


def test_a_large_chunk_and_a_list_of_configmaps() -> None:
    chunk = bytes(range(256)) * 3600  # 900 KiB: lengths need three varint bytes
    one = encode_configmap(
        name="a",
        namespace="ns",
        labels={"x": "1"},
        owner_references=[],
        data={},
        binary_data={"chunk": chunk},
        immutable=True,
    )
    assert decode_configmap(one).binary_data["chunk"] == chunk
    raw = bytes(_object(one, "ConfigMap"))
    listed = decode_configmap_list(_envelope("ConfigMapList", _field(2, raw) * 2))
    assert [item.binary_data["chunk"] for item in listed] == [chunk, chunk]


def test_what_is_not_a_configmap_is_refused() -> None:
    status = _envelope("Status", _field(3, b'configmaps "x" not found'))
    with pytest.raises(ProtobufError, match="expected a ConfigMap, the API server sent a Status"):
        decode_configmap(status)
    assert decode_status_message(status) == 'configmaps "x" not found'
    assert decode_status_message(b'{"kind": "Status", "message": "Unauthorized"}') == "Unauthorized"
    for garbled in (b"{}", MAGIC + b"\x0a\xff", MAGIC + b"\x0f"):
        with pytest.raises(ProtobufError):
            decode_configmap(garbled)
