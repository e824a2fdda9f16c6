"""Download the benchmark files a user lacks: pinned, verified, atomic and resumable.

    from recon.data_prep.fetch import fetch
    results = fetch(["semeval", "fewrel"], "~/.cache/recon/datasets")
    for r in results:
        print(r.relpath, r.status, r.verification)

Why this shape: every benchmark file lives in a public git repository at a fixed commit, so a source
is (repository, commit, path) plus a digest. Pinning both means a user without the shared folder gets
byte-identical data or a loud failure, never a silently different file. Files are written to
``<target>.part``, verified, then moved into place with ``os.replace``, so nothing half-written ever
sits at the final path; an interrupted transfer is continued with an HTTP ``Range`` request.

Digests: the sha256 from the datasets MANIFEST where the file was seen; otherwise the git blob id
(``sha1(b"blob <size>\\0" + content)``), which is all that is known of files too large to mirror.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

from tqdm import tqdm

from recon.core.errors import DatasetNotFound, ReconError
from recon.core.hashing import file_sha256

DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
CHUNK_BYTES = 256 * 1024
PART_SUFFIX = ".part"

RE_CONTEXT_OR_NAMES = ("thunlp/RE-Context-or-Names", "ae75ef183d0775c4c91ea8656b7cb1ea79fc4bb9")
FEWREL = ("thunlp/FewRel", "278a2315d2138810a379cd8d5718914dc56e2582")

STATUS_DOWNLOADED = "downloaded"
STATUS_PRESENT = "present"
STATUS_RESUMED = "resumed"
STATUS_FAILED = "failed"


class SourceUnreachable(ReconError):
    """The download server could not be reached (no network, DNS failure, connection refused)."""


class LicensedDataset(ReconError):
    """A dataset whose licence forbids free download; the user must bring their own copy."""


@dataclass(frozen=True)
class Source:
    """One benchmark file: where it lives locally, where it comes from, and how to check it.

    Exactly one of ``sha256`` and ``git_blob`` is set. ``size`` is known only for files that were
    seen (MANIFEST); it lets a complete ``.part`` be verified without asking the server again.
    """

    relpath: str
    repo: str
    commit: str
    repo_path: str
    datasets: tuple[str, ...]
    sha256: str | None = None
    git_blob: str | None = None
    size: int | None = None

    def __post_init__(self) -> None:
        if (self.sha256 is None) == (self.git_blob is None):
            raise ValueError(f"{self.relpath}: give exactly one of sha256 and git_blob")
        if not re.fullmatch(r"[0-9a-f]{40}", self.commit):
            raise ValueError(f"{self.relpath}: commit must be a full 40-hex id, got {self.commit!r}")

    @property
    def algorithm(self) -> str:
        return "sha256" if self.sha256 is not None else "git-blob"

    @property
    def expected(self) -> str:
        return self.sha256 if self.sha256 is not None else str(self.git_blob)

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{self.repo_path}"


def _manifest(dataset: str, relpath: str, origin: tuple[str, str], path: str, size: int, sha256: str) -> Source:
    return Source(relpath, origin[0], origin[1], path, (dataset,), sha256=sha256, size=size)


def _missing(dataset: str, relpath: str, origin: tuple[str, str], path: str, git_blob: str) -> Source:
    return Source(relpath, origin[0], origin[1], path, (dataset,), git_blob=git_blob)


_SUP = "finetune/supervisedRE/data"
_FEW = "finetune/fewshotRE/FewRel/data"

# Every file of the datasets MANIFEST (sha256) and MISSING list (git blob id).
SOURCES: tuple[Source, ...] = (
    _manifest("semeval", "semeval/train.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/semeval/train.txt", 1_903_726, "5a53be5e2dfbf865f77c287deec7b9e8a12be333ffb6157bfb5a692250a06220"),
    _manifest("semeval", "semeval/dev.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/semeval/dev.txt", 435_442, "a91170e7c19354a895a58e582bf7fad43994467a0d27a8632319a70840b88e02"),
    _manifest("semeval", "semeval/test.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/semeval/test.txt", 793_305, "1f33efe3db4dc6ff99f52416331682f3ec6759de526786d3629e6b43f8020795"),
    _manifest("semeval", "semeval/rel2id.json", RE_CONTEXT_OR_NAMES, f"{_SUP}/semeval/rel2id.json", 550, "0c2c724d3a81fb81b02cd8d5ad0200456041737a4309ab05809d2df5727c2d73"),
    _manifest("semeval", "semeval/train_0.01.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/semeval/train_0.01.txt", 21_065, "a335781b0c30925bfc35f1ab8a6696fe57db865e6ff11cfb1affb2e7a41a8004"),
    _manifest("semeval", "semeval/train_0.1.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/semeval/train_0.1.txt", 195_389, "6d41bc49468c5bf0259b08a04ddd615bd98a4d69586ece3618b43451d0d95ddd"),
    _manifest("chemprot", "chemprot/train.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/chemprot/train.txt", 1_121_208, "ab17b85c4fb869b2338d7c9617414e63f3c7225e5005920b18d9cd996f1049d8"),
    _manifest("chemprot", "chemprot/dev.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/chemprot/dev.txt", 678_657, "bfe8f39e5146ad4bb16b23707dade850546a305047bc666f6f6824c6a7e3df2f"),
    _manifest("chemprot", "chemprot/test.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/chemprot/test.txt", 960_369, "372249c85ffea6d9a18dc5168cf45841b3d79b03412d6c620381cfc0dd3d6d49"),
    _manifest("chemprot", "chemprot/rel2id.json", RE_CONTEXT_OR_NAMES, f"{_SUP}/chemprot/rel2id.json", 268, "a27ebb33dcfaa01b3cd5024cd5727539407d5366314759b655db93749e3534ea"),
    _manifest("chemprot", "chemprot/train_0.01.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/chemprot/train_0.01.txt", 12_826, "ff4f6f7cb1c627fce252dff8a20bd2c11bd5c328f5ec1315bf94d4e0e1b4ccae"),
    _manifest("chemprot", "chemprot/train_0.1.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/chemprot/train_0.1.txt", 112_856, "386b33045f6e95debc3b1caf3ec7039df95eff49a1e40d40213e8e144ba14e95"),
    _missing("wiki80", "wiki80/train.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/wiki80/train.txt", "6f49ef49d4236ced94cbdffb2e15f36d8b8087f0"),
    _manifest("wiki80", "wiki80/dev.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/wiki80/dev.txt", 2_346_457, "f27fccbaa96f9c4f25fde1cd2e414bdc14e4fce872462e049a0d23a4d3541804"),
    _missing("wiki80", "wiki80/test.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/wiki80/test.txt", "3ef1e996268e975c071f1523e9f5815ec99249d4"),
    _manifest("wiki80", "wiki80/train_0.01.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/wiki80/train_0.01.txt", 168_747, "ea53601af25c8a86155a8f38076ea72b369f7237f15b7b1b5582f6602ac88544"),
    _manifest("wiki80", "wiki80/train_0.1.txt", RE_CONTEXT_OR_NAMES, f"{_SUP}/wiki80/train_0.1.txt", 1_633_246, "3cd866c89112915adeef7144eed079545a4fef6a4de74edcb8d2a3a69ab3bb95"),
    _manifest("wiki80", "wiki80/rel2id.json", RE_CONTEXT_OR_NAMES, f"{_SUP}/wiki80/rel2id.json", 1_791, "070dbe2e818498e887d703d80247a8381b840dd5325e2547f54753a2d9801409"),
    _manifest("wiki80", "wiki80/type2id.json", RE_CONTEXT_OR_NAMES, f"{_SUP}/wiki80/type2id.json", 680, "52d7dd75311fe092b978321db70672be2f1c328d5bd0423874ecae47a5e4994a"),
    _missing("fewrel", "fewrel/train_wiki.json", RE_CONTEXT_OR_NAMES, f"{_FEW}/train_wiki.json", "4fee283724b455bab1fcbf76bfdef02283bb44f5"),
    _manifest("fewrel", "fewrel/val_wiki.json", RE_CONTEXT_OR_NAMES, f"{_FEW}/val_wiki.json", 3_534_147, "76bb44c2485b6faed358a3ce040eadafcc8a8835245cd7e6afc1bef672d4a0bf"),
    _manifest("fewrel-pubmed", "fewrel/val_pubmed.json", RE_CONTEXT_OR_NAMES, f"{_FEW}/val_pubmed.json", 432_600, "fc0f13b534f6664fe0d8aec231d7590313bc6510d00dbc1b6746147f6a2b46e6"),
    # Relation names and descriptions, needed by both FewRel 1.0 and the FewRel 2.0 PubMed set.
    Source("fewrel/pid2name.json", FEWREL[0], FEWREL[1], "data/pid2name.json", ("fewrel", "fewrel-pubmed"),
           sha256="eeedd25512a8e4c2bc06b78009836d27de81807bcba6ed929debd5cd713c07ea", size=80_278),
)

DATASETS: tuple[str, ...] = ("semeval", "chemprot", "wiki80", "fewrel", "fewrel-pubmed")

TACRED_HELP = (
    "TACRED is distributed by the Linguistic Data Consortium under licence (LDC2018T24) and cannot be "
    "downloaded by recon. If you have a copy, point recon at it: put train.json, dev.json and test.json "
    "in D/tacred/ and pass --data-dir D (or set RECON_DATA_DIR=D), or pass --path DIR --kind tacred "
    "to the commands that read a dataset."
)


@dataclass(frozen=True)
class Verification:
    """Outcome of checking a file against its pinned digest."""

    algorithm: str
    expected: str
    actual: str

    @property
    def ok(self) -> bool:
        return self.actual == self.expected

    def __str__(self) -> str:
        if self.ok:
            return f"{self.algorithm} ok"
        return f"{self.algorithm} mismatch (got {self.actual[:12]}, want {self.expected[:12]})"


@dataclass
class FetchResult:
    """What happened to one file; ``bytes`` counts what was transferred in this run."""

    relpath: str
    path: str
    url: str
    datasets: tuple[str, ...]
    status: str
    bytes: int = 0
    size: int | None = None
    verification: str = ""
    detail: str = ""

    def as_dict(self) -> dict:
        out = asdict(self)
        out["datasets"] = list(self.datasets)
        return out


def git_blob_id(path: str | Path) -> str:
    """The id git gives the file's content: sha1 of ``b"blob <size>\\0"`` followed by the bytes."""
    size = os.path.getsize(path)
    digest = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: str | Path, source: Source) -> Verification:
    """Check ``path`` against the digest pinned for ``source``."""
    actual = file_sha256(path) if source.sha256 is not None else git_blob_id(path)
    return Verification(source.algorithm, source.expected, actual)


