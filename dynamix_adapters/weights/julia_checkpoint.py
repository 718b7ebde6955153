"""Read the official Julia (BSON.jl) DynaMix checkpoint without Julia.

The reader understands the plain BSON element types and builds only nested dicts,
lists, numbers, strings and numpy arrays. It never evaluates code or imports classes
named in the file, so an untrusted checkpoint can at worst raise
:class:`CheckpointError`.

BSON.jl stores a Julia struct as ``{"tag": "struct", "type": ..., "data": [fields]}``
and an array as ``{"tag": "array", "type": ..., "size": [...], "data": <bytes>}``
with the bytes in column-major order. The DynaMix struct's fields, in order, are
``A_MoE, W_MoE, h_MoE, gating_network, N, Experts, P``; the gating network's are
``conv, softmax_temp1, D, mlp_layer1, mlp_layer2, softmax_temp2, sigma``; the
identity observation model's are ``B, b, use_bias, L``.
"""

from __future__ import annotations

import itertools
import math
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MAX_DEPTH = 64
MAX_FILE_BYTES = 256 * 1024 * 1024
# The official checkpoint has under 800 elements; the cap bounds the Python objects a hostile file can make.
MAX_ELEMENTS = 100_000
JULIA_DTYPES = {"Float32": "<f4", "Float64": "<f8", "Int64": "<i8", "Int32": "<i4"}


class CheckpointError(ValueError):
    """A weights file is malformed or does not match the DynaMix layout."""


def read_bson(data: bytes) -> dict:
    """Parse one BSON document into plain Python values (binary stays ``bytes``)."""
    document, end = _read_document(bytes(data), 0, 0, itertools.count())
    if end != len(data):
        raise CheckpointError(f"BSON: {len(data) - end} trailing bytes after the document")
    return document


def _read_document(buf: bytes, pos: int, depth: int, elements: Iterator[int]) -> tuple[dict, int]:
    if depth > MAX_DEPTH:
        raise CheckpointError("BSON: documents nested too deeply")
    size = _unpack("<i", buf, pos)
    end = pos + size
    if size < 5 or end > len(buf):
        raise CheckpointError(f"BSON: document at byte {pos} declares {size} bytes, file has {len(buf) - pos}")
    if buf[end - 1] != 0:
        raise CheckpointError(f"BSON: document at byte {pos} is not terminated")
    pos += 4
    out: dict = {}
    while pos < end - 1:
        if next(elements) >= MAX_ELEMENTS:
            raise CheckpointError(f"BSON: more than {MAX_ELEMENTS} elements, far more than any DynaMix checkpoint")
        kind = buf[pos]
        key, pos = _read_cstring(buf, pos + 1, end)
        value, pos = _read_value(kind, buf, pos, end, depth, elements)
        out[key] = value
    if pos != end - 1:
        raise CheckpointError(f"BSON: element overruns its document at byte {pos}")
    return out, end


def _read_value(kind: int, buf: bytes, pos: int, end: int, depth: int, elements: Iterator[int]):
    if kind == 0x01:
        return _unpack("<d", buf, pos), pos + 8
    if kind == 0x02:
        length = _unpack("<i", buf, pos)
        stop = pos + 4 + length
        if length < 1 or stop > end or buf[stop - 1] != 0:
            raise CheckpointError(f"BSON: bad string length {length} at byte {pos}")
        return _decode(buf[pos + 4 : stop - 1]), stop
    if kind in (0x03, 0x04):
        document, stop = _read_document(buf, pos, depth + 1, elements)
        if stop > end:
            raise CheckpointError(f"BSON: nested document overruns its parent at byte {pos}")
        return (list(document.values()) if kind == 0x04 else document), stop
    if kind == 0x05:
        length = _unpack("<i", buf, pos)
        stop = pos + 5 + length
        if length < 0 or stop > end:
            raise CheckpointError(f"BSON: binary of {length} bytes at byte {pos} overruns the file")
        return buf[pos + 5 : stop], stop
    if kind == 0x08:
        if pos >= end:
            raise CheckpointError("BSON: truncated boolean")
        return bool(buf[pos]), pos + 1
    if kind == 0x0A:
        return None, pos
    if kind == 0x10:
        return _unpack("<i", buf, pos), pos + 4
    if kind == 0x12:
        return _unpack("<q", buf, pos), pos + 8
    raise CheckpointError(f"BSON: unsupported element type 0x{kind:02x} at byte {pos}")


