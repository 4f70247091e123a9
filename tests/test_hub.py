"""Tests of the weight store on real files and the real huggingface_hub cache code."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from huggingface_hub import CommitInfo, try_to_load_from_cache
from huggingface_hub import constants as hf_constants

from fer_demo import hub
from fer_demo.hub import (
    ChecksumError,
    ResolvedWeights,
    WeightsError,
    WeightsNotFoundError,
    WeightSource,
    load_manifest,
    load_state_dict,
    resolve_weights,
    save_state_dict,
    sha256_file,
    write_manifest_ensemble,
    write_manifest_entry,
)
from tests.conftest import FakeHub
from training.__main__ import main as training_main
from training.publish import publish

FILENAME = "dacl.safetensors"
REPO_ID = hub.DEFAULT_HUB_REPO
COMMIT = "0123456789abcdef0123456789abcdef01234567"
CLOSED_ENDPOINT = "http://127.0.0.1:9"
PUBLISHED = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test away from the user's Hugging Face home, the real Hub and the repository's weights.

    huggingface_hub reads HF_HOME and HF_HUB_CACHE at import, so the tests also pass `cache_dir` explicitly;
    `fer_demo.hub` reads HF_ENDPOINT and HF_HUB_OFFLINE at call time.
    """
    hf_home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_ENDPOINT)
    for name in ("HF_HUB_OFFLINE", "FER_DEMO_WEIGHTS_DIR", "FER_DEMO_HUB_REPO", "FER_DEMO_HUB_REVISION"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    path = tmp_path.resolve() / "hf_cache"
    path.mkdir()
    return path


@pytest.fixture
def tensors() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {
        "backbone.conv.weight": torch.randn(8, 3, 3, 3, generator=generator),
        "head.weight": torch.randn(7, 16, generator=generator).half(),
        "head.bias": torch.zeros(7),
        "steps": torch.arange(5, dtype=torch.int64),
    }


@pytest.fixture
def store(tmp_path: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """A weight store with one listed, bundled safetensors file."""
    weights_dir = tmp_path / "weights"
    save_state_dict(tensors, weights_dir / FILENAME, metadata={"model": "dacl"})
    write_manifest_entry(FILENAME, weights_dir / FILENAME, weights_dir=weights_dir, model="dacl", dtype="mixed")
    return weights_dir


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    fake = FakeHub(REPO_ID, FILENAME, commit=COMMIT)
    monkeypatch.setenv("HF_ENDPOINT", fake.endpoint)
    yield fake
    fake.go_offline()


def populate_cache(
    cache_dir: Path,
    content: bytes,
    *,
    repo_id: str = REPO_ID,
    revision: str = "main",
    blob_name: str | None = None,
    commit: str = COMMIT,
) -> Path:
    """Lay a file out in the cache exactly as hf_hub_download does for an LFS file; return its snapshot path.

    LFS blobs are named by the sha256 of their content; `blob_name` fakes a blob corrupted after download.
    """
    repo_folder = cache_dir / f"models--{repo_id.replace('/', '--')}"
    blob_name = blob_name or hashlib.sha256(content).hexdigest()
    blob = repo_folder / "blobs" / blob_name
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    snapshot = repo_folder / "snapshots" / commit / FILENAME
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.symlink_to(Path("..", "..", "blobs", blob_name))
    refs = repo_folder / "refs"
    refs.mkdir(exist_ok=True)
    (refs / revision).write_text(commit)  # no trailing newline: huggingface_hub reads the ref verbatim
    return snapshot


def assert_same_tensors(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, tensor in expected.items():
        assert actual[key].dtype == tensor.dtype
        assert torch.equal(actual[key], tensor)


def test_bundled_round_trip(store: Path, cache_dir: Path, tensors: dict[str, torch.Tensor]) -> None:
    resolved = resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir)
    assert resolved == ResolvedWeights(
        path=store / FILENAME, source=WeightSource.BUNDLED, sha256=sha256_file(store / FILENAME), filename=FILENAME
    )
    assert resolved.entry == json.loads((store / "manifest.json").read_text())["files"][FILENAME]

    state_dict, loaded = load_state_dict(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir)
    assert loaded == resolved
    assert_same_tensors(state_dict, tensors)


def test_saved_weights_are_byte_identical_across_processes(tmp_path: Path) -> None:
    code = (
        "import sys, torch; from pathlib import Path; from fer_demo.hub import save_state_dict; "
        "save_state_dict({'b': torch.arange(4.0), 'a': torch.ones(2, 3).half()}, Path(sys.argv[1]), {'format': 'pt'})"
    )
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path in paths:
        subprocess.run([sys.executable, "-c", code, str(path)], check=True, cwd=Path(__file__).resolve().parent.parent)
    assert len({sha256_file(path) for path in paths}) == 1
    with pytest.raises(ValueError, match="at most one metadata key"):
        save_state_dict({"x": torch.ones(1)}, tmp_path / "x.safetensors", {"format": "pt", "model": "dacl"})


def test_written_manifest(store: Path) -> None:
    text = (store / "manifest.json").read_text()
    manifest = json.loads(text)
    entry = manifest["files"][FILENAME]
    assert entry == {
        "dtype": "mixed",
        "model": "dacl",
        "sha256": sha256_file(store / FILENAME),
        "size": (store / FILENAME).stat().st_size,
    }
    assert manifest["hub"] == {"repo_id": REPO_ID, "revision": hub.DEFAULT_HUB_REVISION}
    assert text == json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    assert load_manifest(store) == manifest
    assert sorted(path.name for path in store.iterdir()) == [FILENAME, "manifest.json"]  # no temporary files left


def test_ensemble_record_round_trips_and_bad_weights_are_refused(store: Path) -> None:
    digest = sha256_file(store / FILENAME)
    written = write_manifest_ensemble({"dacl": 0.8}, {"dacl": digest}, weights_dir=store, fitted_on="PublicTest")
    assert (
        load_manifest(store)["ensemble"]
        == written
        == {
            "weights": {"dacl": 0.8},
            "sha256": {"dacl": digest},
            "fitted_on": "PublicTest",
        }
    )
    assert FILENAME in load_manifest(store)["files"]  # the file entries stay
    with pytest.raises(WeightsError, match="non-negative number"):
        write_manifest_ensemble({"dacl": -1.0}, {"dacl": digest}, weights_dir=store)
    with pytest.raises(WeightsError, match="'sha256' must name"):
        write_manifest_ensemble({"dacl": 1.0}, {}, weights_dir=store)
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["ensemble"]["weights"]["dacl"] = "heavy"
    (store / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match="ensemble: the weight of 'dacl'"):
        load_manifest(store)


def test_write_manifest_entry_refuses_computed_keys(store: Path) -> None:
    with pytest.raises(ValueError, match="sha256"):
        write_manifest_entry(FILENAME, store / FILENAME, weights_dir=store, sha256="0" * 64)


def test_sha256_file_streams_large_files(tmp_path: Path) -> None:
    data = bytes(range(256)) * 9000  # a little over 2 MiB: several chunks
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_cache_layout_is_what_huggingface_hub_expects(store: Path, cache_dir: Path) -> None:
    snapshot = populate_cache(cache_dir, (store / FILENAME).read_bytes())
    (store / FILENAME).unlink()  # only the cache has it now

    assert try_to_load_from_cache(REPO_ID, FILENAME, cache_dir=cache_dir, revision="main") == str(snapshot)
    resolved = resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir)
    assert resolved.source is WeightSource.CACHE
    assert resolved.path == snapshot


def test_offline_from_environment(store: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    populate_cache(cache_dir, (store / FILENAME).read_bytes())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    assert resolve_weights(FILENAME, weights_dir=store, cache_dir=cache_dir).source is WeightSource.CACHE
    assert time.monotonic() - start < 2


def test_hub_repo_and_revision_from_environment(store: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    populate_cache(cache_dir, (store / FILENAME).read_bytes(), repo_id="someone/other-weights", revision="v2")
    assert resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir).source is (
        WeightSource.BUNDLED
    )
    monkeypatch.setenv("FER_DEMO_HUB_REPO", "someone/other-weights")
    monkeypatch.setenv("FER_DEMO_HUB_REVISION", "v2")
    assert resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir).source is (
        WeightSource.CACHE
    )


def test_weights_dir_from_environment(store: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_DEMO_WEIGHTS_DIR", str(store))
    assert hub.default_weights_dir() == store
    assert resolve_weights(FILENAME, offline=True, cache_dir=cache_dir).path == store / FILENAME


def test_unreachable_hub_falls_back_to_bundled_quickly(
    store: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="fer_demo.hub")
    start = time.monotonic()
    resolved = resolve_weights(FILENAME, weights_dir=store, offline=False, cache_dir=cache_dir)
    assert time.monotonic() - start < 5
    assert resolved.source is WeightSource.BUNDLED
    warnings = [record.getMessage() for record in caplog.records if record.name == "fer_demo.hub"]
    assert len(warnings) == 1
    assert FILENAME in warnings[0] and CLOSED_ENDPOINT in warnings[0] and "ConnectError" in warnings[0]


def test_unreachable_hub_uses_verified_cache_without_network(
    store: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    snapshot = populate_cache(cache_dir, (store / FILENAME).read_bytes())
    caplog.set_level(logging.WARNING)
    resolved = resolve_weights(FILENAME, weights_dir=store, offline=False, cache_dir=cache_dir)
    assert (resolved.source, resolved.path) == (WeightSource.CACHE, snapshot)
    assert not caplog.records


def test_corrupt_cache_falls_back_to_bundled(store: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    content = bytearray((store / FILENAME).read_bytes())
    content[-1] ^= 0xFF  # same size, different hash
    populate_cache(cache_dir, bytes(content))
    caplog.set_level(logging.WARNING, logger="fer_demo.hub")

    resolved = resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir)
    assert resolved.source is WeightSource.BUNDLED
    [warning] = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert "cache" in warning.getMessage() and FILENAME in warning.getMessage()
    assert sha256_file(store / FILENAME) in warning.getMessage()


def test_corrupt_cache_and_unreachable_hub_fall_back_to_bundled(
    store: Path, cache_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    populate_cache(cache_dir, b"not the weights")
    caplog.set_level(logging.WARNING, logger="fer_demo.hub")
    resolved = resolve_weights(FILENAME, weights_dir=store, offline=False, cache_dir=cache_dir)
    assert resolved.source is WeightSource.BUNDLED
    messages = [record.getMessage() for record in caplog.records if record.name == "fer_demo.hub"]
    assert len(messages) == 2
    assert "cache copy" in messages[0] and "size" in messages[0]
    assert "Hugging Face Hub" in messages[1]


def test_download_from_hub_then_cache(store: Path, cache_dir: Path, fake_hub: FakeHub) -> None:
    fake_hub.content = (store / FILENAME).read_bytes()
    (store / FILENAME).unlink()

    resolved = resolve_weights(FILENAME, weights_dir=store, offline=False, cache_dir=cache_dir)
    assert resolved.source is WeightSource.HUB
    assert resolved.path == cache_dir / f"models--{REPO_ID.replace('/', '--')}" / "snapshots" / COMMIT / FILENAME
    assert resolved.path.read_bytes() == fake_hub.content
    assert try_to_load_from_cache(REPO_ID, FILENAME, cache_dir=cache_dir, revision="main") == str(resolved.path)

    fake_hub.requests.clear()
    cached = resolve_weights(FILENAME, weights_dir=store, offline=False, cache_dir=cache_dir)
    assert (cached.source, cached.path) == (WeightSource.CACHE, resolved.path)
    assert fake_hub.requests == []  # a verified cached copy needs no request


def test_hub_file_with_wrong_content_falls_back_to_bundled(
    store: Path, cache_dir: Path, fake_hub: FakeHub, caplog: pytest.LogCaptureFixture
) -> None:
    fake_hub.content = b"something else entirely"
    caplog.set_level(logging.WARNING, logger="fer_demo.hub")
    assert resolve_weights(FILENAME, weights_dir=store, offline=False, cache_dir=cache_dir).source is (
        WeightSource.BUNDLED
    )
    [warning] = [record.getMessage() for record in caplog.records if record.name == "fer_demo.hub"]
    assert "hub copy" in warning and FILENAME in warning


def test_corrupt_cache_is_downloaded_again(store: Path, cache_dir: Path, fake_hub: FakeHub) -> None:
    fake_hub.content = (store / FILENAME).read_bytes()
    expected = hashlib.sha256(fake_hub.content).hexdigest()
    snapshot = populate_cache(cache_dir, b"bit rot", blob_name=expected)
    (store / FILENAME).unlink()

    resolved = resolve_weights(FILENAME, weights_dir=store, offline=False, cache_dir=cache_dir)
    assert (resolved.source, resolved.path) == (WeightSource.HUB, snapshot)
    assert sha256_file(snapshot) == expected


def test_corrupt_bundled_file_raises_checksum_error(store: Path, cache_dir: Path) -> None:
    path = store / FILENAME
    expected = sha256_file(path)
    content = bytearray(path.read_bytes())
    content[-1] ^= 0xFF
    path.write_bytes(bytes(content))
    actual = sha256_file(path)

    with pytest.raises(ChecksumError) as raised:
        resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir)
    message = str(raised.value)
    assert FILENAME in message and expected in message and actual in message and str(path) in message
    assert "python -m training export dacl" in message


def test_listed_but_missing_everywhere(store: Path, cache_dir: Path) -> None:
    (store / FILENAME).unlink()
    with pytest.raises(WeightsNotFoundError, match=r"'dacl' \(dacl\.safetensors\).*python -m training export dacl"):
        resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir)


def test_unlisted_file_is_refused(store: Path, cache_dir: Path) -> None:
    save_state_dict({"x": torch.ones(2)}, store / "gcnet.safetensors", metadata=None)  # present but not listed
    with pytest.raises(WeightsNotFoundError) as raised:
        resolve_weights("gcnet.safetensors", weights_dir=store, offline=True, cache_dir=cache_dir)
    message = str(raised.value)
    assert "No trained weights for model 'gcnet' (gcnet.safetensors): not in" in message
    assert "manifest.json" in message and "`python -m training export gcnet`" in message


def test_repository_manifest_is_valid() -> None:
    manifest = load_manifest(Path(hub.__file__).resolve().parent.parent / "weights")
    assert manifest["format"] == 1 and manifest["hub"]["repo_id"] == hub.DEFAULT_HUB_REPO


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"manifest\.json is missing"):
        load_manifest(tmp_path)


def test_malformed_manifest_json(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text('{"format": 1,')
    with pytest.raises(WeightsError, match="is not valid JSON"):
        load_manifest(tmp_path)


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        ([], "top level is a JSON list"),
        ({"format": 2, "hub": {"repo_id": "a/b", "revision": "main"}, "files": {}}, "'format' is 2"),
        ({"format": 1, "files": {}}, "'hub' must be an object"),
        ({"format": 1, "hub": {"repo_id": "", "revision": "main"}, "files": {}}, "'hub.repo_id'"),
        ({"format": 1, "hub": {"repo_id": "a/b", "revision": "main"}, "files": []}, "'files' must be an object"),
        (
            {"format": 1, "hub": {"repo_id": "a/b", "revision": "main"}, "files": {"a.safetensors": {"size": 1}}},
            "'sha256' must be 64 lowercase hex digits",
        ),
        (
            {
                "format": 1,
                "hub": {"repo_id": "a/b", "revision": "main"},
                "files": {"../a.safetensors": {"sha256": "a" * 64, "size": -1}},
            },
            "bare file name.*'size' must be a non-negative integer",
        ),
    ],
)
def test_manifest_with_wrong_structure(tmp_path: Path, manifest: object, problem: str) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(WeightsError, match=f"malformed: .*{problem}"):
        load_manifest(tmp_path)


