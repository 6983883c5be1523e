"""The twin's own Dynamo virtualenv and its tokenizer-only model directory.

Dynamo lives in `<repo>/.twin/venv`, apart from the Pulumi environment, so its dependencies never
meet the program's. The venv is reused while a marker records the pinned set it was built from.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENTS = Path(__file__).with_name("twin_requirements.txt")
TOKENIZER_SCRIPT = Path(__file__).with_name("twin_tokenizer.py")
MARKER = "dynctl-twin-requirements.sha256"


class InstallError(RuntimeError):
    """The twin's Dynamo venv could not be created."""


def cache_root() -> Path:
    """Shared, slow-to-build things (venv, tokenizer); `DYNCTL_TWIN_CACHE` moves them."""
    return Path(os.environ.get("DYNCTL_TWIN_CACHE") or REPO / ".twin")


def venv_dir() -> Path:
    return cache_root() / "venv"


def venv_python() -> Path:
    return venv_dir() / "bin" / "python"


def _pins() -> list[str]:
    return [ln.strip() for ln in REQUIREMENTS.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _fingerprint() -> str:
    return hashlib.sha256("\n".join(_pins()).encode()).hexdigest()


def _has_pinned_set(python: Path) -> bool:
    """True when the venv's installed versions are exactly the pins (checked once, then marked)."""
    check = (
        "import importlib.metadata as m, sys\n"
        "pins = [l.split('==') for l in sys.argv[1:]]\n"
        "bad = [n for n, v in pins if m.version(n) != v]\n"
        "import dynamo.frontend, dynamo.mocker, tokenizers\n"
        "sys.exit(1 if bad else 0)\n"
    )
    try:
        return subprocess.run([str(python), "-c", check, *_pins()], capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_venv(echo=print) -> Path:
    """The venv's python; creates or repairs the venv when it does not hold the pinned set."""
    venv, python = venv_dir(), venv_python()
    marker = venv / MARKER
    if marker.exists() and marker.read_text().strip() == _fingerprint() and python.exists():
        return python
    if python.exists() and _has_pinned_set(python):
        marker.write_text(_fingerprint() + "\n")
        return python
    pin = next(p for p in _pins() if p.startswith("ai-dynamo=="))
    echo(f"twin: installing Dynamo ({pin}) into {venv} (about a minute, once)")
    if venv.exists():
        shutil.rmtree(venv)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [
        [base, "-m", "venv", str(venv)],
        # Every package is pinned in REQUIREMENTS; --no-deps keeps pip from chasing ai-dynamo's
        # unreachable aisimulate pin.
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
         "-r", str(REQUIREMENTS)],
    ]
    for cmd in steps:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise InstallError(f"`{' '.join(cmd)}` failed:\n{(done.stdout + done.stderr)[-3000:]}")
    if not _has_pinned_set(python):
        raise InstallError(f"{venv} was installed but does not import dynamo.frontend, dynamo.mocker and tokenizers")
    marker.write_text(_fingerprint() + "\n")
    return python


def ensure_tokenizer(python: Path) -> Path:
    """Tokenizer-only model directory, built once from TOKENIZER_SCRIPT and cached."""
    digest = hashlib.sha256(TOKENIZER_SCRIPT.read_bytes()).hexdigest()[:12]
    target = cache_root() / "models" / f"tokenizer-{digest}"
    if (target / "config.json").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    done = subprocess.run([str(python), str(TOKENIZER_SCRIPT), str(tmp)], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise InstallError(f"building the tokenizer failed:\n{done.stderr[-3000:]}")
    try:
        tmp.rename(target)
    except OSError:  # built concurrently by another twin; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return target
