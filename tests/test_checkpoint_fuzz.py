"""Untrusted checkpoints: the BSON reader and the safetensors path end in a model or a CheckpointError.

Every damaged file must load (if the damage is harmless, e.g. inside float data) or be
rejected with a CheckpointError, fast and without large allocations: never another
exception, a hang or a crash. scripts/fuzz_checkpoints.py runs the same targets for as
long as asked.
"""

from __future__ import annotations

import ast
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamix_adapters.weights import CheckpointError, expected_shapes, load_model, save_model
from dynamix_adapters.weights.fuzzing import (
    EXTREME_INT32,
    EXTREME_UINT64,
    JULIA_TYPE_NAMES,
    REMOVE,
    SAFETENSORS_DTYPES,
    architecture_metadata,
    encode_bson,
    julia_array,
    julia_document,
    load_untrusted,
    mutate_bytes,
    nodes,
    replace_at,
    safetensors_bytes,
    safetensors_parts,
)
from dynamix_adapters.weights.julia_checkpoint import MAX_ELEMENTS, MAX_FILE_BYTES, read_bson

from .conftest import make_tiny_model

PACKAGE = Path(__file__).resolve().parents[1] / "dynamix_adapters"
PEAK_BYTES_PER_LOAD = 16 * 2**20
# DYNAMIX_FUZZ_EXAMPLES raises the example count; scripts/fuzz_checkpoints.py fuzzes for a set time instead.
FUZZ = settings(
    max_examples=int(os.environ.get("DYNAMIX_FUZZ_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

TINY = make_tiny_model()
BSON = encode_bson(julia_document(TINY))
SAFETENSORS = safetensors_bytes(safetensors_parts(TINY), architecture_metadata(TINY))
DTYPE_BYTES = {"F16": 2, "F32": 4, "F64": 8, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1}


def check(outcome, allowed=("loaded", "rejected")):
    assert outcome.kind in allowed, outcome.message
    # No wall-clock bound here: on a loaded CI machine it goes red without a change (a 6 s rejection was seen);
    # scripts/fuzz_checkpoints.py reports load times, and the memory bound catches runaway allocations.
    assert outcome.peak_bytes < PEAK_BYTES_PER_LOAD, f"{outcome.peak_bytes} bytes: {outcome.message}"
    return outcome


def rejected(data: bytes, suffix: str, directory: Path, match: str):
    outcome = check(load_untrusted(data, suffix, directory, "case"), allowed=("rejected",))
    assert match in outcome.message, outcome.message
    return outcome


byte_operations = st.lists(
    st.one_of(
        st.tuples(st.just("truncate"), st.integers(0, 10**6)),
        st.tuples(st.just("set"), st.integers(0, 10**6), st.integers(0, 255)),
        st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
        st.tuples(st.just("int32"), st.integers(0, 10**6), st.sampled_from(EXTREME_INT32)),
        st.tuples(st.just("uint64"), st.integers(0, 10**6), st.sampled_from(EXTREME_UINT64)),
    ),
    min_size=1,
    max_size=4,
)

bson_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=8).filter(lambda text: "\0" not in text)
    | st.binary(max_size=16),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=6).filter(lambda key: "\0" not in key), children, max_size=4)
    ),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=6).filter(lambda key: "\0" not in key), bson_values, max_size=5))
def test_bson_reader_round_trips_what_the_encoder_writes(document):
    assert read_bson(encode_bson(document)) == document


def test_tiny_julia_checkpoint_loads_exactly(tmp_path):
    """The fuzz seed is a valid checkpoint, so damage to it exercises real parsing, not an early exit."""
    path = tmp_path / "tiny.bson"
    path.write_bytes(BSON)
    loaded = load_model(path)
    assert loaded.arch == TINY.arch
    for key, value in TINY.state_dict().items():
        np.testing.assert_array_equal(loaded.state_dict()[key].numpy(), value.numpy(), err_msg=key)


