"""The model manager: which files each component needs, where they live, and how to fetch them.

`pretrained/manifest.toml` lists every component (GPT-SoVITS pretrained models, HuBERT, BERT, g2pW,
faster-whisper sizes, text-frontend data) with its source. Components never download anything
themselves: they ask `ModelManager.require(name)` for a path, which either returns it or raises a
`KoeError` that names the missing file and the `koe models download NAME` command that fetches it.

Downloads go to a staging folder first and are moved into place only after their checksum was
checked, so an interrupted or corrupt transfer never leaves a broken file where a model is expected.
Hugging Face downloads use `huggingface_hub` (resume, progress bars, `HF_ENDPOINT` mirrors, `HF_TOKEN`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import time
import tomllib
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from agent.errors import KoeError

log = logging.getLogger(__name__)

REPO_MANIFEST = Path(__file__).resolve().parent.parent / "pretrained" / "manifest.toml"
LOCK_NAME = ".koe-lock.json"  # sha256 and size of every file as downloaded, for `koe models verify`
STAGING_NAME = ".staging"
COMPLETE_MARKER = ".koe-complete"  # written into a folder once an archive was fully extracted
CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelFile:
    """One file of a component: `path` at the source, `dest` relative to the models folder."""

    path: str
    dest: str
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Component:
    name: str
    description: str
    source: Literal["hf", "url", "nltk"]
    files: tuple[ModelFile, ...] = ()
    repo: str | None = None  # hf: repo id
    revision: str = "main"  # hf: pinned commit where known
    url: str | None = None  # url: archive or file address
    archive: Literal["zip", "tar.gz", None] = None
    dest: str | None = None  # url/nltk: folder relative to the models folder
    sha256: str | None = None  # url: checksum of the downloaded archive
    packages: tuple[str, ...] = ()  # nltk: data packages
    tags: tuple[str, ...] = field(default_factory=tuple)


@dataclass
class ComponentStatus:
    component: Component
    present: list[Path]
    missing: list[Path]

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def size_bytes(self) -> int:
        return sum(_tree_size(p) for p in self.present)


def load_manifest(path: Path) -> dict[str, Component]:
    """Parse the manifest TOML; a malformed entry names the component and the key."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KoeError(f"model manifest not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise KoeError(f"{path}: not valid TOML: {exc}") from None
    components = {}
    for name, entry in data.items():
        try:
            files = tuple(
                ModelFile(
                    path=f["path"], dest=f.get("dest", f["path"]), size=f.get("size"), sha256=f.get("sha256")
                )
                for f in entry.get("files", [])
            )
            components[name] = Component(
                name=name,
                description=entry["description"],
                source=entry["source"],
                files=files,
                repo=entry.get("repo"),
                revision=entry.get("revision", "main"),
                url=entry.get("url"),
                archive=entry.get("archive"),
                dest=entry.get("dest"),
                sha256=entry.get("sha256"),
                packages=tuple(entry.get("packages", ())),
                tags=tuple(entry.get("tags", ())),
            )
        except (KeyError, TypeError) as exc:
            raise KoeError(f"{path}: component [{name}] is malformed: missing or bad key {exc}") from None
        if components[name].source not in ("hf", "url", "nltk"):
            raise KoeError(f"{path}: component [{name}]: unknown source {entry['source']!r} (hf, url, nltk)")
    return components


