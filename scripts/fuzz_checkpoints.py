"""Fuzz the checkpoint loaders for a fixed time and report what happened.

    python scripts/fuzz_checkpoints.py [--seconds 600] [--seed 0] [--out outputs/fuzz]

Every execution takes a valid checkpoint (a tiny random model in the official Julia
BSON layout and as safetensors, plus the official files from ../shared when present),
damages it, and loads it with ``load_model``. Damage is byte-level (truncation, byte
flips, insertions, deletions, extreme int32/uint64 length fields) or structural
(removed, extra and retyped BSON fields, arrays with wrong sizes and element types,
safetensors headers with wrong dtypes, shapes, offsets, keys and architecture
metadata). An execution passes when the file loads or raises ``CheckpointError``
within ``--max-seconds`` and ``--max-peak-mib`` of traced allocations; anything else
is a crash, saved to ``--out`` for replay. Exit status 1 if there was one.

The bounded CI run of the same targets is tests/test_checkpoint_fuzz.py (hypothesis).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

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
from dynamix_adapters.weights.julia_checkpoint import read_bson
from tests.conftest import make_tiny_model

SHARED_MODELS = Path(os.environ.get("DYNAMIX_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "models"
ODD_VALUES = (None, True, 0, -1, 2**31 - 1, 2**62, 1.5, "", "x", b"", b"\0" * 5, [], {}, [1], {"tag": "array"})


def seeds() -> dict[str, bytes]:
    """Valid checkpoints to damage, by name (the suffix says the format)."""
    tiny = make_tiny_model()
    corpus = {
        "tiny.bson": encode_bson(julia_document(tiny)),
        "tiny.safetensors": safetensors_bytes(safetensors_parts(tiny), architecture_metadata(tiny)),
    }
    for name in ("dynamix-3d-alrnn-v1.0.bson", "dynamix-3d-alrnn-v1.0.safetensors"):
        if (SHARED_MODELS / name).is_file():
            corpus[f"official{Path(name).suffix}"] = (SHARED_MODELS / name).read_bytes()
    return corpus


def byte_damage(data: bytes, rng: random.Random) -> bytes:
    operations = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["truncate", "set", "insert", "delete", "int32", "uint64"])
        at = rng.randrange(len(data) + 1)
        argument = {
            "set": lambda: rng.randrange(256),
            "insert": lambda: rng.randbytes(rng.randint(1, 8)),
            "delete": lambda: rng.randint(1, 8),
            "int32": lambda: rng.choice(EXTREME_INT32),
            "uint64": lambda: rng.choice(EXTREME_UINT64),
        }.get(kind)
        operations.append((kind, at) if argument is None else (kind, at, argument()))
    return mutate_bytes(data, operations)


def bson_structure_damage(data: bytes, rng: random.Random) -> bytes:
    document = read_bson(data)
    for _ in range(rng.randint(1, 3)):
        path, node = rng.choice([entry for entry in nodes(document) if entry[0]])
        if isinstance(node, dict) and node.get("tag") == "array" and rng.random() < 0.6:
            size = [rng.choice([0, 1, 2, 3, 8, 30, 2**31 - 1]) for _ in range(rng.randint(0, 4))]
            type_name = rng.choice(JULIA_TYPE_NAMES)
            count = math.prod(size)
            value = julia_array(np.ones(count if count <= 10**5 else 1), "Float32")
            value["size"] = size
            value["type"] = {"tag": "datatype", "name": ["Core", type_name], "params": []}
        elif isinstance(node, (dict, list)) and rng.random() < 0.3:
            value = {**node, "extra": rng.choice(ODD_VALUES)} if isinstance(node, dict) else [*node, node[:1]]
        else:
            value = rng.choice([REMOVE, *ODD_VALUES])
        document = replace_at(document, path, value)
    return encode_bson(document)


def safetensors_structure_damage(data: bytes, rng: random.Random) -> bytes:
    length = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + length])
    payload = data[8 + length :]
    metadata = header.pop("__metadata__", None)
    tensors = {
        key: (entry["dtype"], entry["shape"], payload[slice(*entry["data_offsets"])]) for key, entry in header.items()
    }
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(sorted(tensors))
        dtype, shape, raw = tensors[key]
        choice = rng.randrange(6)
        if choice == 0:
            tensors[key] = (rng.choice(SAFETENSORS_DTYPES), shape, raw)
        elif choice == 1:
            tensors[key] = (dtype, [rng.choice([0, 1, 2, 3, 8, 30, 2**40]) for _ in range(rng.randint(0, 3))], raw)
        elif choice == 2:
            del tensors[key]
        elif choice == 3:
            tensors[f"{key}.extra"] = (dtype, shape, raw)
        elif choice == 4:
            metadata = dict(metadata or {})
            metadata[rng.choice("MNJP")] = rng.choice(["0", "-1", "2", "9", "30", "1000000000", "x", "1e3", ""])
        else:
            tensors[key] = (dtype, shape, raw[: rng.randrange(len(raw) + 1)])
    if metadata is not None and rng.random() < 0.1:
        metadata = None
    return safetensors_bytes(tensors, metadata)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to fuzz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/fuzz"), help="where crashing inputs go")
    parser.add_argument("--max-seconds", type=float, default=2.0, help="slower loads count as hangs")
    parser.add_argument("--max-peak-mib", type=float, default=64.0, help="larger traced peaks count as crashes")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    corpus = seeds()
    damages = {
        ".bson": (byte_damage, bson_structure_damage),
        ".safetensors": (byte_damage, safetensors_structure_damage),
    }
    outcomes: collections.Counter = collections.Counter()
    crashes: list[tuple[str, str]] = []
    slowest = 0.0
    peak = 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch, tqdm(total=int(args.seconds), unit="s") as progress:
        executions = 0
        while (elapsed := time.monotonic() - start) < args.seconds:
            name = rng.choice(sorted(corpus))
            suffix = Path(name).suffix
            damage = rng.choice(damages[suffix])
            data = damage(corpus[name], rng)
            outcome = load_untrusted(data, suffix, Path(scratch), f"x{executions}")
            if outcome.seconds > args.max_seconds:  # a busy machine stalls a load now and then: time it again
                outcome = load_untrusted(data, suffix, Path(scratch), f"x{executions}")
            executions += 1
            slowest, peak = max(slowest, outcome.seconds), max(peak, outcome.peak_bytes)
            kind = outcome.kind
            if kind != "crashed" and outcome.seconds > args.max_seconds:
                kind = "crashed"
            if kind != "crashed" and outcome.peak_bytes > args.max_peak_mib * 2**20:
                kind = "crashed"
            outcomes[(name, damage.__name__, kind)] += 1
            if kind == "crashed":
                args.out.mkdir(parents=True, exist_ok=True)
                saved = args.out / f"crash-{executions}{suffix}"
                saved.write_bytes(data)
                crashes.append(
                    (str(saved), f"{outcome.message[:200]} ({outcome.seconds:.2f} s, {outcome.peak_bytes} B)")
                )
            progress.update(int(elapsed) - progress.n)
    report = {
        "executions": executions,
        "seconds": round(time.monotonic() - start, 1),
        "executions_per_second": round(executions / max(time.monotonic() - start, 1e-9), 1),
        "slowest_load_seconds": round(slowest, 4),
        "largest_traced_peak_bytes": peak,
        "outcomes": {" / ".join(key): count for key, count in sorted(outcomes.items())},
        "crashes": crashes,
    }
    print(json.dumps(report, indent=2))
    return 1 if crashes else 0


if __name__ == "__main__":
    sys.exit(main())