def test_truncated_safetensors_file(store: Path, cache_dir: Path) -> None:
    path = store / FILENAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    write_manifest_entry(FILENAME, path, weights_dir=store, model="dacl")  # the checksum now passes

    assert resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir).source is (
        WeightSource.BUNDLED
    )
    with pytest.raises(WeightsError, match=rf"{re.escape(FILENAME)}.*not a valid safetensors file") as raised:
        load_state_dict(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir)
    assert type(raised.value) is WeightsError


def test_no_unsafe_deserialisation_in_package() -> None:
    forbidden = re.compile(r"torch\.load\b|pickle", re.IGNORECASE)
    package = Path(hub.__file__).resolve().parent
    offenders = [
        f"{path.relative_to(package.parent)}:{number}: {line.strip()}"
        for path in sorted(package.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1)
        if forbidden.search(line)
    ]
    assert not offenders, "fer_demo must load weights with safetensors only:\n" + "\n".join(offenders)


class RecordingHubApi:
    """Stands in for `huggingface_hub.HfApi` in `training.publish` (real uploads need the Hub and a token): records
    each call and keeps the files of the uploaded folder."""

    def __init__(self, oid: str) -> None:
        self.oid, self.calls, self.uploaded = oid, [], {}

    def create_repo(self, repo_id: str, **kwargs: object) -> None:
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id: str, folder_path: str, **kwargs: object) -> CommitInfo:
        self.calls.append(("upload_folder", repo_id, kwargs))
        self.uploaded = {path.name: path.read_bytes() for path in Path(folder_path).iterdir()}
        return CommitInfo(
            commit_url=f"https://huggingface.co/{repo_id}/commit/{self.oid}",
            commit_message=str(kwargs["commit_message"]),
            commit_description="",
            oid=self.oid,
        )