class ModelManager:
    """Finds, checks and downloads the model files under one models folder."""

    def __init__(self, models_dir: Path, manifest_path: Path | None = None):
        self.models_dir = Path(models_dir)
        if manifest_path is None:
            local = self.models_dir / "manifest.toml"
            manifest_path = local if local.is_file() else REPO_MANIFEST
        self.manifest_path = manifest_path
        self.components = load_manifest(manifest_path)

    # ----------------------------------------------------------------------------- lookup
    def component(self, name: str) -> Component:
        if name not in self.components:
            raise KoeError(f"unknown model component {name!r}; known: {', '.join(sorted(self.components))}")
        return self.components[name]

    def expected_paths(self, component: Component) -> list[Path]:
        if component.source == "hf":
            return [self.models_dir / f.dest for f in component.files]
        return [self.models_dir / (component.dest or component.name)]

    def status(self, name: str) -> ComponentStatus:
        component = self.component(name)
        present, missing = [], []
        for path in self.expected_paths(component):
            ok = path.is_file() if component.source == "hf" else (path / COMPLETE_MARKER).is_file()
            (present if ok else missing).append(path)
        return ComponentStatus(component, present, missing)

    def require(self, name: str) -> Path:
        """The component's folder (or single file); a `KoeError` with the fetch command if missing."""
        status = self.status(name)
        if not status.complete:
            listed = ", ".join(str(p) for p in status.missing[:3])
            more = f" and {len(status.missing) - 3} more" if len(status.missing) > 3 else ""
            raise KoeError(
                f"model files missing: {listed}{more}; fetch them with `koe models download {name}`"
            )
        paths = self.expected_paths(status.component)
        return paths[0] if len(paths) == 1 else Path(os.path.commonpath(paths))

    # --------------------------------------------------------------------------- download
    def download(self, name: str, force: bool = False) -> ComponentStatus:
        component = self.component(name)
        started = time.perf_counter()
        if component.source == "hf":
            for model_file in component.files:
                target = self.models_dir / model_file.dest
                if target.is_file() and not force:
                    log.info("%s: %s already present", name, model_file.dest)
                    continue
                self._download_hf_file(component, model_file)
        elif component.source == "url":
            self._download_archive(component, force)
        else:
            self._download_nltk(component, force)
        log.info("%s: downloaded in %.1f s", name, time.perf_counter() - started)
        return self.status(name)

    def _download_hf_file(self, component: Component, model_file: ModelFile) -> None:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )

        staging = self.models_dir / STAGING_NAME / component.name
        endpoint = os.environ.get("HF_ENDPOINT") or None
        log.info(
            "%s: fetching %s from %s (%s)", component.name, model_file.path, component.repo, endpoint or "hub"
        )
        try:
            staged = Path(
                hf_hub_download(
                    component.repo,
                    model_file.path,
                    revision=component.revision,
                    local_dir=staging,
                    endpoint=endpoint,
                )
            )
        except LocalEntryNotFoundError:
            raise KoeError(
                f"{component.name}: cannot download {model_file.path}: offline or hub unreachable "
                f"({'HF_HUB_OFFLINE is set; ' if _offline() else ''}endpoint {endpoint or 'https://huggingface.co'}). "
                f"Unset HF_HUB_OFFLINE, set HF_ENDPOINT to a mirror, or copy the file to "
                f"{self.models_dir / model_file.dest}"
            ) from None
        except (RepositoryNotFoundError, EntryNotFoundError) as exc:
            raise KoeError(
                f"{component.name}: {model_file.path} not found in {component.repo}@{component.revision} "
                f"({type(exc).__name__})"
            ) from None
        except OSError as exc:
            raise KoeError(f"{component.name}: download of {model_file.path} failed: {exc}") from None
        self._install(staged, self.models_dir / model_file.dest, model_file.sha256, model_file.size)

    def _install(self, staged: Path, target: Path, sha256: str | None, size: int | None) -> None:
        """Check the staged file and move it into place; a mismatch deletes it and raises."""
        digest = file_sha256(staged)
        actual_size = staged.stat().st_size
        problem = None
        if sha256 and digest != sha256.lower():
            problem = f"sha256 {digest} != expected {sha256}"
        elif size is not None and actual_size != size:
            problem = f"size {actual_size} != expected {size}"
        if problem:
            staged.unlink(missing_ok=True)
            raise KoeError(
                f"downloaded {target.name} is corrupt ({problem}); it was deleted, run the download again"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staged, target)
        self._record(target, digest, actual_size)

    def _download_archive(self, component: Component, force: bool) -> None:
        dest = self.models_dir / (component.dest or component.name)
        if (dest / COMPLETE_MARKER).is_file() and not force:
            log.info("%s: already present", component.name)
            return
        staging = self.models_dir / STAGING_NAME / component.name
        part = staging / (Path(component.url).name + ".part")
        download_url(component.url, part)
        digest = file_sha256(part)
        if component.sha256 and digest != component.sha256.lower():
            part.unlink()
            raise KoeError(
                f"{component.name}: downloaded archive is corrupt (sha256 {digest} != expected "
                f"{component.sha256}); it was deleted, run the download again"
            )
        unpacked = staging / "unpacked"
        shutil.rmtree(unpacked, ignore_errors=True)
        try:
            extract_archive(part, unpacked, component.archive)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise KoeError(
                f"{component.name}: downloaded archive {part.name.removesuffix('.part')} cannot be unpacked "
                f"({exc}); it was deleted, run the download again"
            ) from None
        # An archive holding a single top-level folder is flattened into dest.
        entries = list(unpacked.iterdir())
        root = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(root), dest)
        (dest / COMPLETE_MARKER).write_text(json.dumps({"url": component.url, "sha256": digest}))
        part.unlink()
        shutil.rmtree(staging, ignore_errors=True)

    def _download_nltk(self, component: Component, force: bool) -> None:
        try:
            import nltk
        except ImportError:
            raise KoeError(f"{component.name}: needs nltk (pip install 'koe[en]')") from None
        dest = self.models_dir / (component.dest or component.name)
        if (dest / COMPLETE_MARKER).is_file() and not force:
            return
        if _offline():
            raise KoeError(
                f"{component.name}: cannot download NLTK data {', '.join(component.packages)}: "
                f"HF_HUB_OFFLINE is set (offline mode); unset it, or copy an nltk_data folder to {dest}"
            )
        for package in component.packages:
            try:
                downloaded = nltk.download(package, download_dir=str(dest), quiet=False, raise_on_error=True)
            except (ValueError, OSError) as exc:  # nltk reports network failures as ValueError
                raise KoeError(f"{component.name}: nltk could not download {package!r}: {exc}") from None
            if not downloaded:
                raise KoeError(f"{component.name}: nltk could not download {package!r}")
        (dest / COMPLETE_MARKER).write_text(json.dumps({"packages": list(component.packages)}))

    # ----------------------------------------------------------------------------- verify
    def verify(self, name: str) -> list[str]:
        """Problems found in a component's files (empty when everything checks out)."""
        component = self.component(name)
        status = self.status(name)
        problems = [f"missing: {p}" for p in status.missing]
        if component.source != "hf":
            return problems
        lock = self._lock()
        for model_file in component.files:
            path = self.models_dir / model_file.dest
            if not path.is_file():
                continue
            expected = model_file.sha256 or lock.get(model_file.dest, {}).get("sha256")
            if expected is None:
                problems.append(f"no checksum known for {path} (not downloaded by koe): not verified")
                continue
            digest = file_sha256(path)
            if digest != expected.lower():
                problems.append(f"checksum mismatch: {path} (sha256 {digest}, expected {expected})")
        return problems

    def _lock(self) -> dict:
        path = self.models_dir / LOCK_NAME
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _record(self, target: Path, digest: str, size: int) -> None:
        lock = self._lock()
        lock[str(target.relative_to(self.models_dir))] = {"sha256": digest, "size": size}
        (self.models_dir / LOCK_NAME).write_text(json.dumps(lock, indent=1, sort_keys=True))


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def download_url(url: str, part: Path, retries: int = 3) -> None:
    """Fetch `url` into `part`, resuming from what is already there, with a progress bar."""
    from tqdm import tqdm

    if _offline():
        raise KoeError(f"cannot download {url}: HF_HUB_OFFLINE is set (offline mode)")
    part.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                if have and response.status != 206:
                    have = 0  # the server ignored the range: start over
                announced = int(response.headers.get("Content-Length", 0)) or None
                total = announced + have if announced else None
                received = 0
                with (
                    open(part, "ab" if have else "wb") as out,
                    tqdm(
                        total=total,
                        initial=have,
                        unit="B",
                        unit_scale=True,
                        desc=part.name.removesuffix(".part"),
                    ) as bar,
                ):
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
            if announced is not None and received < announced:  # urllib ends a cut body without error
                raise ConnectionError(f"connection closed after {received} of {announced} bytes")
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and have:  # already complete
                return
            raise KoeError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if attempt == retries:
                raise KoeError(f"download of {url} failed after {retries + 1} tries: {exc}") from None
            log.warning("download of %s interrupted (%s); resuming", url, exc)
            time.sleep(min(2**attempt, 10))


def extract_archive(archive: Path, dest: Path, kind: str | None) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if Path(member).is_absolute() or ".." in Path(member).parts:
                    raise KoeError(f"{archive.name}: unsafe path in archive: {member}")
            zf.extractall(dest)
    elif kind == "tar.gz":
        with tarfile.open(archive, "r:gz") as tf:
            tf.extractall(dest, filter="data")
    else:
        shutil.copy2(archive, dest / archive.name.removesuffix(".part"))
