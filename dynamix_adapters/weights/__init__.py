"""Named weight sets and how they resolve: local directory, Hugging Face cache, download.

``load_model(source)`` takes a registered name, a ``.safetensors`` path or an official
Julia ``.bson`` path. Loading never unpickles: safetensors holds raw tensors, and the
BSON reader builds arrays only. Loaded models are cached per process (thread-safe),
keyed by the resolved file and its modification time, and returned in eval mode with
gradients off; treat them as read-only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..model import Architecture, DynaMix
from .julia_checkpoint import MAX_FILE_BYTES, CheckpointError, load_julia_checkpoint

logger = logging.getLogger(__name__)

MODEL_DIR_ENV = "DYNAMIX_MODEL_DIR"
HF_REPO = "DurstewitzLab/dynamix"
PACKAGE_WEIGHTS_DIR = Path(__file__).resolve().parent / "bundled"
SAFETENSORS_FLOAT_DTYPES = ("F16", "F32", "F64")
MAX_EXPERTS = 4096


@dataclass(frozen=True)
class WeightSet:
    """A registered weight set: where it lives and its architecture."""

    name: str
    filename: str
    config_filename: str | None
    repo_id: str | None
    architecture: Architecture
    description: str


OFFICIAL_MODEL = "dynamix-3d-alrnn-v1.0"
BUNDLED_MODEL = "dynamix-3d-adapters-v0.6"
# Earlier bundled weights stay loadable by name, so a pinned forecast still reproduces.
PREVIOUS_BUNDLED_MODELS = ("dynamix-3d-adapters-v0.5", "dynamix-3d-adapters-v0.4", "dynamix-3d-adapters-v0.3")
REGISTRY: dict[str, WeightSet] = {
    OFFICIAL_MODEL: WeightSet(
        name=OFFICIAL_MODEL,
        filename=f"{OFFICIAL_MODEL}.safetensors",
        config_filename="config_3d-alrnn-v1.0.json",
        repo_id=HF_REPO,
        architecture=Architecture(M=30, N=3, J=10, P=2),
        description="Official pretrained DynaMix (Hemmer & Durstewitz, NeurIPS 2025), 3-D ALRNN experts.",
    ),
    **{
        name: WeightSet(
            name=name,
            filename=f"{name}.safetensors",
            config_filename=None,
            repo_id=None,
            architecture=Architecture(M=30, N=3, J=10, P=2),
            description=(
                "Trained from scratch by dynamix_adapters.training; shipped inside the package (no network)."
                + ("" if name == BUNDLED_MODEL else f" Superseded by {BUNDLED_MODEL}.")
            ),
        )
        for name in (BUNDLED_MODEL, *PREVIOUS_BUNDLED_MODELS)
    },
}
DEFAULT_MODEL = BUNDLED_MODEL

_cache: dict[tuple[str, int, int, int, str], DynaMix] = {}
_cache_lock = threading.Lock()


def known_models() -> list[str]:
    """Names accepted by :func:`load_model`."""
    return sorted(REGISTRY)


def load_model(source: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> DynaMix:
    """Load a DynaMix model from a registered name or a weights file.

    Parameters
    ----------
    source : str or path, optional
        A registered name (see :func:`known_models`), a ``.safetensors`` file or an
        official Julia ``.bson`` checkpoint. ``None`` means the default model.
    device : str or torch.device
        Where the parameters live.

    Examples
    --------
    >>> from dynamix_adapters import load_model
    >>> model = load_model("dynamix-3d-alrnn-v1.0")  # doctest: +SKIP
    >>> model.parameter_count()  # doctest: +SKIP
    10256
    """
    path, architecture = resolve(source)
    stat = path.stat()
    # mtime alone can miss a file rewritten within the filesystem's timestamp resolution.
    key = (str(path), stat.st_mtime_ns, stat.st_size, stat.st_ino, str(torch.device(device)))
    with _cache_lock:
        model = _cache.get(key)
        if model is None:
            model = _build(path, architecture).to(device)
            _cache[key] = model
    return model


def resolve(source: str | os.PathLike | None) -> tuple[Path, Architecture | None]:
    """Find the weights file for ``source``; returns the path and the architecture if known."""
    if source is None:
        source = DEFAULT_MODEL
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"model must be a registered name or a path, got {type(source).__name__}")
    text = os.fspath(source)
    if text in REGISTRY:
        return _resolve_registered(REGISTRY[text])
    path = Path(text).expanduser()
    if path.suffix in (".safetensors", ".bson"):
        if not path.is_file():
            raise FileNotFoundError(f"Weights file {path} does not exist.")
        return path, None
    raise ValueError(f"Unknown model {text!r}. Use one of {known_models()} or a path to a .safetensors or .bson file.")


def _resolve_registered(entry: WeightSet) -> tuple[Path, Architecture]:
    local_dir = os.environ.get(MODEL_DIR_ENV)
    if local_dir:
        candidate = Path(local_dir).expanduser() / entry.filename
        if candidate.is_file():
            return candidate, _architecture_from_config(candidate.parent / (entry.config_filename or ""), entry)
        logger.info("%s is set but %s is not in it; looking elsewhere", MODEL_DIR_ENV, entry.filename)
    if entry.repo_id is None:
        bundled = PACKAGE_WEIGHTS_DIR / entry.filename
        if bundled.is_file():
            return bundled, entry.architecture
        raise FileNotFoundError(f"Weights {entry.filename} for {entry.name!r} are missing from the package.")

    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(entry.repo_id, entry.filename)
    if isinstance(cached, str):
        config = huggingface_hub.try_to_load_from_cache(entry.repo_id, entry.config_filename)
        return Path(cached), _architecture_from_config(Path(config) if isinstance(config, str) else None, entry)
    try:
        weights = huggingface_hub.hf_hub_download(entry.repo_id, entry.filename)
        config = huggingface_hub.hf_hub_download(entry.repo_id, entry.config_filename)
    except Exception as err:
        raise FileNotFoundError(
            f"Could not find or download the weights for {entry.name!r} ({type(err).__name__}: {err}). "
            f"Either put {entry.filename} into a directory and set {MODEL_DIR_ENV} to it, "
            f"download it once with `huggingface-cli download {entry.repo_id} {entry.filename} "
            f"{entry.config_filename}` on a machine with network access, "
            f"or pass model=<path to a .safetensors or .bson file>."
        ) from None
    return Path(weights), _architecture_from_config(Path(config), entry)


def _architecture_from_config(path: Path | None, entry: WeightSet) -> Architecture:
    if path is None or not path.is_file():
        return entry.architecture
    try:
        config = json.loads(path.read_text())
        block = config.get("architecture", config)
        return Architecture(M=int(block["M"]), N=int(block["N"]), J=int(block["Experts"]), P=int(block["P"]))
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a DynaMix config with M, N, Experts and P ({err})") from None


def read_state_dict(path: Path) -> tuple[dict[str, np.ndarray], Architecture | None]:
    """Read raw arrays (and a declared architecture, if any) from a weights file."""
    if path.suffix == ".bson":
        state, arch = load_julia_checkpoint(path)
        try:
            return state, Architecture(**arch)
        except ValueError as err:
            raise CheckpointError(f"{path}: invalid architecture ({err})") from None
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CheckpointError(f"{path}: {size} bytes is far larger than any DynaMix checkpoint")
    try:
        with safe_open(path, framework="numpy") as handle:
            metadata = handle.metadata() or {}
            dtypes = {key: handle.get_slice(key).get_dtype() for key in handle.keys()}  # noqa: SIM118
            # numpy has no bfloat16 or float8: reading those would escape as TypeError or AttributeError.
            unsupported = sorted((key, dtype) for key, dtype in dtypes.items() if dtype not in SAFETENSORS_FLOAT_DTYPES)
            state = {} if unsupported else {key: handle.get_tensor(key) for key in dtypes}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from None
    if unsupported:
        key, dtype = unsupported[0]
        raise CheckpointError(f"{path}: checkpoint key {key!r} has dtype {dtype}, expected {SAFETENSORS_FLOAT_DTYPES}")
    declared = None
    if {"M", "N", "J", "P"} <= metadata.keys():
        try:
            declared = Architecture(**{k: int(metadata[k]) for k in "MNJP"})
        except ValueError as err:
            raise CheckpointError(f"{path}: invalid architecture metadata ({err})") from None
    return state, declared


def infer_architecture(state: dict[str, np.ndarray], p: int = 2) -> Architecture:
    """Sizes from tensor shapes. P is not visible in the shapes, so it is passed in."""
    try:
        n, m = state["gating_network.D"].shape
        j = state["gating_network.mlp_layer2.weight"].shape[0]
        return Architecture(M=int(m), N=int(n), J=int(j), P=p)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"cannot infer the architecture from the tensors ({err})") from None


def validate_state_dict(state: dict[str, np.ndarray], arch: Architecture) -> None:
    """Raise :class:`CheckpointError` naming the first key that does not fit ``arch``."""
    expected = expected_shapes(arch)
    missing = sorted(expected.keys() - state.keys())
    extra = sorted(state.keys() - expected.keys())
    if missing or extra:
        raise CheckpointError(f"checkpoint keys do not match {arch}: missing {missing[:5]}, unexpected {extra[:5]}")
    for key, shape in expected.items():
        value = state[key]
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f"checkpoint key {key!r} has dtype {value.dtype}, expected a float type")
        if tuple(value.shape) != shape:
            raise CheckpointError(f"checkpoint key {key!r} has shape {tuple(value.shape)}, expected {shape} for {arch}")
        if not np.all(np.isfinite(value)):
            raise CheckpointError(f"checkpoint key {key!r} holds NaN or inf")


def expected_shapes(arch: Architecture) -> dict[str, tuple[int, ...]]:
    """The official state-dict keys and their shapes for ``arch``, computed without building the model.

    A file may declare any architecture; building ``DynaMix(arch)`` just to compare
    shapes would allocate J * M * M numbers for whatever M the file claims.

    >>> expected_shapes(Architecture(M=8, N=3, J=2, P=1))["gating_network.mlp_layer1.weight"]
    (2, 11)
    """
    m, n, j = arch.M, arch.N, arch.J
    if j > MAX_EXPERTS:
        raise CheckpointError(f"{arch} declares {j} experts; no DynaMix checkpoint has more than {MAX_EXPERTS}")
    shapes: dict[str, tuple[int, ...]] = {}
    for expert in range(j):
        shapes |= {f"experts.{expert}.A": (m,), f"experts.{expert}.W": (m, m), f"experts.{expert}.h": (m,)}
    return shapes | {
        "gating_network.conv.weight": (n, n, 2),
        "gating_network.conv.bias": (n,),
        "gating_network.softmax_temp1": (1,),
        "gating_network.D": (n, m),
        "gating_network.mlp_layer1.weight": (j, n + m),
        "gating_network.mlp_layer1.bias": (j,),
        "gating_network.mlp_layer2.weight": (j, j),
        "gating_network.mlp_layer2.bias": (j,),
        "gating_network.softmax_temp2": (1,),
        "gating_network.sigma": (n,),
        "B": (n, m),
    }


def _build(path: Path, architecture: Architecture | None) -> DynaMix:
    state, declared = read_state_dict(path)
    arch = declared or architecture or infer_architecture(state)
    if declared and architecture and declared != architecture:
        raise CheckpointError(f"{path}: the file declares {declared} but its config says {architecture}")
    validate_state_dict(state, arch)
    model = DynaMix(arch)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, dtype=np.float32)) for k, v in state.items()}, strict=True)
    model.eval().requires_grad_(False)
    logger.info("loaded DynaMix %s from %s", arch, path)
    return model


def save_model(model: DynaMix, path: str | os.PathLike) -> Path:
    """Write ``model`` as safetensors in the official key layout, with its architecture as metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, path, metadata={k: str(v) for k, v in vars(model.arch).items()})
    return path


