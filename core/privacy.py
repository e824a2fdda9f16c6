"""Nothing leaves the machine: telemetry off for every process recon starts, and secrets never logged.

* :func:`offline_env` is the environment recon gives every process it starts (its own, ``recon ui``'s
  MLflow server, Ray workers): ``MLFLOW_DISABLE_TELEMETRY=true``, ``RAY_USAGE_STATS_ENABLED=0``,
  ``HF_HUB_DISABLE_TELEMETRY=1``, each only where the user has not set it (set
  ``MLFLOW_DISABLE_TELEMETRY=false`` to send MLflow usage telemetry after all). Importing this module
  applies them to this process, before anything imports mlflow (whose import starts its telemetry client).
* Values of environment variables with secret-looking names (TOKEN, SECRET, PASSWORD, KEY, CREDENTIAL,
  ...) never reach MLflow or a manifest: :func:`redact` replaces them in text, :func:`redacted_copy` in
  files and folders about to be logged.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping, Optional

#: Opt-outs recon puts in the environment of every process it starts, unless the user set them.
OFFLINE_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",   # MLflow usage telemetry (client, server and UI)
    "RAY_USAGE_STATS_ENABLED": "0",       # Ray's usage stats
    "HF_HUB_DISABLE_TELEMETRY": "1",      # Hugging Face Hub telemetry pings
}


def offline_env(environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The opt-out variables as this process should pass them on: the user's value where set, else recon's."""
    env = os.environ if environ is None else environ
    return {name: env.get(name, default) for name, default in OFFLINE_ENV.items()}


def apply_offline_env() -> dict[str, str]:
    """Set the opt-outs in this process (``setdefault``: a user's own setting wins); returns them."""
    for name, default in OFFLINE_ENV.items():
        os.environ.setdefault(name, default)
    return offline_env()


# Before anything in this process imports mlflow (its import starts the telemetry client).
apply_offline_env()

SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|KEY|CREDENTIAL|AUTH|COOKIE|PRIVATE", re.IGNORECASE)
REDACTED = "[redacted]"
_NOT_SECRET = {"true", "false", "none", "null", "yes", "no"}


def secret_values(environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """Values of environment variables whose names look secret, longest first.

    Short values (under 8 characters), booleans, numbers and existing paths are not secrets
    (``RAY_AUTH_MODE=token``, ``SSH_AUTH_SOCK=/tmp/...``): redacting them would mangle artifacts.
    """
    env = os.environ if environ is None else environ
    out = set()
    for name, value in env.items():
        value = (value or "").strip()
        if not SECRET_NAME.search(name) or len(value) < 8 or value.lower() in _NOT_SECRET or value.isdigit():
            continue
        try:
            if os.path.exists(value):
                continue
        except (OSError, ValueError):
            pass
        out.add(value)
    return sorted(out, key=len, reverse=True)


def _secret_forms(secrets: Iterable[str]) -> list[str]:
    """Each secret as written raw and inside JSON strings (escaped), longest first."""
    forms = set()
    for secret in secrets:
        forms.add(secret)
        forms.add(json.dumps(secret)[1:-1])
    return sorted(forms, key=len, reverse=True)


def redact(text: str, secrets: Optional[Iterable[str]] = None) -> str:
    """``text`` with every secret value (``secret_values()`` by default) replaced by ``[redacted]``."""
    if not isinstance(text, str):
        text = str(text)
    for secret in _secret_forms(secret_values() if secrets is None else secrets):
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


MAX_SCANNED_BYTES = 256 * 1024 * 1024


def redacted_copy(src: Path, secrets: Optional[Iterable[str]] = None) -> tuple[Path, Optional[tempfile.TemporaryDirectory]]:
    """``src`` (a file or folder) as it may be logged: itself when no file holds a secret, else a
    temporary copy with the secrets replaced (the caller keeps the returned TemporaryDirectory alive)."""
    forms = [f.encode("utf-8") for f in _secret_forms(secret_values() if secrets is None else secrets)]
    if not forms:
        return src, None
    files = [src] if src.is_file() else [p for p in sorted(src.rglob("*")) if p.is_file()]
    dirty = []
    for path in files:
        try:
            if path.stat().st_size <= MAX_SCANNED_BYTES and any(f in path.read_bytes() for f in forms):
                dirty.append(path)
        except OSError:
            continue
    if not dirty:
        return src, None
    tmp = tempfile.TemporaryDirectory(prefix="recon-redacted-")
    target = Path(tmp.name) / src.name
    if src.is_file():
        shutil.copy2(src, target)
    else:
        shutil.copytree(src, target, symlinks=False)
    for path in dirty:
        copy = target if src.is_file() else target / path.relative_to(src)
        data = copy.read_bytes()
        for form in forms:
            data = data.replace(form, REDACTED.encode())
        copy.write_bytes(data)
    return target, tmp



__all__ = ["OFFLINE_ENV", "offline_env", "apply_offline_env", "SECRET_NAME", "REDACTED", "secret_values", "redact",
           "redacted_copy", "MAX_SCANNED_BYTES"]
