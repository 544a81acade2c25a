"""Content-addressed on-disk cache: tensors (safetensors) or JSON, keyed by the hash of what produced them.

An entry is `<kind>/<digest>.safetensors|.json` plus `<kind>/<digest>.key.json`, which records the key and the sha256 of
the payload. Both are written to a temp file and renamed into place, payload first, so a reader sees either no entry or
a complete one; two writers racing both rename complete files and the last rename wins. A payload whose sha256 or key
does not match its key file is reported, ignored and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """The one way diet writes a file: `write(tmp)` fills a temp file beside `path`, which is then renamed into place.

    A reader sees the old file or the complete new one, never a partial one. mkstemp creates 0600 files; the temp file
    gets the mode a plain `open(path, "w")` would (0666 less the umask) so that results and caches on shared storage
    are readable by the group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def temp_dir(beside: Path, suffix: str = ".tmp") -> Path:
    """A staging folder next to `beside` (to be renamed into place), traversable as a plain mkdir would make it."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=suffix, dir=beside.parent))
    os.chmod(staging, 0o777 & ~_umask())
    return staging


def share_tree(folder: Path) -> None:
    """Give every file and folder under `folder` the mode a plain write would (some writers, such as transformers'
    save_pretrained, create 0600 files through temp files of their own)."""
    mask = _umask()
    for root, dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # safetensors.torch imports torch (seconds): here, so the report and the sweep summary write files without it
    from safetensors.torch import save_file

    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(cpu, str(tmp), metadata=metadata))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Cache:
    def __init__(self, root: str | os.PathLike, kind: str):
        self.dir = Path(root) / kind

    def _paths(self, key: dict, suffix: str) -> tuple[Path, Path]:
        name = digest(key)
        return self.dir / f"{name}{suffix}", self.dir / f"{name}.key.json"

    def _load(self, key: dict, suffix: str, read):
        payload, keyfile = self._paths(key, suffix)
        if not keyfile.exists():
            return None
        try:
            record = json.loads(keyfile.read_text())
            if record.get("key") != json.loads(json.dumps(key, default=str)):
                raise ValueError("key file does not match the requested key")
            if file_sha256(payload) != record.get("sha256"):
                raise ValueError("payload sha256 does not match the key file")
            return read(payload)
        except Exception as err:  # a corrupt entry is never fatal: recompute it
            log.warning("cache entry %s is unusable (%s); recomputing", payload, err)
            return None

    def _store(self, key: dict, suffix: str, write) -> Path:
        payload, keyfile = self._paths(key, suffix)
        write(payload)
        atomic_write_json(keyfile, {"key": key, "sha256": file_sha256(payload)})
        return payload

    def load_tensors(self, key: dict) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file  # imports torch: see atomic_save_tensors

        return self._load(key, ".safetensors", load_file)

    def store_tensors(self, key: dict, tensors: dict[str, torch.Tensor]) -> Path:
        return self._store(key, ".safetensors", lambda p: atomic_save_tensors(p, tensors))

    def load_json(self, key: dict):
        return self._load(key, ".json", lambda p: json.loads(Path(p).read_text()))

    def store_json(self, key: dict, obj) -> Path:
        return self._store(key, ".json", lambda p: atomic_write_json(p, obj))
