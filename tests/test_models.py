"""Model manager: manifest, status, and downloads against a loopback hub (no network beyond 127.0.0.1)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.errors import KoeError
from agent.model_manager import REPO_MANIFEST, ModelManager, load_manifest
from hub_server import LoopbackHub

ROOT = Path(__file__).resolve().parent.parent
REPO = "acme/voices"
PAYLOAD = os.urandom(3 * (1 << 20) + 123)  # several chunks, so a cut transfer is a real partial file


def test_repo_manifest_lists_every_required_component():
    components = load_manifest(REPO_MANIFEST)
    for name in (
        "gsv-v2",
        "gsv-v2pro",
        "gsv-v2proplus",
        "gsv-v4",
        "chinese-hubert-base",
        "chinese-roberta-wwm-ext-large",
        "g2pw",
        "faster-whisper-small",
        "faster-whisper-large-v3",
        "nltk-data",
        "open-jtalk-dict",
    ):
        assert name in components, name
    v2 = components["gsv-v2"]
    assert v2.repo == "lj1995/GPT-SoVITS"
    assert {f.dest for f in v2.files} == {
        "gsv-v2final-pretrained/s1bert25hz-5kh-longer-epoch=12-step=369668.ckpt",
        "gsv-v2final-pretrained/s2G2333k.pth",
    }


def write_manifest(models_dir: Path, sha256: str | None = None) -> None:
    models_dir.mkdir(parents=True, exist_ok=True)
    sha_line = f', sha256 = "{sha256}"' if sha256 else ""
    (models_dir / "manifest.toml").write_text(
        f"""
[tiny-voice]
description = "a test voice"
source = "hf"
repo = "{REPO}"
files = [ {{ path = "weights/voice.pth"{sha_line} }}, {{ path = "config.json", dest = "tiny/config.json" }} ]
"""
    )


def run_koe(args: list[str], models_dir: Path, endpoint: str | None, offline: bool = False):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HUB_OFFLINE"] = "1" if offline else "0"
    env["HF_HOME"] = str(models_dir.parent / "hf_home")
    env["HF_HUB_DISABLE_XET"] = "1"
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    config = models_dir.parent / "koe.toml"
    config.write_text(f"[models]\ndir = '{models_dir}'\n")
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=120,
    )


@pytest.fixture
def hub():
    with LoopbackHub() as server:
        yield server


def test_missing_component_names_file_and_command(tmp_path):
    write_manifest(tmp_path / "m")
    manager = ModelManager(tmp_path / "m")
    with pytest.raises(KoeError) as err:
        manager.require("tiny-voice")
    assert "weights/voice.pth" in str(err.value) and "koe models download tiny-voice" in str(err.value)
    with pytest.raises(KoeError, match="unknown model component 'nope'; known: tiny-voice"):
        manager.require("nope")


def test_download_list_and_verify(tmp_path, hub):
    sha = hub.add(REPO, "weights/voice.pth", PAYLOAD)
    hub.add(REPO, "config.json", b'{"a": 1}')
    models = tmp_path / "m"
    write_manifest(models, sha256=sha)
    result = run_koe(["models", "download", "tiny-voice"], models, hub.url)
    assert result.returncode == 0, result.stderr
    assert (models / "weights" / "voice.pth").read_bytes() == PAYLOAD
    assert (models / "tiny" / "config.json").read_bytes() == b'{"a": 1}'
    listed = run_koe(["models", "list", "--json"], models, hub.url)
    row = json.loads(listed.stdout.strip().splitlines()[0])
    assert row["name"] == "tiny-voice" and row["present"] and row["size"] == len(PAYLOAD) + 8
    assert run_koe(["models", "verify"], models, hub.url).returncode == 0
    # Corrupt the file on disk: verify must notice (config.json has no manifest sha: lock file is used).
    (models / "tiny" / "config.json").write_bytes(b'{"a": 2}')
    bad = run_koe(["models", "verify", "tiny-voice"], models, hub.url)
    assert bad.returncode == 2 and "checksum mismatch" in bad.stdout and "config.json" in bad.stdout


def test_interrupted_transfer_resumes(tmp_path, hub):
    # Larger than huggingface_hub's 10 MB read chunk, cut after more than one chunk arrived.
    big = os.urandom(23 << 20)
    sha = hub.add(REPO, "weights/voice.pth", big)
    hub.add(REPO, "config.json", b"{}")
    hub.cut_after["weights/voice.pth"] = 12 << 20
    models = tmp_path / "m"
    write_manifest(models, sha256=sha)
    result = run_koe(["models", "download", "tiny-voice"], models, hub.url)
    if result.returncode != 0:  # the library gave up on the cut: a second run must resume, not restart
        result = run_koe(["models", "download", "tiny-voice"], models, hub.url)
    assert result.returncode == 0, result.stderr
    assert (models / "weights" / "voice.pth").read_bytes() == big
    ranges = [r for method, path, r in hub.requests if method == "GET" and path.endswith("voice.pth") and r]
    assert ranges and ranges[0] != "bytes=0-", f"no resumed request seen: {hub.requests}"


def test_checksum_mismatch_leaves_no_file(tmp_path, hub):
    hub.add(REPO, "weights/voice.pth", PAYLOAD)
    hub.add(REPO, "config.json", b"{}")
    models = tmp_path / "m"
    write_manifest(models, sha256="0" * 64)
    result = run_koe(["models", "download", "tiny-voice"], models, hub.url)
    assert result.returncode == 2
    assert "corrupt" in result.stderr and "sha256" in result.stderr and "Traceback" not in result.stderr
    assert not (models / "weights" / "voice.pth").exists()
    assert not list((models / ".staging").rglob("voice.pth"))


def test_offline_gives_clear_error(tmp_path, hub):
    hub.add(REPO, "weights/voice.pth", PAYLOAD)
    models = tmp_path / "m"
    write_manifest(models)
    result = run_koe(["models", "download", "tiny-voice"], models, hub.url, offline=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "HF_HUB_OFFLINE" in result.stderr and "weights/voice.pth" in result.stderr
    assert not hub.requests  # offline means no request at all


def test_missing_remote_file_is_reported(tmp_path, hub):
    models = tmp_path / "m"
    write_manifest(models)
    result = run_koe(["models", "download", "tiny-voice"], models, hub.url)
    assert result.returncode == 2 and "not found in acme/voices" in result.stderr


def test_unknown_component_fails_before_downloading(tmp_path, hub):
    models = tmp_path / "m"
    write_manifest(models)
    result = run_koe(["models", "download", "tiny-voice", "nope"], models, hub.url)
    assert result.returncode == 2 and "unknown model component 'nope'" in result.stderr
    assert not hub.requests


def test_archive_component_downloads_and_unpacks(tmp_path, hub, monkeypatch):
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("dic-1.0/sys.dic", b"dictionary"), ("dic-1.0/unk.dic", b"unknown")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    hub.static["/dl/dic-1.0.tar.gz"] = buffer.getvalue()
    models = tmp_path / "m"
    models.mkdir()
    (models / "manifest.toml").write_text(
        f"""