def test_publish_uploads_the_store_in_one_commit_that_the_manifest_then_pins(store: Path, cache_dir: Path) -> None:
    content = (store / FILENAME).read_bytes()
    populate_cache(cache_dir, content, repo_id="someone/weights")  # an earlier commit of the branch, cached
    api = RecordingHubApi(PUBLISHED)

    commit = publish(weights_dir=store, repo_id="someone/weights", api=api)

    assert [(name, repo) for name, repo, _ in api.calls] == [
        ("create_repo", "someone/weights"),
        ("upload_folder", "someone/weights"),
    ]
    assert api.calls[0][2]["exist_ok"] is True
    assert api.calls[1][2]["revision"] == "main"
    assert api.calls[1][2]["delete_patterns"] == "*.safetensors"  # weight files no longer listed leave the Hub
    assert sorted(api.uploaded) == sorted([FILENAME, "manifest.json", "README.md"])
    assert api.uploaded[FILENAME] == content
    staged = json.loads(api.uploaded["manifest.json"])
    assert staged["files"] == load_manifest(store)["files"]
    assert staged["hub"] == {"repo_id": "someone/weights", "revision": "main"}
    assert commit.oid == PUBLISHED
    assert load_manifest(store)["hub"] == {"repo_id": "someone/weights", "revision": PUBLISHED}

    # the app now loads that commit only: not the branch's earlier cached commit, and the published one once cached
    (store / FILENAME).unlink()
    with pytest.raises(WeightsNotFoundError):
        resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir)
    populate_cache(cache_dir, api.uploaded[FILENAME], repo_id="someone/weights", commit=PUBLISHED)
    resolved = resolve_weights(FILENAME, weights_dir=store, offline=True, cache_dir=cache_dir)
    assert resolved.source is WeightSource.CACHE
    assert PUBLISHED in resolved.path.parts


