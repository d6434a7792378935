"""Reading an ONNX file we are willing to run: hash-checked, opset read without `onnx`.

The bytes are read once, hashed, and those same bytes go to ONNX Runtime, so the file
cannot change between the check and the load. The opset is read from the ModelProto's
`opset_import` field with a few lines of protobuf wire-format walking: `onnx` is a test
and training dependency only, and ONNX Runtime does not report a model's opset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from plcbridge.inference.errors import ModelError

_OPSET_IMPORT = 8  # ModelProto.opset_import: repeated OperatorSetIdProto {1: domain, 2: version}
_DEFAULT_DOMAINS = ("", "ai.onnx")


def read_verified(path: Path, sha256: str, where: str) -> bytes:
    """Return the file's bytes if their sha256 is `sha256`, else ModelError naming both."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelError(f"{where}: cannot read model file {path}: {e.strerror or e}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise ModelError(
            f"{where}: sha256 mismatch for {path.name}: manifest says {sha256}, file is {actual} "
            "(wrong file, or the manifest was not updated after retraining)"
        )
    return data


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for one protobuf message; LEN values as bytes."""
    pos = 0
    value: int | bytes
    while pos < len(data):
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            value, pos = data[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated message")
        yield field, wire, value


def default_opset(data: bytes) -> int | None:
    """The model's opset for the default ONNX domain, or None if it declares none."""
    for field, wire, value in _fields(data):
        if field == _OPSET_IMPORT and wire == 2 and isinstance(value, bytes):  # LEN: always bytes
            domain, version = "", None
            for f, w, v in _fields(value):
                if f == 1 and w == 2 and isinstance(v, bytes):
                    domain = v.decode("utf-8", "replace")
                elif f == 2 and w == 0 and isinstance(v, int):  # VARINT: always int
                    version = v
            if domain in _DEFAULT_DOMAINS:
                return version
    return None


# Where tensors may keep their data in a file beside the graph (field numbers of onnx.proto3):
# ModelProto.graph 7; GraphProto.node 1, .initializer 5, .sparse_initializer 15; NodeProto.attribute
# 5; AttributeProto.t 5, .g 6, .tensors 10, .graphs 11, .sparse_tensor 22, .sparse_tensors 23;
# SparseTensorProto.values 1, .indices 2; TensorProto.external_data 13 (StringStringEntryProto
# {1: key, 2: value}), the entry whose key is "location" names the file.
_MODEL_GRAPH = 7
_GRAPH_TENSORS, _GRAPH_SPARSE, _GRAPH_NODES = 5, 15, 1
_NODE_ATTRIBUTE = 5
_ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE = (5, 10), (6, 11), (22, 23)
_TENSOR_EXTERNAL_DATA = 13


def _tensor_location(tensor: bytes) -> str | None:
    for field, wire, value in _fields(tensor):
        if field == _TENSOR_EXTERNAL_DATA and wire == 2 and isinstance(value, bytes):
            entry = {f: v for f, w, v in _fields(value) if w == 2 and isinstance(v, bytes)}
            if entry.get(1) == b"location" and 2 in entry:
                return entry[2].decode("utf-8", "replace")
    return None


def _graph_locations(graph: bytes, found: dict[str, None], depth: int = 0) -> None:
    if depth > 32:  # a subgraph nested this deep is a malformed file, not a model
        raise ValueError("subgraphs nested too deeply")
    for field, wire, value in _fields(graph):
        if wire != 2 or not isinstance(value, bytes):
            continue
        if field == _GRAPH_TENSORS:
            tensors = [value]
        elif field == _GRAPH_SPARSE:
            tensors = [v for f, w, v in _fields(value) if f in (1, 2) and w == 2 and isinstance(v, bytes)]
        elif field == _GRAPH_NODES:
            tensors = []
            for f, w, attr in _fields(value):
                if f != _NODE_ATTRIBUTE or w != 2 or not isinstance(attr, bytes):
                    continue
                for af, aw, av in _fields(attr):
                    if aw != 2 or not isinstance(av, bytes):
                        continue
                    if af in _ATTR_TENSORS:
                        tensors.append(av)
                    elif af in _ATTR_SPARSE:
                        tensors += [v for sf, sw, v in _fields(av) if sf in (1, 2) and sw == 2 and isinstance(v, bytes)]
                    elif af in _ATTR_GRAPHS:
                        _graph_locations(av, found, depth + 1)
        else:
            continue
        for tensor in tensors:
            location = _tensor_location(tensor)
            if location is not None:
                found.setdefault(location)


def external_data_files(data: bytes) -> list[str]:
    """The files the model keeps tensor data in (external data `location`s, relative to the
    .onnx file's directory, as written), each once, in the order the graph first names them;
    empty for a self-contained model. ValueError for bytes that are not a readable ModelProto."""
    found: dict[str, None] = {}
    for field, wire, value in _fields(data):
        if field == _MODEL_GRAPH and wire == 2 and isinstance(value, bytes):
            _graph_locations(value, found)
    return list(found)
