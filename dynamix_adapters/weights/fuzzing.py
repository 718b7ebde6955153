"""Checkpoint fuzzing toolkit, shared by tests/test_checkpoint_fuzz.py and scripts/fuzz_checkpoints.py.

In the package (not in tests/) so that the developer script imports it without reaching into the tests.

It writes valid tiny checkpoints in both formats (a BSON file in the official Julia
layout, and safetensors), and damages them: byte-level mutations (truncation, flips,
insertions, deletions, extreme length fields) and structural ones (missing, extra and
retyped fields, wrong shapes and dtypes, lying metadata). ``load_untrusted`` is the
fuzz target: the real loader, on a fresh path, classifying the outcome.
"""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import weights
from ..model import DynaMix
from . import CheckpointError, load_model

# Length-like values that break readers: zero, off by one, negative, the int32 limits, huge.
EXTREME_INT32 = (0, 1, 4, 5, -1, -5, 2**31 - 1, -(2**31), 2**24, 2**30)
EXTREME_UINT64 = (0, 1, 7, 8, 2**31, 2**32 + 8, 2**62, 2**64 - 1)
SAFETENSORS_DTYPES = ("F16", "F32", "F64", "BF16", "F8_E4M3", "F8_E5M2", "I8", "I32", "I64", "U8", "BOOL", "C64")
JULIA_TYPE_NAMES = ("Float32", "Float64", "Float16", "Int64", "Int32", "Bool", "String", "Any")


def encode_bson(document: dict) -> bytes:
    """Encode nested dicts, lists, numbers, strings, bytes, bools and None as BSON."""
    body = b"".join(_element(str(key), value) for key, value in document.items())
    return struct.pack("<i", len(body) + 5) + body + b"\0"