def test_publish_refuses_a_file_that_fails_its_checksum_and_uploads_nothing(store: Path) -> None:
    manifest = (store / "manifest.json").read_bytes()
    path = store / FILENAME
    content = bytearray(path.read_bytes())
    content[-1] ^= 0xFF
    path.write_bytes(bytes(content))
    api = RecordingHubApi(PUBLISHED)

    with pytest.raises(ChecksumError, match=re.escape(FILENAME)):
        publish(weights_dir=store, api=api)
    assert api.calls == []
    assert (store / "manifest.json").read_bytes() == manifest


def test_publish_offline_says_why_and_leaves_the_manifest(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets when the process starts
    manifest = (store / "manifest.json").read_bytes()

    with pytest.raises(SystemExit, match=r"Not published: .*offline mode"):
        training_main(["publish", "--weights-dir", str(store), "--repo", "someone/weights"])
    assert (store / "manifest.json").read_bytes() == manifest


def test_publish_dry_run_stages_the_bundled_weights_and_a_card_with_their_accuracy(tmp_path: Path) -> None:
    weights_dir = hub.default_weights_dir()
    manifest_bytes = (weights_dir / "manifest.json").read_bytes()
    manifest = load_manifest(weights_dir)
    out = tmp_path / "staged"

    training_main(["publish", "--dry-run", str(out)])

    assert sorted(path.name for path in out.iterdir()) == sorted([*manifest["files"], "manifest.json", "README.md"])
    for name, entry in manifest["files"].items():
        assert sha256_file(out / name) == entry["sha256"]
    card = (out / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---\nlicense: other\n")
    for name, entry in manifest["files"].items():
        if "metrics" in entry:
            accuracy = entry["metrics"]["fer2013_private_test"]["accuracy"]
            assert f"| `{name}` | {entry['model']} | weights | {entry['dtype']} |" in card
            assert f"| {100 * accuracy:.2f} |" in card
    assert (weights_dir / "manifest.json").read_bytes() == manifest_bytes