@FUZZ
@given(operations=byte_operations)
def test_damaged_bson_loads_or_is_rejected(tmp_path, operations):
    check(load_untrusted(mutate_bytes(BSON, operations), ".bson", tmp_path, "fuzz"))


@FUZZ
@given(operations=byte_operations)
def test_damaged_safetensors_loads_or_is_rejected(tmp_path, operations):
    check(load_untrusted(mutate_bytes(SAFETENSORS, operations), ".safetensors", tmp_path, "fuzz"))


DOCUMENT = julia_document(TINY)
PATHS = [path for path, _ in nodes(DOCUMENT) if path]
replacements = st.one_of(
    st.just(REMOVE),
    st.sampled_from([None, True, 0, -1, 2**31 - 1, 2**62, 1.5, "", "x", b"", b"\0" * 5, [], {}, [1], {"tag": "array"}]),
)


@FUZZ
@given(path=st.sampled_from(PATHS), value=replacements)
def test_bson_with_missing_or_retyped_fields_loads_or_is_rejected(tmp_path, path, value):
    check(load_untrusted(encode_bson(replace_at(DOCUMENT, path, value)), ".bson", tmp_path, "fuzz"))


ARRAY_PATHS = [path for path, node in nodes(DOCUMENT) if isinstance(node, dict) and node.get("tag") == "array"]


@FUZZ
@given(
    path=st.sampled_from(ARRAY_PATHS),
    size=st.lists(st.integers(0, 12), min_size=0, max_size=4),
    type_name=st.sampled_from(JULIA_TYPE_NAMES),
    consistent=st.booleans(),
)
def test_bson_arrays_with_wrong_shapes_or_dtypes_load_or_are_rejected(tmp_path, path, size, type_name, consistent):
    node = dict(julia_array(np.ones(size), type_name if type_name in ("Float32", "Float64") else "Float32"))
    node["type"] = {"tag": "datatype", "name": ["Core", type_name], "params": []}
    if not consistent:
        node["data"] = node["data"][:-1]
    check(load_untrusted(encode_bson(replace_at(DOCUMENT, path, node)), ".bson", tmp_path, "fuzz"))


@pytest.mark.parametrize("field", ["experts.1.W", "gating_network.D", "gating_network.mlp_layer1.weight"])
def test_bson_shape_that_does_not_fit_is_rejected_naming_it(tmp_path, field):
    locations = {
        "experts.1.W": ("model", 0, "data", 1, 1),
        "gating_network.D": ("model", 0, "data", 3, "data", 2),
        "gating_network.mlp_layer1.weight": ("model", 0, "data", 3, "data", 3),
    }
    wrong = replace_at(DOCUMENT, locations[field], julia_array(np.ones((3, 9))))
    outcome = check(load_untrusted(encode_bson(wrong), ".bson", tmp_path, "wrong"), allowed=("rejected",))
    assert field.split(".")[-1] in outcome.message or field in outcome.message, outcome.message


def test_every_truncation_of_bson_is_rejected(tmp_path):
    for length in range(0, len(BSON), 11):
        rejected(BSON[:length], ".bson", tmp_path, "BSON")


def test_every_truncation_of_safetensors_is_rejected(tmp_path):
    for length in range(0, len(SAFETENSORS), 11):
        rejected(SAFETENSORS[:length], ".safetensors", tmp_path, "safetensors")


@pytest.mark.parametrize(
    ("offset", "value", "match"),
    [
        (0, 2**31 - 1, "declares"),  # the root document's length
        (0, -5, "declares"),
        (None, 2**31 - 1, "overruns"),  # the first binary length: the bytes of the first array
        (None, -1, "overruns"),
    ],
)
def test_oversized_bson_length_fields_are_rejected(tmp_path, offset, value, match):
    if offset is None:
        offset = BSON.index(b"\x05data\x00") + len(b"\x05data\x00")
    rejected(mutate_bytes(BSON, [("int32", offset, value)]), ".bson", tmp_path, match)