def _element(key: str, value) -> bytes:
    name = key.encode() + b"\0"
    if value is None:
        return b"\x0a" + name
    if isinstance(value, bool):
        return b"\x08" + name + bytes([value])
    if isinstance(value, int):
        return b"\x12" + name + struct.pack("<q", value)
    if isinstance(value, float):
        return b"\x01" + name + struct.pack("<d", value)
    if isinstance(value, str):
        text = value.encode() + b"\0"
        return b"\x02" + name + struct.pack("<i", len(text)) + text
    if isinstance(value, bytes):
        return b"\x05" + name + struct.pack("<i", len(value)) + b"\0" + value
    if isinstance(value, list):
        return b"\x04" + name + encode_bson({str(i): item for i, item in enumerate(value)})
    if isinstance(value, dict):
        return b"\x03" + name + encode_bson(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


def julia_array(values: np.ndarray, type_name: str = "Float32") -> dict:
    """An array node as BSON.jl writes it: column-major bytes plus its size."""
    dtype = {"Float32": "<f4", "Float64": "<f8"}.get(type_name, "<f4")
    return {
        "tag": "array",
        "type": {"tag": "datatype", "name": ["Core", type_name], "params": []},
        "size": list(values.shape),
        "data": np.asarray(values, dtype=dtype).tobytes(order="F"),
    }


def _julia_struct(name: list[str], fields: list) -> dict:
    return {"tag": "struct", "type": {"tag": "datatype", "name": name, "params": []}, "data": fields}


def julia_document(model: DynaMix) -> dict:
    """``model`` in the official Julia checkpoint layout (see dynamix_adapters.weights.julia_checkpoint)."""
    state = {key: value.detach().numpy() for key, value in model.state_dict().items()}
    arch = model.arch
    experts = range(arch.J)
    gating = "gating_network."
    # Flux convolves (flipped kernel, stored (k, in, out)); torch cross-correlates with (out, in, k).
    kernel = np.ascontiguousarray(state[gating + "conv.weight"].transpose(2, 1, 0)[::-1])
    activation = _julia_struct(["Main", "Base", "#identity"], [])
    bias = julia_array(state[gating + "conv.bias"])
    conv = _julia_struct(["Flux", "Conv"], [activation, julia_array(kernel), bias, [1], [0, 0], [1], 1])
    gating_fields = [
        conv,
        *(
            julia_array(state[gating + name])
            for name in ("softmax_temp1", "D", "mlp_layer1.weight", "mlp_layer2.weight", "softmax_temp2", "sigma")
        ),
    ]
    dynamix = _julia_struct(
        ["DSR", "Model", "DynaMix"],
        [
            [julia_array(state[f"experts.{j}.A"]) for j in experts],
            [julia_array(state[f"experts.{j}.W"]) for j in experts],
            [julia_array(state[f"experts.{j}.h"]) for j in experts],
            _julia_struct(["DSR", "GatingNetwork"], gating_fields),
            arch.N,
            arch.J,
            arch.P,
        ],
    )
    read_in = state["B"]
    observation = _julia_struct(
        ["DSR", "ObservationModels", "Identity"],
        [julia_array(read_in), julia_array(np.zeros(arch.N)), False, julia_array(read_in[:, arch.N :].T)],
    )
    return {"model": [dynamix, observation], "_backrefs": []}


def safetensors_bytes(tensors: dict[str, tuple[str, list[int], bytes]], metadata: dict | None = None) -> bytes:
    """A safetensors file from (dtype, shape, raw bytes) per key, consistent or not as given."""
    header, chunks, offset = {}, [], 0
    for key, (dtype, shape, raw) in tensors.items():
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def safetensors_parts(model: DynaMix) -> dict[str, tuple[str, list[int], bytes]]:
    return {
        key: ("F32", list(value.shape), value.detach().numpy().astype("<f4").tobytes())
        for key, value in model.state_dict().items()
    }


def architecture_metadata(model: DynaMix) -> dict[str, str]:
    return {name: str(value) for name, value in vars(model.arch).items()}


def mutate_bytes(data: bytes, operations: list[tuple]) -> bytes:
    """Apply byte-level operations: ("truncate", at), ("set", at, byte), ("insert", at, bytes),
    ("delete", at, count), ("int32", at, value), ("uint64", at, value); positions wrap around."""
    out = bytearray(data)
    for operation in operations:
        kind, at = operation[0], operation[1] % max(len(out), 1)
        if kind == "truncate":
            del out[at:]
        elif kind == "set" and out:
            out[at] = operation[2]
        elif kind == "insert":
            out[at:at] = operation[2]
        elif kind == "delete":
            del out[at : at + operation[2]]
        elif kind == "int32":
            out[at : at + 4] = struct.pack("<i", operation[2])
        elif kind == "uint64":
            out[at : at + 8] = struct.pack("<Q", operation[2])
    return bytes(out)


def nodes(tree, path: tuple = ()):
    """Every (path, value) in a nested dict/list tree, parents before children."""
    yield path, tree
    items = tree.items() if isinstance(tree, dict) else enumerate(tree) if isinstance(tree, list) else ()
    for key, value in items:
        yield from nodes(value, (*path, key))


def replace_at(tree, path: tuple, value):
    """A copy of ``tree`` with the node at ``path`` replaced (or removed, when value is REMOVE)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(tree) if isinstance(tree, dict) else list(tree)
    if rest:
        copy[head] = replace_at(tree[head], rest, value)
    elif value is REMOVE:
        del copy[head]
    else:
        copy[head] = value
    return copy


REMOVE = object()


@dataclass(frozen=True)
class Outcome:
    """What loading one fuzzed file did."""

    kind: str  # "loaded", "rejected" (CheckpointError) or "crashed" (anything else)
    message: str
    seconds: float
    peak_bytes: int


def load_untrusted(data: bytes, suffix: str, directory: Path, name: str) -> Outcome:
    """Write ``data`` to a fresh file and load it with ``load_model``, timing and tracing allocations."""
    path = directory / f"{name}{suffix}"
    path.write_bytes(data)
    tracemalloc.start()
    start = time.perf_counter()
    try:
        model = load_model(path)
        kind, message = "loaded", f"{model.arch}"
    except CheckpointError as err:
        kind, message = "rejected", str(err)
    except Exception as err:  # the fuzz target reports whatever escapes instead of stopping
        kind, message = "crashed", f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    path.unlink()
    # Each fuzzed file is loaded once; the per-process cache would otherwise grow over a long run.
    with weights._cache_lock:
        for key in [key for key in weights._cache if key[0] == str(path)]:
            del weights._cache[key]
    return Outcome(kind, message, seconds, peak)