def select_sources(names: Iterable[str] | None, sources: Sequence[Source] = SOURCES) -> list[Source]:
    """The files of the named datasets (all fetchable ones when ``names`` is empty), each once.

    Raises ``LicensedDataset`` for TACRED and ``DatasetNotFound`` for a name recon does not know.
    """
    wanted = [name.strip().lower() for name in (names or [])]
    if "tacred" in wanted:
        raise LicensedDataset(TACRED_HELP)
    unknown = [name for name in wanted if name not in DATASETS]
    if unknown:
        raise DatasetNotFound(
            f"unknown dataset(s) {', '.join(repr(n) for n in unknown)}; known: "
            f"{', '.join(DATASETS)} (and tacred, which must be supplied by the user)"
        )
    chosen = set(wanted or DATASETS)
    return [source for source in sources if chosen.intersection(source.datasets)]


def fetch(
    names: Iterable[str] | None,
    data_dir: str | Path,
    base_url: str = DEFAULT_BASE_URL,
    **options,
) -> list[FetchResult]:
    """Download the missing or corrupt files of the named datasets into ``data_dir``.

    ``options`` are passed to :func:`fetch_sources` (timeout, retries, backoff, progress).
    """
    return fetch_sources(select_sources(names), data_dir, base_url, **options)