def _read_cstring(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    stop = buf.find(0, pos, end)
    if stop < 0:
        raise CheckpointError(f"BSON: unterminated key at byte {pos}")
    return _decode(buf[pos:stop]), stop + 1


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CheckpointError(f"BSON: invalid UTF-8 text ({err})") from None


def _unpack(fmt: str, buf: bytes, pos: int):
    try:
        return struct.unpack_from(fmt, buf, pos)[0]
    except struct.error:
        raise CheckpointError(f"BSON: file truncated at byte {pos}") from None


def _array(node, name: str, ndim: int | None = None) -> np.ndarray:
    """An array node as float32; ``ndim`` where the reader itself indexes its shape."""
    if not isinstance(node, dict) or node.get("tag") != "array":
        raise CheckpointError(f"BSON checkpoint: field {name!r} is not an array")
    size = node.get("size")
    if not isinstance(size, list) or not all(type(n) is int and 0 <= n < 2**31 for n in size):  # bool is no size
        raise CheckpointError(f"BSON checkpoint: field {name!r} has an invalid size {size!r}")
    if ndim is not None and len(size) != ndim:
        raise CheckpointError(f"BSON checkpoint: field {name!r} has size {size}, expected {ndim} dims")
    type_name = _type_name(node.get("type"))
    if type_name not in JULIA_DTYPES:
        raise CheckpointError(f"BSON checkpoint: field {name!r} has unsupported element type {type_name!r}")
    dtype = np.dtype(JULIA_DTYPES[type_name])
    data = node.get("data")
    count = math.prod(size)  # exact: an int64 product of hostile sizes could wrap around
    if not isinstance(data, bytes) or len(data) != count * dtype.itemsize:
        raise CheckpointError(f"BSON checkpoint: field {name!r} holds the wrong number of bytes for size {size}")
    try:
        return np.frombuffer(data, dtype=dtype).reshape(size, order="F").astype(np.float32)
    except ValueError as err:  # e.g. an empty array whose other dims overflow numpy's size limit
        raise CheckpointError(f"BSON checkpoint: field {name!r} has an invalid size {size!r} ({err})") from None


def _type_name(node) -> str | None:
    if isinstance(node, dict) and isinstance(node.get("name"), list) and node["name"]:
        return str(node["name"][-1])
    return None


def _fields(node, name: str, count: int) -> list:
    if not isinstance(node, dict) or node.get("tag") != "struct" or not isinstance(node.get("data"), list):
        raise CheckpointError(f"BSON checkpoint: {name!r} is not a Julia struct")
    if len(node["data"]) < count:
        raise CheckpointError(f"BSON checkpoint: {name!r} has {len(node['data'])} fields, expected {count}")
    return node["data"]


def _array_list(node, name: str, ndim: int | None = None) -> list[np.ndarray]:
    if not isinstance(node, list) or not node:
        raise CheckpointError(f"BSON checkpoint: field {name!r} is not a list of arrays")
    return [_array(item, f"{name}[{j}]", ndim) for j, item in enumerate(node)]


def load_julia_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Convert an official BSON checkpoint into the official state dict.

    Returns ``(state_dict, architecture)`` where the state dict uses the official
    key layout (see :mod:`dynamix_adapters.model`) and ``architecture`` holds
    ``M, N, J, P``.

    >>> state, arch = load_julia_checkpoint("dynamix-3d-alrnn-v1.0.bson")  # doctest: +SKIP
    >>> arch  # doctest: +SKIP
    {'M': 30, 'N': 3, 'J': 10, 'P': 2}
    """
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path}: {size} bytes is far larger than any DynaMix checkpoint")
    root = read_bson(path.read_bytes())
    models = root.get("model")
    if not isinstance(models, list) or len(models) != 2:
        raise CheckpointError(f"{path}: expected a 'model' entry holding the DynaMix model and its observation model")
    a_list, w_list, h_list, gating, n_obs, n_experts, n_relu = _fields(models[0], "DynaMix", 7)[:7]
    conv, temp1, d_matrix, mlp1, mlp2, temp2, sigma = _fields(gating, "gating_network", 7)[:7]
    conv_fields = _fields(conv, "gating_network.conv", 3)
    l_matrix = _fields(models[1], "observation model", 4)[3]

    a_arrays = _array_list(a_list, "A_MoE", ndim=1)
    w_arrays = _array_list(w_list, "W_MoE")
    h_arrays = _array_list(h_list, "h_MoE")
    if not (len(a_arrays) == len(w_arrays) == len(h_arrays)):
        raise CheckpointError(f"{path}: expert lists A, W, h have different lengths")
    for value, name in ((n_obs, "N"), (n_experts, "Experts"), (n_relu, "P")):
        if type(value) is not int:
            raise CheckpointError(f"{path}: field {name!r} is not an integer")

    state: dict[str, np.ndarray] = {}
    for j, (a, w, h) in enumerate(zip(a_arrays, w_arrays, h_arrays, strict=True)):
        state[f"experts.{j}.A"] = a
        state[f"experts.{j}.W"] = w
        state[f"experts.{j}.h"] = h
    kernel = _array(conv_fields[1], "conv.weight")  # (k, in, out), a true convolution
    if kernel.ndim != 3:
        raise CheckpointError(f"{path}: conv.weight has {kernel.ndim} dims, expected 3")
    # Flux flips the kernel (true convolution); torch cross-correlates. Flip along k.
    state["gating_network.conv.weight"] = np.ascontiguousarray(kernel[::-1].transpose(2, 1, 0))
    state["gating_network.conv.bias"] = _array(conv_fields[2], "conv.bias")
    state["gating_network.softmax_temp1"] = _array(temp1, "softmax_temp1")
    state["gating_network.D"] = _array(d_matrix, "D")
    layer1 = _array(mlp1, "mlp_layer1", ndim=2)
    layer2 = _array(mlp2, "mlp_layer2", ndim=2)
    state["gating_network.mlp_layer1.weight"] = layer1
    state["gating_network.mlp_layer1.bias"] = np.zeros(layer1.shape[0], np.float32)
    state["gating_network.mlp_layer2.weight"] = layer2
    state["gating_network.mlp_layer2.bias"] = np.zeros(layer2.shape[0], np.float32)
    state["gating_network.softmax_temp2"] = _array(temp2, "softmax_temp2")
    state["gating_network.sigma"] = _array(sigma, "sigma")
    l_array = _array(l_matrix, "L")  # (M - N, N): z0[N:] = L x
    if l_array.ndim != 2 or l_array.shape[1] != n_obs:
        raise CheckpointError(f"{path}: observation model L has shape {l_array.shape}, expected (M - {n_obs}, {n_obs})")
    # D holds N * M numbers of the file, so it bounds the N x N identity built next.
    latent = n_obs + l_array.shape[0]
    d_shape = state["gating_network.D"].shape
    if n_obs < 1 or d_shape != (n_obs, latent):
        raise CheckpointError(f"{path}: D has shape {d_shape}, expected (N, M) = {(n_obs, latent)} from N and L")
    state["B"] = np.concatenate([np.eye(n_obs, dtype=np.float32), l_array.T], axis=1)
    architecture = {"M": int(a_arrays[0].shape[0]), "N": n_obs, "J": len(a_arrays), "P": n_relu}
    return state, architecture
