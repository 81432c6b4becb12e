"""Small shared helpers: seeding, devices, environment records, atomic files, memory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import random
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from .errors import UnlearnkitError

DEVICES = ("auto", "cpu", "cuda", "mps")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    name = str(device)
    if name.split(":")[0] not in DEVICES[1:]:
        raise UnlearnkitError(f"Unknown device {name!r}; allowed: {', '.join(DEVICES)} (or cuda:N).")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UnlearnkitError(f"Device {name!r} was requested but CUDA is not available here; use 'cpu' or 'auto'.")
    return torch.device(name)


def model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def package_version() -> str:
    from . import __version__

    return __version__


def environment_info() -> dict[str, Any]:
    """Versions and hardware, recorded with every result."""
    info: dict[str, Any] = {
        "unlearnkit": package_version(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    try:
        import sklearn

        info["scikit-learn"] = sklearn.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never half."""
    from . import distributed

    if not distributed.is_main_process():  # several processes: rank 0 writes, the others wait for it
        distributed.barrier()
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    distributed.barrier()


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def stable_hash(obj: Any, length: int = 16) -> str:
    """Content hash of a JSON-able object (sorted keys), for cache keys and fingerprints."""
    blob = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def state_dict_hash(model_or_state: torch.nn.Module | dict, length: int = 16) -> str:
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):  # non-Linux: fall back to the peak so far
        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class PeakMemory:
    """Peak memory during a block: CPU resident set size (sampled) and CUDA max allocated.

    ``cpu_mb`` is the peak RSS of the whole process while the block ran, sampled
    every 10 ms, so it includes the model and data already in memory.
    """

    def __init__(self, device: torch.device | None = None, interval: float = 0.01):
        self.device = device
        self.interval = interval
        self.cpu_bytes = 0
        self.cuda_bytes = 0
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.cpu_bytes = max(self.cpu_bytes, _rss_bytes())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.cpu_bytes = _rss_bytes()
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.cpu_bytes = max(self.cpu_bytes, _rss_bytes())
        if self.device is not None and self.device.type == "cuda":
            self.cuda_bytes = torch.cuda.max_memory_allocated(self.device)

    @property
    def cpu_mb(self) -> float:
        return self.cpu_bytes / 2**20

    @property
    def cuda_mb(self) -> float:
        return self.cuda_bytes / 2**20


@contextlib.contextmanager
def timer() -> Iterator[dict]:
    out = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - start


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