def test_bson_dimension_without_data_cannot_force_a_huge_identity(tmp_path):
    """N = 2**31 - 1 with an empty L once reached np.eye(N): 2**64 bytes."""
    huge = 2**31 - 1
    document = replace_at(DOCUMENT, ("model", 0, "data", 4), huge)
    empty = julia_array(np.ones((0, 1)))
    empty["size"] = [0, huge]
    document = replace_at(document, ("model", 1, "data", 3), empty)
    rejected(encode_bson(document), ".bson", tmp_path, "D has shape")


@pytest.mark.parametrize(
    "size",
    [[True], [], [2**31 - 1, 0, 0, 2**31 - 1], [-1]],
    ids=["bool", "zero-dims", "empty-but-too-big", "negative"],
)
def test_bson_array_sizes_found_by_fuzzing_are_rejected(tmp_path, size):
    """A bool size once reached numpy as a TypeError, and an empty array too big for numpy as a bare ValueError."""
    node = julia_array(np.ones(1 if size else 0))
    node["size"] = size
    rejected(encode_bson(replace_at(DOCUMENT, ("model", 0, "data", 0, 0), node)), ".bson", tmp_path, "A_MoE[0]")


def test_bson_nesting_and_element_count_are_bounded(tmp_path):
    nested: dict = {"leaf": 1}
    for _ in range(200):
        nested = {"d": nested}
    rejected(encode_bson(nested), ".bson", tmp_path, "nested too deeply")
    rejected(encode_bson({"many": [None] * (MAX_ELEMENTS + 1)}), ".bson", tmp_path, "elements")


def test_bson_key_of_megabytes_is_scanned_fast(tmp_path):
    """A key ends only at the document's final zero byte; the scan for it must not be a Python loop."""
    body = b"\x0a" + b"k" * 2**22
    rejected(struct.pack("<i", len(body) + 5) + body + b"\0", ".bson", tmp_path, "overruns")


@pytest.mark.parametrize("suffix", [".bson", ".safetensors"])
def test_files_far_larger_than_a_checkpoint_are_rejected_unread(tmp_path, suffix):
    path = tmp_path / f"huge{suffix}"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(CheckpointError, match="far larger"):
        load_model(path)


def retyped(dtype: str, shape: list[int]) -> tuple[str, list[int], bytes]:
    count = int(np.prod(shape))
    if dtype == "F16":
        return dtype, shape, np.ones(count, "<f2").tobytes()
    if dtype == "F64":
        return dtype, shape, np.ones(count, "<f8").tobytes()
    return dtype, shape, bytes(count * DTYPE_BYTES.get(dtype, 4 if dtype in ("I32", "F32") else 8))


KEYS = sorted(TINY.state_dict())


@FUZZ
@given(key=st.sampled_from(KEYS), dtype=st.sampled_from(SAFETENSORS_DTYPES))
def test_safetensors_dtypes_other_than_float_are_rejected_naming_the_key(tmp_path, key, dtype):
    parts = safetensors_parts(TINY)
    if dtype in ("I8", "U8", "BOOL"):
        parts[key] = (dtype, parts[key][1], bytes(int(np.prod(parts[key][1]))))
    else:
        parts[key] = retyped(dtype, parts[key][1])
    outcome = check(
        load_untrusted(safetensors_bytes(parts, architecture_metadata(TINY)), ".safetensors", tmp_path, "t")
    )
    if dtype in ("F16", "F32", "F64"):
        assert outcome.kind == "loaded", outcome.message
    else:
        assert outcome.kind == "rejected" and key in outcome.message, outcome.message