def fetch_sources(
    sources: Sequence[Source],
    data_dir: str | Path,
    base_url: str = DEFAULT_BASE_URL,
    *,
    timeout: float = 30.0,
    retries: int = 3,
    backoff: float = 1.0,
    progress: bool | None = None,
) -> list[FetchResult]:
    """Make every file of ``sources`` present and verified under ``data_dir``.

    A file that already verifies is left alone; one that does not is re-downloaded into a
    temporary file and replaced only if the new copy verifies. Raises ``SourceUnreachable`` when
    the server cannot be reached after ``retries`` further attempts (backoff doubling from
    ``backoff`` seconds); other per-file failures are reported as ``status == "failed"``.
    """
    root = Path(data_dir).expanduser()
    show = sys.stderr.isatty() if progress is None else progress
    results = []
    for source in sources:
        target = root / source.relpath
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReconError(f"cannot create {target.parent} for {source.relpath}: {exc}") from exc
        note = ""
        if target.exists():
            found = verify(target, source)
            if found.ok:
                results.append(FetchResult(source.relpath, str(target), source.url(base_url), source.datasets,
                                           STATUS_PRESENT, 0, target.stat().st_size, str(found)))
                continue
            note = f"existing file failed verification ({found}); "
        result = _download(source, target, base_url, timeout=timeout, retries=retries, backoff=backoff,
                           progress=show)
        if note:
            kept = "replaced it" if result.status != STATUS_FAILED else "kept the old file"
            result.detail = note + kept + (f"; {result.detail}" if result.detail else "")
        results.append(result)
    return results


class _Retry(Exception):
    """A transfer problem worth another attempt (dropped connection, short body, 5xx)."""