[dict]
description = "a dictionary"
source = "url"
url = "{hub.url}/dl/dic-1.0.tar.gz"
archive = "tar.gz"
dest = "dic"
"""
    )
    manager = ModelManager(models)
    with pytest.raises(KoeError, match="koe models download dict"):
        manager.require("dict")
    with pytest.raises(KoeError, match="offline"):
        manager.download("dict")  # tests run with HF_HUB_OFFLINE=1: nothing is fetched
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    manager.download("dict")
    folder = manager.require("dict")
    assert folder == models / "dic"
    assert (folder / "sys.dic").read_bytes() == b"dictionary" and (
        folder / "unk.dic"
    ).read_bytes() == b"unknown"
    assert not (models / ".staging" / "dict").exists()


def tar_gz(members: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_archive_manifest(models: Path, url: str, sha256: str | None) -> None:
    models.mkdir(parents=True, exist_ok=True)
    sha_line = f'sha256 = "{sha256}"' if sha256 else ""
    (models / "manifest.toml").write_text(
        f'[dict]\ndescription = "a dictionary"\nsource = "url"\nurl = "{url}"\narchive = "tar.gz"\n'
        f'dest = "dic"\n{sha_line}\n'
    )


def test_archive_download_resumes_after_a_cut(tmp_path, hub, monkeypatch):
    # Random bytes do not compress: the archive spans several 1 MB chunks and the cut is mid-body.
    archive = tar_gz({"dic-1.0/sys.dic": PAYLOAD})
    hub.static["/dl/dic-1.0.tar.gz"] = archive
    hub.cut_after["/dl/dic-1.0.tar.gz"] = len(archive) // 2
    models = tmp_path / "m"
    write_archive_manifest(models, f"{hub.url}/dl/dic-1.0.tar.gz", hashlib.sha256(archive).hexdigest())
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    ModelManager(models).download("dict")
    assert (models / "dic" / "sys.dic").read_bytes() == PAYLOAD
    ranges = [r for method, _, r in hub.requests if method == "GET" and r]
    assert ranges == [f"bytes={len(archive) // 2}-"], hub.requests  # resumed where the cut was
    assert not (models / ".staging" / "dict").exists()


def test_archive_checksum_mismatch_leaves_nothing(tmp_path, hub, monkeypatch):
    hub.static["/dl/dic-1.0.tar.gz"] = tar_gz({"dic-1.0/sys.dic": b"dictionary"})
    models = tmp_path / "m"
    write_archive_manifest(models, f"{hub.url}/dl/dic-1.0.tar.gz", "0" * 64)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(KoeError, match=r"dict: downloaded archive is corrupt \(sha256 .* != expected 0+\)"):
        ModelManager(models).download("dict")
    assert not (models / "dic").exists()
    assert not list((models / ".staging").rglob("*.part"))


def test_broken_archive_is_reported_and_deleted(tmp_path, hub, monkeypatch):
    hub.static["/dl/dic-1.0.tar.gz"] = b"<html>not an archive</html>"  # e.g. a captive portal page
    models = tmp_path / "m"
    write_archive_manifest(models, f"{hub.url}/dl/dic-1.0.tar.gz", None)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    with pytest.raises(KoeError, match="dic-1.0.tar.gz cannot be unpacked .*run the download again"):
        ModelManager(models).download("dict")
    assert not (models / "dic").exists() and not (models / ".staging" / "dict").exists()


def test_nltk_data_offline_gives_clear_error(tmp_path):
    models = tmp_path / "m"
    models.mkdir()
    (models / "manifest.toml").write_text(
        '[words]\ndescription = "NLTK data"\nsource = "nltk"\npackages = ["cmudict"]\ndest = "nltk_data"\n'
    )
    # tests run with HF_HUB_OFFLINE=1 (conftest): nltk must not even try its download server
    with pytest.raises(KoeError, match=r"words: cannot download NLTK data cmudict: HF_HUB_OFFLINE is set"):
        ModelManager(models).download("words")
    assert not (models / "nltk_data").exists()