@FUZZ
@given(key=st.sampled_from(KEYS), change=st.sampled_from(["grow", "drop_dim", "add_dim", "remove", "extra"]))
def test_safetensors_shape_and_key_errors_name_the_key(tmp_path, key, change):
    parts = safetensors_parts(TINY)
    shape = parts[key][1]
    named = key
    if change == "grow":
        parts[key] = retyped("F32", [shape[0] + 1, *shape[1:]])
    elif change == "drop_dim":
        parts[key] = retyped("F32", [int(np.prod(shape))])
        if len(shape) == 1:
            parts[key] = retyped("F32", [*shape, 1])
    elif change == "add_dim":
        parts[key] = retyped("F32", [1, *shape])
    elif change == "remove":
        del parts[key]
    else:
        named = "experts.7.A"
        parts[named] = retyped("F32", [8])
    outcome = check(
        load_untrusted(safetensors_bytes(parts, architecture_metadata(TINY)), ".safetensors", tmp_path, "s")
    )
    assert outcome.kind == "rejected" and named in outcome.message, outcome.message


@pytest.mark.parametrize(
    ("declared", "match"),
    [
        ({"M": "9"}, "experts.0.A"),  # the first key in order whose shape does not fit
        ({"J": "3"}, "experts.2.A"),  # a declared expert the file lacks
        ({"N": "2", "M": "8"}, "gating_network.conv.weight"),
        ({"M": "1000000000"}, "experts.0.A"),  # would allocate 8e18 bytes if the model were built first
        ({"J": "1000000000"}, "experts"),  # would build a billion modules
        ({"P": "99"}, "invalid architecture metadata"),
        ({"M": "eight"}, "invalid architecture metadata"),
    ],
)
def test_safetensors_that_contradict_their_declared_architecture_are_rejected(tmp_path, declared, match):
    metadata = architecture_metadata(TINY) | declared
    rejected(safetensors_bytes(safetensors_parts(TINY), metadata), ".safetensors", tmp_path, match)


def test_oversized_safetensors_header_length_is_rejected(tmp_path):
    for value in EXTREME_UINT64:
        rejected(mutate_bytes(SAFETENSORS, [("uint64", 0, value)]), ".safetensors", tmp_path, "safetensors")


def test_registered_weights_that_contradict_their_config_json_are_rejected(tmp_path, monkeypatch):
    """A file under DYNAMIX_MODEL_DIR is checked against the config json next to it, naming the key."""
    from dynamix_adapters.weights import OFFICIAL_MODEL, REGISTRY

    entry = REGISTRY[OFFICIAL_MODEL]
    monkeypatch.setenv("DYNAMIX_MODEL_DIR", str(tmp_path))
    (tmp_path / entry.filename).write_bytes(safetensors_bytes(safetensors_parts(TINY)))
    config = {"architecture": {"M": 8, "N": 3, "Experts": 3, "P": 1}}
    (tmp_path / entry.config_filename).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"experts\.2\.A"):
        load_model(OFFICIAL_MODEL)
    save_model(TINY, tmp_path / entry.filename)  # now the file declares M=8, J=2 itself
    with pytest.raises(CheckpointError, match=r"declares .* but its config says"):
        load_model(OFFICIAL_MODEL)


@pytest.mark.parametrize("arch", [dict(M=8, N=3, J=2, P=1), dict(M=30, N=3, J=10, P=2), dict(M=7, N=6, J=1, P=0)])
def test_expected_shapes_match_the_torch_module(arch):
    model = make_tiny_model(**arch)
    assert expected_shapes(model.arch) == {key: tuple(value.shape) for key, value in model.state_dict().items()}


def test_the_package_never_unpickles():
    """No pickle imports, torch.load only with weights_only=True, np.load never with allow_pickle=True."""
    for source in PACKAGE.rglob("*.py"):
        tree = ast.parse(source.read_text(), filename=str(source))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [alias.name for alias in node.names] + [getattr(node, "module", None) or ""]
                assert not any(name.split(".")[0] in ("pickle", "dill", "joblib") for name in modules), source
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                call = ast.unparse(node.func)
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                if call == "torch.load":
                    assert keywords.get("weights_only") == "True", f"{source}:{node.lineno}"
                if call == "np.load":
                    assert keywords.get("allow_pickle", "False") == "False", f"{source}:{node.lineno}"