def _download(source: Source, target: Path, base_url: str, *, timeout: float, retries: int,
              backoff: float, progress: bool) -> FetchResult:
    """Fill ``<target>.part`` (resuming what is there), verify it, then move it into place."""
    part = target.with_name(target.name + PART_SUFFIX)
    url = source.url(base_url)
    result = FetchResult(source.relpath, str(target), url, source.datasets, STATUS_DOWNLOADED)
    # Old bytes in a leftover .part may themselves be bad: if a resumed copy fails, start once from zero.
    for attempt in range(2):
        if attempt and part.exists():
            part.unlink()
        try:
            fetched, resumed = _transfer_with_retries(source, part, url, timeout=timeout, retries=retries,
                                                      backoff=backoff, progress=progress)
        except urllib.error.HTTPError as exc:
            result.status, result.detail = STATUS_FAILED, f"HTTP {exc.code} {exc.reason}"
            return result
        result.bytes += fetched
        found = verify(part, source)
        result.verification = str(found)
        if found.ok:
            result.size = part.stat().st_size
            os.replace(part, target)
            if resumed and not attempt:
                result.status = STATUS_RESUMED
            return result
        if not resumed:
            break
    part.unlink(missing_ok=True)
    result.status = STATUS_FAILED
    result.detail = f"downloaded content failed verification; nothing written to {target.name}"
    return result


def _transfer_with_retries(source: Source, part: Path, url: str, *, timeout: float, retries: int,
                           backoff: float, progress: bool) -> tuple[int, bool]:
    """Run :func:`_transfer` until the body is complete.

    Returns (bytes fetched, whether the final file keeps bytes a previous run left in the ``.part``).
    """
    fetched = 0
    kept_old = part.exists() and part.stat().st_size > 0
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        if source.size is not None and offset >= source.size:
            return fetched, kept_old  # complete already: let verification decide
        try:
            got, honoured = _transfer(url, part, offset, timeout=timeout, progress=progress, label=source.relpath)
            return fetched + got, kept_old and honoured
        except urllib.error.HTTPError as exc:
            if exc.code == 416:  # the .part already holds everything the server has
                return fetched, kept_old
            if exc.code < 500 and exc.code != 429:
                raise
            reason: object = f"HTTP {exc.code} {exc.reason}"
        except _Retry as exc:
            got, honoured, reason = exc.args
            fetched += got
            kept_old = kept_old and honoured
        except urllib.error.URLError as exc:
            reason = exc.reason
        except (OSError, http.client.HTTPException) as exc:
            reason = exc
        if attempt < retries:
            time.sleep(backoff * 2 ** attempt)
    kept = part.exists() and part.stat().st_size > 0
    raise SourceUnreachable(
        f"could not download {source.relpath} from {url} after {retries + 1} attempt(s): {reason}. "
        "This machine seems to be offline or cannot reach the server. "
        + (f"The partial file {part} was kept; running the command again resumes it. " if kept else "")
        + "To work without network access, copy the dataset files from a machine that has them (keeping the "
        "layout D/semeval/train.txt, D/fewrel/val_wiki.json, ...) and point recon at that folder with "
        "--data-dir D or RECON_DATA_DIR=D; `recon data fetch --base-url URL` also accepts a mirror "
        "laid out as URL/<repository>/<commit>/<path>."
    )


def _transfer(url: str, part: Path, offset: int, *, timeout: float, progress: bool, label: str) -> tuple[int, bool]:
    """One HTTP request: append to ``part`` from ``offset`` if the server honours Range, else restart.

    Returns (bytes written, whether the Range was honoured). A body shorter than announced raises
    ``_Retry`` after keeping what arrived, so the next attempt resumes from there.
    """
    headers = {"User-Agent": "recon-fetch", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        status = getattr(response, "status", None) or 200
        honoured = False
        if offset and status == 206:
            honoured = _range_start(response.headers.get("Content-Range")) == offset
            if not honoured:
                part.unlink(missing_ok=True)
                raise _Retry(0, False, f"server answered an unexpected range {response.headers.get('Content-Range')!r}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        written = 0
        start = offset if honoured else 0
        total = start + expected if expected is not None else None
        with open(part, "ab" if honoured else "wb") as out, tqdm(
            total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
            disable=not progress, file=sys.stderr, leave=False,
        ) as bar:
            try:
                while chunk := response.read(CHUNK_BYTES):
                    out.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as exc:
                raise _Retry(written, honoured, exc) from exc
        if expected is not None and written < expected:
            raise _Retry(written, honoured, f"connection closed after {written} of {expected} bytes")
        return written, honoured


def _range_start(content_range: str | None) -> int | None:
    """First byte offset of a ``Content-Range: bytes A-B/N`` header, or None if absent or odd."""
    match = re.match(r"\s*bytes\s+(\d+)-", content_range or "")
    return int(match.group(1)) if match else None
