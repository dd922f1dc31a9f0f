"""The shared model store: where every registered model version's artefact lives, and
the hash check every load goes through.

Each version is kept twice: in the local BentoML model store of the machine that trained
it (what `bentoml build` packs into a bento), and as a `<name>/<version>.bentomodel`
archive in the *shared* store, a folder or any fsspec URL (`s3://bucket/models` with
`s3fs` installed, `gs://...`, ...). Predict servers that share a registry fetch the
champion from the shared store.

The registry holds the digests (sha256 of the archive and of every file of the model
folder) recorded when the version was registered. Nothing is unpickled before its files
match them: a tampered or truncated artefact raises `TamperedArtifactError`, naming the
file. This module is copied into every bento; it needs bentoml and fsspec only.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CACHE_ENV = "NBSHIP_MODEL_CACHE"
ARCHIVE_SUFFIX = ".bentomodel"
_CHUNK = 1 << 20


class TamperedArtifactError(RuntimeError):
    """A model artefact whose bytes differ from the digests recorded at registration."""


class MissingArtifactError(LookupError):
    """No artefact, or no recorded digests, for a model version."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def file_digests(model_dir: Path) -> dict[str, str]:
    """sha256 of every file under a model folder, keyed by its relative posix path."""
    return {
        path.relative_to(model_dir).as_posix(): sha256_file(path)
        for path in sorted(model_dir.rglob("*"))
        if path.is_file()
    }


def verify_dir(model_dir: Path, expected: Mapping[str, str], tag: str) -> None:
    """Raises TamperedArtifactError unless the folder holds exactly the expected files."""
    if not expected:
        raise MissingArtifactError(f"no recorded digests for {tag}: refusing to load it")
    actual = file_digests(model_dir)
    problems = [
        f"{name}: sha256 {actual[name][7:19]}... differs from recorded {digest[7:19]}..."
        for name, digest in sorted(expected.items())
        if name in actual and actual[name] != digest
    ]
    problems += [f"{name}: missing" for name in sorted(set(expected) - set(actual))]
    problems += [f"{name}: not recorded" for name in sorted(set(actual) - set(expected))]
    if problems:
        raise TamperedArtifactError(
            f"model {tag} at {model_dir} does not match its registered digests, refusing to"
            f" load it: {'; '.join(problems)}"
        )


def archive_uri(store: str, tag: str) -> str:
    name, version = tag.split(":", 1)
    return f"{store.rstrip('/')}/{name}/{version}{ARCHIVE_SUFFIX}"


def _fs(uri: str) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    return url_to_fs(uri)


def push(tag: str, store: str) -> dict[str, Any]:
    """Copies a model of the local BentoML store to the shared store; returns the record
    the registry keeps: {uri, sha256 (archive), files (model folder digests)}."""
    import bentoml

    model = bentoml.models.get(tag)
    files = file_digests(Path(model.path))
    uri = archive_uri(store, str(model.tag))
    with tempfile.TemporaryDirectory(prefix="nbship-push-") as tmp:
        archive = Path(tmp) / f"model{ARCHIVE_SUFFIX}"
        bentoml.models.export_model(model.tag, str(archive))
        digest = sha256_file(archive)
        fs, path = _fs(uri)
        parent = path.rsplit("/", 1)[0]
        fs.makedirs(parent, exist_ok=True)
        # upload beside the target, then rename: readers never see half an archive
        partial = f"{parent}/.{path.rsplit('/', 1)[1]}.partial"
        fs.put_file(str(archive), partial)
        fs.mv(partial, path)
    return {"uri": uri, "sha256": digest, "files": files}


def cache_dir() -> Path:
    """Where fetched models are unpacked: $NBSHIP_MODEL_CACHE or a per-user temp folder."""
    default = Path(tempfile.gettempdir()) / f"nbship-models-{os.getuid()}"
    return Path(os.environ.get(CACHE_ENV) or default)


def fetch(tag: str, artifact: Mapping[str, Any], cache: Path | None = None) -> Path:
    """The verified model folder of `tag`, unpacked from the shared store into the cache
    (reused when already there and still matching its digests)."""
    if not artifact or "uri" not in artifact:
        raise MissingArtifactError(f"no shared-store artefact recorded for {tag}")
    name, version = tag.split(":", 1)
    target = (cache or cache_dir()) / name / version
    if target.is_dir():
        verify_dir(target, artifact.get("files") or {}, tag)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{version}.", dir=target.parent) as tmp:
        archive = Path(tmp) / f"model{ARCHIVE_SUFFIX}"
        fs, path = _fs(artifact["uri"])
        if not fs.exists(path):
            raise MissingArtifactError(f"artefact of {tag} not found at {artifact['uri']}")
        fs.get_file(path, str(archive))
        digest = sha256_file(archive)
        if digest != artifact.get("sha256"):
            raise TamperedArtifactError(
                f"archive of {tag} at {artifact['uri']} has {digest}, registered"
                f" {artifact.get('sha256')}: refusing to load it"
            )
        unpacked = Path(tmp) / "model"
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
        verify_dir(unpacked, artifact.get("files") or {}, tag)
        try:
            unpacked.rename(target)
        except OSError:
            if not target.is_dir():  # another process unpacked it first: fine
                raise
    return target


def load_dir(model_dir: Path, expected: Mapping[str, str], tag: str) -> Any:
    """Verifies, then loads, a BentoML scikit-learn model folder."""
    import bentoml

    verify_dir(model_dir, expected, tag)
    return bentoml.sklearn.load_model(bentoml.models.Model.from_path(str(model_dir)))


def local_dir(tag: str) -> Path | None:
    """The folder of `tag` in the local BentoML model store (a bento's own store when
    serving one), or None."""
    import bentoml
    from bentoml.exceptions import NotFound

    try:
        return Path(bentoml.models.get(tag).path)
    except NotFound:
        return None


def load_verified(tag: str, artifact: Mapping[str, Any]) -> Any:
    """The model of `tag`: from the local store when it has it, else from the shared
    store; either way only after its files match the registered digests."""
    folder = local_dir(tag)
    if folder is None:
        folder = fetch(tag, artifact)
    return load_dir(folder, artifact.get("files") or {}, tag)


def remove_cached(tag: str, cache: Path | None = None) -> None:
    name, version = tag.split(":", 1)
    shutil.rmtree((cache or cache_dir()) / name / version, ignore_errors=True)