TINY_ARCHITECTURE = Architecture(M=8, N=3, J=2, P=1)
_tiny_checkpoints: dict[int, Path] = {}


def tiny_test_checkpoint(seed: int = 0) -> Path:
    """A tiny seeded random DynaMix saved as safetensors, for offline estimator checks.

    The file lies under the temp directory, named by a digest of its tensors, so processes
    running different code never overwrite each other's file; it is written atomically,
    so parallel processes never read half a file. Its forecasts are meaningless; it only
    lets ``model=<path>`` work without the official weights or a network.

    Examples
    --------
    >>> from dynamix_adapters.weights import load_model, tiny_test_checkpoint
    >>> load_model(tiny_test_checkpoint()).arch
    Architecture(M=8, N=3, J=2, P=1)
    """
    with _cache_lock:
        path = _tiny_checkpoints.get(seed)
        if path is None or not path.is_file():
            model = DynaMix(TINY_ARCHITECTURE)
            model.reset_parameters(torch.Generator().manual_seed(seed))
            digest = hashlib.blake2b(digest_size=8)
            for key, value in sorted(model.state_dict().items()):
                digest.update(key.encode() + value.numpy().tobytes())
            path = Path(tempfile.gettempdir()) / f"dynamix-tiny-test-seed{seed}-{digest.hexdigest()}.safetensors"
            if not path.is_file():
                with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".safetensors", delete=False) as handle:
                    partial = Path(handle.name)
                save_model(model, partial)
                os.replace(partial, path)
            _tiny_checkpoints[seed] = path
    return path


def describe_models() -> list[dict]:
    """For each registered weight set: where it would load from now, without touching the network."""
    rows = []
    for entry in REGISTRY.values():
        try:
            path = _locate_offline(entry)
        except ImportError:
            path = None
        location = (
            str(path) if path else f"download from huggingface.co/{entry.repo_id}" if entry.repo_id else "missing"
        )
        rows.append(
            {"name": entry.name, "available": path is not None, "location": location, "description": entry.description}
        )
    return rows


def _locate_offline(entry: WeightSet) -> Path | None:
    local_dir = os.environ.get(MODEL_DIR_ENV)
    if local_dir and (Path(local_dir).expanduser() / entry.filename).is_file():
        return Path(local_dir).expanduser() / entry.filename
    if entry.repo_id is None:
        bundled = PACKAGE_WEIGHTS_DIR / entry.filename
        return bundled if bundled.is_file() else None
    import huggingface_hub

    cached = huggingface_hub.try_to_load_from_cache(entry.repo_id, entry.filename)
    return Path(cached) if isinstance(cached, str) else None
