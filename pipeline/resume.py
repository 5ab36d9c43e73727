"""The resume cache: the outputs of the stages a run completed, kept on the output store so
that a rerun can skip them. (The stages themselves are the modules of :mod:`pipeline`; this
only remembers which of them finished, and what they wrote.)

A run that dies half-way (the scheduler killed, the laptop closed) loses its cluster memory,
but not what it wrote here. Rerunning the same job on the same data finds the stages that
completed (each with its own manifest, written last, every file's sha256 checked on read) and
skips them; boosting checkpoints live here too, so a retrain resumes near where it stopped.

Layout: ``<output>/stages/<key>/<stage>/{files..., manifest.json}`` where ``key`` hashes the
job (without its cluster settings) and the input data's fingerprint. A successful run removes
its stage directory once its bundle is published.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.artifacts import atomic_write, filesystem, is_local, join, sha256, utcnow

logger = logging.getLogger("pipeline")

MANIFEST = "manifest.json"


def stage_key(job: Any, data_fingerprint: str) -> str:
    """What a stage's outputs depend on: the job (not where it runs) and the input files."""
    doc = job.model_dump(mode="json", by_alias=True, exclude={"cluster", "dask", "source"})
    text = json.dumps({"job": doc, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class StageStore:
    """The completed stages of one (job, data) pair under ``<root>/stages/<key>``."""

    root: str
    key: str
    storage_options: Mapping[str, Any] | None = None

    @property
    def url(self) -> str:
        return join(self.root, "stages", self.key)

    def _fs(self) -> tuple[Any, str]:
        return filesystem(self.url, self.storage_options)

    def get(self, stage: str) -> dict[str, bytes] | None:
        """The files of a completed stage (verified), or None when it did not complete."""
        fs, base = self._fs()
        folder = join(base, _safe(stage))
        try:
            manifest = json.loads(fs.cat_file(join(folder, MANIFEST)))
        except (FileNotFoundError, ValueError):
            return None
        out = {}
        for name, listed in manifest["files"].items():
            try:
                data = fs.cat_file(join(folder, name))
            except FileNotFoundError:
                return None
            if sha256(data) != listed["sha256"]:
                logger.warning("stage %s: %s does not match its manifest; redoing the stage",
                               stage, name)
                return None
            out[name] = data
        return out

    def put(self, stage: str, files: Mapping[str, bytes]) -> None:
        """Write a stage's files, then its manifest (last)."""
        fs, base = self._fs()
        folder = join(base, _safe(stage))
        if is_local(fs):
            fs.makedirs(folder, exist_ok=True)
        for name, data in files.items():
            atomic_write(fs, join(folder, name), data)
        manifest = {"stage": stage, "key": self.key, "created_at": utcnow(),
                    "files": {n: {"sha256": sha256(d), "size": len(d)}
                              for n, d in files.items()}}
        atomic_write(fs, join(folder, MANIFEST), json.dumps(manifest, indent=2).encode())

    def path(self, name: str) -> tuple[Any, str]:
        """(filesystem, path) of a scratch object under this key (e.g. a checkpoint)."""
        fs, base = self._fs()
        return fs, join(base, name)

    def clear(self) -> None:
        """Remove every stage of this key (after the run's bundle is published)."""
        fs, base = self._fs()
        try:
            if fs.exists(base):
                fs.rm(base, recursive=True)
        except OSError as exc:  # stale stages cost storage, not correctness
            logger.warning("could not remove %s: %s", self.url, exc)


def _safe(stage: str) -> str:
    return stage.replace(":", "-").replace("/", "-")
