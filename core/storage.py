"""Study files on disk (a shared volume in production), addressed by content hash, never by filename."""
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

_KEY = re.compile(r"^(originals/[0-9a-f]{2}/[0-9a-f]{64}|derived/\d+/[a-z]+\.png)$")
# Pictures made from a study for people: the film view, a thumbnail, the lung crop, the model's heatmap.
DERIVED_KINDS = ("thumb", "view", "crop", "heatmap")
# The model's attention map, kept by the worker so the heatmap can be drawn later (studies/pictures.py).
ATTENTION = "attention"


class Storage:
    """Write-once files under one root; keys are generated here, so names from uploads never reach a path."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def put_original(self, data: bytes) -> tuple[str, str]:
        """Store an upload; returns (storage key, sha256). Identical content is stored once."""
        digest = hashlib.sha256(data).hexdigest()
        key = f"originals/{digest[:2]}/{digest}"
        if not self.path(key).exists():
            self._write(key, data)
        return key, digest

    def put_derived(self, study_id: int, kind: str, data: bytes) -> str:
        """Store a picture made from a study (one of DERIVED_KINDS)."""
        key = _derived_key(study_id, kind)
        self._write(key, data)
        return key

    def derived_path(self, study_id: int, kind: str) -> Path:
        return self.path(_derived_key(study_id, kind))

    def has_derived(self, study_id: int, kind: str) -> bool:
        return self.derived_path(study_id, kind).exists()

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def path(self, key: str) -> Path:
        if not _KEY.match(key):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / key

    def _write(self, key: str, data: bytes) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename: a reader on another host never sees half a file.
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as handle:
            handle.write(data)
        os.replace(handle.name, target)


def _derived_key(study_id: int, kind: str) -> str:
    if kind not in DERIVED_KINDS and kind != ATTENTION:
        raise ValueError(f"not a derived picture: {kind!r}")
    return f"derived/{int(study_id)}/{kind}.png"
