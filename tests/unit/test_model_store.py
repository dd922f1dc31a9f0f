"""The shared model store and the hash check: real models in a real BentoML store, a
folder and an fsspec (memory://) location as the shared store, and tampered files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import bentoml
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from nbship.registry import model_store
from nbship.registry.model_store import MissingArtifactError, TamperedArtifactError

pytestmark = pytest.mark.unit

X = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.9], [0.9, 0.1]])
Y = np.array(["a", "b", "a", "b"])


@pytest.fixture
def saved() -> str:
    model = LogisticRegression().fit(X, Y)
    return str(bentoml.sklearn.save_model("store_test", model).tag)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(model_store.CACHE_ENV, str(folder))
    return folder


class _Payload:
    """Unpickling this creates a marker file: proof that a tampered pickle was loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_push_records_digests_and_the_archive(saved: str, tmp_path: Path):
    artifact = model_store.push(saved, str(tmp_path / "shared"))

    name, version = saved.split(":")
    assert artifact["uri"] == f"{tmp_path}/shared/{name}/{version}.bentomodel"
    assert Path(artifact["uri"]).is_file()
    assert artifact["sha256"] == model_store.sha256_file(Path(artifact["uri"]))
    assert set(artifact["files"]) == {"model.yaml", "saved_model.pkl"}
    assert not list((tmp_path / "shared" / name).glob(".*")), "no partial upload left"


def test_load_verified_uses_the_local_store_when_it_has_the_model(saved: str, tmp_path: Path):
    artifact = model_store.push(saved, str(tmp_path / "shared"))
    os.remove(artifact["uri"])  # the shared copy is not needed when the local one exists

    model = model_store.load_verified(saved, artifact)

    assert list(model.predict(X)) == list(Y)


def test_a_model_missing_locally_is_fetched_from_the_shared_store(
    saved: str, tmp_path: Path, cache: Path
):
    artifact = model_store.push(saved, str(tmp_path / "shared"))
    bentoml.models.delete(saved)

    model = model_store.load_verified(saved, artifact)

    assert list(model.predict(X)) == list(Y)
    name, version = saved.split(":")
    assert (cache / name / version / "saved_model.pkl").is_file()
    # a second load reuses the verified cache, even with the shared store gone
    os.remove(artifact["uri"])
    assert list(model_store.load_verified(saved, artifact).predict(X)) == list(Y)


def test_an_fsspec_location_works_as_the_shared_store(saved: str, cache: Path):
    artifact = model_store.push(saved, "memory://nbship-test/models")
    bentoml.models.delete(saved)

    assert artifact["uri"].startswith("memory://nbship-test/models/store_test/")
    assert list(model_store.load_verified(saved, artifact).predict(X)) == list(Y)


def test_a_tampered_archive_is_refused(saved: str, tmp_path: Path, cache: Path):
    artifact = model_store.push(saved, str(tmp_path / "shared"))
    bentoml.models.delete(saved)
    with open(artifact["uri"], "ab") as f:
        f.write(b"\0")

    with pytest.raises(TamperedArtifactError, match=r"archive of store_test:.*refusing"):
        model_store.load_verified(saved, artifact)
    assert not any(cache.rglob("saved_model.pkl")), "nothing unpacked from a bad archive"


def test_a_tampered_local_file_is_refused_before_it_is_unpickled(saved: str, tmp_path: Path):
    artifact = model_store.push(saved, str(tmp_path / "shared"))
    marker = tmp_path / "unpickled"
    pkl = Path(bentoml.models.get(saved).path) / "saved_model.pkl"
    pkl.write_bytes(pickle.dumps(_Payload(str(marker))))

    with pytest.raises(TamperedArtifactError) as err:
        model_store.load_verified(saved, artifact)

    assert "saved_model.pkl: sha256" in str(err.value) and saved in str(err.value)
    assert not marker.exists(), "the tampered pickle must not be loaded"


def test_an_added_or_removed_file_is_refused(saved: str, tmp_path: Path):
    artifact = model_store.push(saved, str(tmp_path / "shared"))
    folder = Path(bentoml.models.get(saved).path)
    (folder / "extra.py").write_text("print('hi')")
    with pytest.raises(TamperedArtifactError, match=r"extra\.py: not recorded"):
        model_store.load_verified(saved, artifact)
    (folder / "extra.py").unlink()
    (folder / "saved_model.pkl").unlink()
    with pytest.raises(TamperedArtifactError, match=r"saved_model\.pkl: missing"):
        model_store.load_verified(saved, artifact)


def test_no_recorded_digests_is_refused(saved: str):
    with pytest.raises(MissingArtifactError, match="no recorded digests"):
        model_store.load_verified(saved, {})


def test_a_missing_archive_is_a_clear_error(saved: str, tmp_path: Path, cache: Path):
    artifact = model_store.push(saved, str(tmp_path / "shared"))
    bentoml.models.delete(saved)
    os.remove(artifact["uri"])
    with pytest.raises(MissingArtifactError, match="not found at"):
        model_store.load_verified(saved, artifact)
