"""Prompt records, deterministic splits, and loaders for the bundled and public prompt sets.

Data flows one way: files -> :class:`PromptRecord` lists -> notebooks, training, evaluation.

* Bundled sets (``data/bundled/*.jsonl``) ship with the repo and need nothing else.
* Public sets are resolved file by file (:func:`resolve_file`): the offline mirror ``$DISPSAFE_DATA``, then the
  cache ``$DISPSAFE_CACHE/datasets``, then a download from a pinned upstream commit, always checked by sha256.
* Splits come from a hash of the normalised text (:func:`assign_split`), so one prompt lands in one split in
  every dataset that contains it, whatever seed a caller samples with (seeds only choose subsets). Evaluation-only
  sets are always ``"test"`` and can never feed training (:func:`training_prompts`, :func:`assert_trainable`);
  training texts that (nearly) contain an evaluated prompt are dropped (:func:`decontaminate`).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import http.client
import io
import itertools
import json
import logging
import os
import random
import re
import shutil
import tempfile
import unicodedata
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from dispsafe_nb.names import unknown_name_message
from dispsafe_nb.near_duplicates import NEAR_DUPLICATE_THRESHOLD, NearDuplicateIndex
from dispsafe_nb.paths import REPO_ROOT, cache_root

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)
# The one split assignment of the project. v1 hashed the caller's sampling seed into the split, so two callers with
# different seeds (the judge guard with seed 1, evaluation with seed 0) saw different test sets and leaked prompts
# into each other's training data. Artifacts record this version; one trained under another refuses to load.
SPLIT_VERSION = "v2-seedless"
DEFAULT_BUNDLED_DIR = REPO_ROOT / "data" / "bundled"
DOWNLOAD_TIMEOUT_S = 30.0
# ToxiGen scaffolds hold short fragments only when a line is malformed; real statements are >= 20 chars.
MIN_STATEMENT_CHARS = 10


# ---------------------------------------------------------------------------------------------------------
# Errors and warnings
# ---------------------------------------------------------------------------------------------------------


class DataWarning(UserWarning):
    """Something in the data was dropped, repaired, or could not be verified."""


def _warn(message: str) -> None:
    # stacklevel=3: attribute the warning to the caller of the function that warns, not to this helper.
    warnings.warn(message, DataWarning, stacklevel=3)


class DatasetNotAvailableError(FileNotFoundError):
    """A public file is in neither the mirror nor the cache, and could not be downloaded."""


class ChecksumError(ValueError):
    """A file's sha256 differs from the pinned (or first-use) value."""


class DataFormatError(ValueError):
    """A data file could not be parsed (encoding, columns, JSON)."""


class EvalOnlyError(ValueError):
    """Evaluation-only data (or the test split) was about to be used for training."""


# ---------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromptRecord:
    """One prompt with its label and provenance."""

    id: str  # stable, e.g. "advbench-0042", "bundled_harmful-harm-001"
    text: str
    is_harmful: bool
    category: str
    source: str  # dataset name, e.g. "advbench"
    split: str  # "train" | "val" | "test" (evaluation-only sets: always "test")
    checks: tuple = ()  # verifiable-instruction checks (tuple of dicts), bundled_verifiable only
    target: str | None = None  # e.g. AdvBench/JBB "Sure, here is ..." target, if the source has one
    form: str = ""  # phrasing form ("imperative", "question", ...), the bundled *_forms sets only
    # Records sharing a group share a split (a harmful request and its borderline-safe twin); "" = on its own.
    group: str = ""


RECORD_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(PromptRecord))


def records_to_frame(records: Iterable[PromptRecord]) -> pd.DataFrame:
    """One row per record, one column per :class:`PromptRecord` field."""
    records = list(records)
    return pd.DataFrame(
        {col: [getattr(r, col) for r in records] for col in RECORD_COLUMNS}, columns=RECORD_COLUMNS
    )


# ---------------------------------------------------------------------------------------------------------
# Normalisation and splits
# ---------------------------------------------------------------------------------------------------------

_TRAILING_PUNCT = ".!?;:,\u3002 "


def normalize_text(text: str) -> str:
    """Lowercase, NFKC, collapse whitespace, strip, and drop trailing punctuation (dedup / split key)."""
    t = " ".join(unicodedata.normalize("NFKC", text).lower().split())
    return t.rstrip(_TRAILING_PUNCT)


def _check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be {len(SPLITS)} non-negative numbers summing to 1, got {fractions!r}"
        )


def check_seed(seed: Any, name: str = "seed") -> int:
    """A seed must be a plain int (not a bool, float or string): it picks subsets and must mean one thing."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name} must be an int, got {seed!r} ({type(seed).__name__})")
    return seed


def assign_split(text: str, *, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> str:
    """Split of a prompt from a stable hash of its normalised text, the same for every caller and every seed.

    Hashing the *normalised* text (not an id) is what keeps a prompt that several datasets share (JBB reuses
    AdvBench items, for instance) in the same split everywhere. No seed enters the hash (`SPLIT_VERSION`).
    """
    fractions = tuple(float(f) for f in fractions)
    _check_fractions(fractions)
    return _split_cached(text, fractions)


@functools.lru_cache(maxsize=1 << 18)
def _split_cached(text: str, fractions: tuple[float, ...]) -> str:
    # Cached: Alpaca alone is 31k texts, and notebooks reload the same sets often.
    digest = hashlib.sha256(f"dispsafe-split:{SPLIT_VERSION}:{normalize_text(text)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for split, fraction in zip(SPLITS, fractions, strict=True):
        cumulative += fraction
        if u < cumulative:
            return split
    return SPLITS[-1]  # only reachable through float rounding at u ~ 1


def _check_split(split: str | None) -> None:
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")


def _sample(records: Sequence[PromptRecord], limit: int | None, seed: int) -> list[PromptRecord]:
    """At most `limit` records, chosen with `seed`, in their original order."""
    check_seed(seed)
    if limit is None or limit >= len(records):
        return list(records)
    if limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    keep = sorted(random.Random(seed).sample(range(len(records)), limit))
    return [records[i] for i in keep]


# ---------------------------------------------------------------------------------------------------------
# Remote files: registry and resolution (mirror -> cache -> download)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteFile:
    """A public file pinned to a commit; `local_path` is its place in the mirror and the cache."""

    local_path: str
    repo: str
    commit: str
    path: str
    sha256: str | None  # None: not pinned; trusted on first download and recorded in a .sha256 sidecar

    @property
    def url(self) -> str:
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.path}"


_ADVBENCH = ("Matias222/llm-ataques", "098262edf85f807224e70ecd87b9d83716bf6b73")
_XSTEST = ("paul-rottger/exaggerated-safety", "d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d")
_REFUSAL_DIRECTION = ("andyrdt/refusal_direction", "9d852fae1a9121c78b29142de733cb1340770cc3")
_TOXIGEN = ("microsoft/TOXIGEN", "01517e814639e0334c920a3c502036c8158aac87")
# Commits for the three sets outside the mirror: pins seen in other public code that downloads these files
# (HarmBench/jailbreak_llms pins were seen for sibling files in the same folder). No sha256 was available.
_HARMBENCH = ("centerforaisafety/HarmBench", "1751dd591e3be4bb52cab4d926977a61e304aba5")
_STRONGREJECT = ("alexandrasouly/strongreject", "3432b2d696b428f242bd507df96d80f686571d5e")
_JAILBREAK_LLMS = ("verazuo/jailbreak_llms", "09ab5ecb9632087119af25a04b88b0f496c989be")

TOXIGEN_SHA256: dict[str, str] = {
    "hate_asian": "0504967034122b691c16dbef10db3acb16492808ecc66d8cd2b2ae87454fd655",
    "hate_bisexual": "09a5b6995d0cd0ba940ae9f9d67e8db1451352dcf99ee273315efc34915fc1e3",
    "hate_black": "29ef85c5610d77a3a4bb050826ffb6e124ee48e11f5b63d34b29d616ef2ee1c3",
    "hate_chinese": "7f99029bad4f71caff707787d6799d1d654fee140f22418691d1244e81ed2b21",
    "hate_immigrant": "bebb38d8786f498ca2153f965cdfba14e0490d5216781091106e5ac8ebbe0574",
    "hate_jewish": "f5bdf83ef8fd32435241cc5fcfc337c0a57bcf64eb7fb4aa3c8fe15eb86f1fd2",
    "hate_latino": "60988864d728cc7b1644a72419181efc1d82b2342f636a5e76f34805e4a88537",
    "hate_lgbtq": "7fb7da0d4ad1a485824111ab60f6030f01dd92dbc9342c76534c78faec061a16",
    "hate_mental_disability": "5a71f51bf998c5111b5dd6d0b7d7edbaa445f27defbc1fdb798dd920974ad3e2",
    "hate_mexican": "2fad743ced369e4a280165b7ea909f8cb30921840cbe5f9f454243cf9e4dcfd5",
    "hate_middle_east": "29ffcca6defd3e4f2edd2237417c7617a3c7380de8f9c6cf13d8c087fa595223",
    "hate_muslim": "aaa18a9bf72928f71cf3d0d8d4dfa298faeb015a8580f5c7e21ef7afaae3241a",
    "hate_native_american": "01c2077f1007268ca11588d08f909ed9c01178148205ae417618d276227b9bbc",
    "hate_physical_disability": "8cada46239a52a741faf47677d1ffbfa06dc31d3e480a03935a5aec89ea02dee",
    "hate_trans": "6188dfd52082e552230a1332e2bf83a23e8410c5f353d32dca79f259c8daf8b8",
    "hate_women": "eecdf3006847c267b9399045ce2fe002f884fe5b682dbef450f3477d7bb24497",
    "neutral_asian": "a5f0c58ae51dc8771d1779009ffc3017c5071c529b01f260600fa96c164ceb44",
    "neutral_bisexual": "8a3391bb9a178295f619c3e92ba9bc177225c392d90ac9f4ab5702c4140d6e51",
    "neutral_black": "8e1da39bf32818c14156f4de32ef6a35f701e1737540dafb02bdf8eb03206a6b",
    "neutral_chinese": "aad50dde2f68d75804e44b939a700b8e37ef93a152cae1a045f8881f89c7e982",
    "neutral_immigrant": "1807799ed9e45c428792da879f83d874e3f589c63b6fd746716fafe2b117c3d4",
    "neutral_jewish": "c804dc98c4a7d90105a9848a66cde4eb05db9a63a8d2668387e46bba90c28380",
    "neutral_latino": "7fad9d0003e54e5f18c1dafb7e21b2295dae5bb7290e9c649eadb7a450b80957",
    "neutral_lgbtq": "7cefb606353cfff8c9ee4af9b2044f039e698dc8117b7c9414dd02dedca51ba9",
    "neutral_mental_disability": "8f513551d7c86c3fd6df5d0a4bb8fd831c45c24d917d69ab3a61f1a984edf3d0",
    "neutral_mexican": "e16aaa8a4606b3bf08139b9c91067cb63d620dd5a3a94e63b8ebc3f4198b1597",
    "neutral_middle_east": "a4f23dfbe5bd0dec6a2018b2fe1ca9805d2a7ca76791da5300c72e6bcdabcdf9",
    "neutral_muslim": "d378bc96f388cef1be42954246b67955dfe3d42cfcbf2ffc2924856c2fb933cd",
    "neutral_native_american": "8affc8490fb2fac8ad72041cce775fc9442ebea95a64a7a2274825e1231ef265",
    "neutral_physical_disability": "30ae4d6774054136a635cd9097dd4fe530ec2f407932f775e8093afa795cff8e",
    "neutral_women": "dfad74fee637cd35415fc9b3a0b8d27d799e5613da5d9be0fdf93774fe813208",
}


def _remote_files() -> dict[str, RemoteFile]:
    """Registry of public files, keyed by their mirror-layout path (values from the mirror's MANIFEST.md)."""
    entries = [
        RemoteFile(
            "advbench/harmful_behaviors.csv",
            *_ADVBENCH,
            "data/advbench/harmful_behaviors.csv",
            "6cd1a5c63c07610d7eb67307772ee5606017ee950b5770ab288a2c487489d3e1",
        ),
        RemoteFile(
            "xstest/xstest_prompts.csv",
            *_XSTEST,
            "xstest_prompts.csv",
            "11783fb294ed017473ee53c207d71f2161c7672c8d0b037501e78387f801cb5a",
        ),
        RemoteFile(
            "jbb_behaviors/harmful-behaviors.csv",
            *_REFUSAL_DIRECTION,
            "dataset/raw/jailbreakbench.csv",
            "45e9a8923b28f547bb372fbaa9af7df8b38c818a80ae50c3bab97704197ff516",
        ),
        RemoteFile(
            "jbb_behaviors/benign-behaviors.csv",
            "Baisayan/hack",
            "2b37da1c255e43e16a74ecd3e51c99ea992b5237",
            "data/benign-behaviors.csv",
            "c0958ac974fb6629527aeff6c81c88154a877190d07313ac377d36951fde5d3e",
        ),
        RemoteFile(
            "alpaca/alpaca_no_input_instructions_refusal_direction.json",
            *_REFUSAL_DIRECTION,
            "dataset/processed/alpaca.json",
            "c4ce1bdc5c9b92caabcb171c27c7ec1e79832836bae10291d7c8ab8c6245f600",
        ),
        RemoteFile(
            "harmbench/harmbench_behaviors_text_all.csv",
            *_HARMBENCH,
            "data/behavior_datasets/harmbench_behaviors_text_all.csv",
            None,
        ),
        RemoteFile(
            "strongreject/strongreject_dataset.csv",
            *_STRONGREJECT,
            "strongreject_dataset/strongreject_dataset.csv",
            None,
        ),
        RemoteFile(
            "jailbreak_llms/jailbreak_prompts_2023_12_25.csv",
            *_JAILBREAK_LLMS,
            "data/prompts/jailbreak_prompts_2023_12_25.csv",
            None,
        ),
    ]
    entries += [
        RemoteFile(f"toxigen_prompts/{stem}_1k.txt", *_TOXIGEN, f"prompts/{stem}_1k.txt", sha)
        for stem, sha in TOXIGEN_SHA256.items()
    ]
    return {rf.local_path: rf for rf in entries}


REMOTE_FILES: dict[str, RemoteFile] = _remote_files()


def _unknown_name_error(kind: str, name: str, known: Iterable[str]) -> ValueError:
    return ValueError(unknown_name_message(kind, name, known))


def remote_file(key: str | RemoteFile) -> RemoteFile:
    """Look up a registered public file by its mirror-layout path."""
    if isinstance(key, RemoteFile):
        return key
    if key not in REMOTE_FILES:
        raise _unknown_name_error("remote file", key, REMOTE_FILES)
    return REMOTE_FILES[key]


def mirror_dir() -> Path | None:
    """The offline mirror ``$DISPSAFE_DATA``, or None when unset."""
    raw = os.environ.get("DISPSAFE_DATA")
    if not raw:
        return None
    path = Path(raw).expanduser()
    # Notebooks run from notebooks/, tests from the repo root: a relative path like "../shared/datasets"
    # is meant relative to the repo, so fall back to that when it does not exist relative to the cwd.
    if not path.is_absolute() and not path.exists() and (REPO_ROOT / path).exists():
        path = REPO_ROOT / path
    return path


def cache_dir() -> Path:
    """Download cache: ``$DISPSAFE_CACHE/datasets`` (default ``~/.cache/dispsafe/datasets``)."""
    return cache_root() / "datasets"


def _downloads_disabled() -> bool:
    return os.environ.get("DISPSAFE_OFFLINE", "").strip().lower() in {"1", "true", "yes"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _read_sidecar(path: Path) -> str | None:
    """Hash recorded on first use for an unpinned file (None if absent or malformed)."""
    try:
        value = _sidecar(path).read_text(encoding="ascii").split()[0].lower()
    except (OSError, IndexError, UnicodeDecodeError):
        return None
    return value if re.fullmatch(r"[0-9a-f]{64}", value) else None


def _write_sidecar(path: Path, digest: str) -> None:
    _sidecar(path).write_text(f"{digest}  {path.name}\n", encoding="ascii")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _download(url: str, dest: Path) -> None:
    """Fetch `url` into `dest` (module-level so tests can monkeypatch it; tests never touch the network)."""
    request = urllib.request.Request(url, headers={"User-Agent": "dispsafe"})
    with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out)


def _verify_mirror(path: Path, rf: RemoteFile) -> None:
    """A mirror file must match its pin: a silently different benchmark would corrupt every number."""
    if rf.sha256 is None:
        return
    actual = _sha256(path)
    if actual != rf.sha256:
        raise ChecksumError(
            f"{path} (from DISPSAFE_DATA) has the wrong sha256: expected {rf.sha256}, got {actual}. "
            f"The mirror holds a different version of {rf.local_path} than the one pinned ({rf.url})."
        )


def _cached_file_ok(cached: Path, expected: str | None) -> bool:
    """True if the cached file can be used; a corrupted one is deleted so it is downloaded again."""
    try:
        actual: str | None = _sha256(cached)
    except OSError:
        actual = None  # unreadable (permissions, a directory in its place, ...)
    if actual is not None and expected is None:
        # Put in the cache by hand, with no pin and no sidecar: trust it now and remember its hash.
        _write_sidecar(cached, actual)
        _warn(f"{cached} has no pinned checksum; recorded sha256 {actual} on first use")
        return True
    if actual is not None and actual == expected:
        return True
    _warn(
        f"cached file {cached} is corrupted (sha256 {actual or 'unreadable'}, expected {expected}); "
        "deleting it and downloading it again"
    )
    _remove(cached)
    return False


def _not_available(rf: RemoteFile, cached: Path, reason: str) -> DatasetNotAvailableError:
    mirror = mirror_dir()
    where = f"{mirror / rf.local_path} (not there)" if mirror else "unset"
    return DatasetNotAvailableError(
        f"{rf.local_path} is not available. Looked in: DISPSAFE_DATA mirror: {where}; cache: {cached} "
        f"(not there); download from {rf.url}: {reason}. Set DISPSAFE_DATA to a folder with the mirror layout "
        "(e.g. ../shared/datasets) or go online."
    )


def _download_to_cache(rf: RemoteFile, cached: Path, expected: str | None) -> Path:
    """Download to a temp file beside the cache entry, verify, then move it in atomically."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{cached.name}.", suffix=".part", dir=cached.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            _download(rf.url, tmp)
        except (OSError, http.client.HTTPException) as exc:  # URLError, HTTPError, timeouts, resets
            raise _not_available(rf, cached, f"failed ({exc})") from exc
        actual = _sha256(tmp)
        if expected is not None and actual != expected:
            origin = "pinned" if rf.sha256 else f"recorded on first use in {_sidecar(cached)}"
            raise ChecksumError(
                f"downloaded {rf.local_path} from {rf.url} has the wrong sha256: expected {expected} ({origin}), "
                f"got {actual}. Nothing was kept."
            )
        os.replace(tmp, cached)
    finally:
        tmp.unlink(missing_ok=True)
    if expected is None:
        _write_sidecar(cached, actual)
        _warn(
            f"{rf.local_path} has no pinned checksum; trusting this first download (sha256 {actual}, "
            f"recorded in {_sidecar(cached)}); later downloads must match it"
        )
    return cached


def resolve_file(key: str | RemoteFile, *, download: bool = True) -> Path:
    """Local path of a public file: mirror ``$DISPSAFE_DATA``, else a verified cache entry, else a download.

    `download=False` (or env ``DISPSAFE_OFFLINE=1``) never touches the network.
    """
    rf = remote_file(key)
    mirror = mirror_dir()
    if mirror is not None and (mirror / rf.local_path).is_file():
        _verify_mirror(mirror / rf.local_path, rf)
        return mirror / rf.local_path
    cached = cache_dir() / rf.local_path
    expected = rf.sha256 or _read_sidecar(cached)
    if cached.exists() and _cached_file_ok(cached, expected):
        return cached
    if not download or _downloads_disabled():
        raise _not_available(rf, cached, "skipped (downloads disabled)")
    return _download_to_cache(rf, cached, expected)


# ---------------------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    """UTF-8 text (a BOM is tolerated); anything else is a clear error rather than mojibake labels."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataFormatError(
            f"{path} is not valid UTF-8 (undecodable byte at offset {exc.start}); data files must be UTF-8 - "
            "re-save it as UTF-8."
        ) from exc


def _read_csv(path: Path, required: Sequence[str]) -> list[dict[str, str]]:
    """CSV rows with lower-cased, stripped headers (JBB spells `Goal` and `goal`)."""
    csv.field_size_limit(1 << 24)  # jailbreak templates can be long; the default 128 kB limit is too small
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    header = [(h or "").strip().lower() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataFormatError(f"{path} lacks column(s) {missing}; found {reader.fieldnames}")
    return [
        {h: (v or "") for h, v in zip(header, (row.get(k) for k in reader.fieldnames or []), strict=True)}
        for row in reader
    ]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(f"{path}:{lineno} is not valid JSON ({exc.msg})") from exc
        if not isinstance(obj, dict):
            raise DataFormatError(f"{path}:{lineno} must be a JSON object, got {type(obj).__name__}")
        rows.append(obj)
    return rows


def _build(source: str, path: Path, rows: Iterable[dict[str, Any]]) -> tuple[PromptRecord, ...]:
    """Records (split not yet assigned) from row dicts; empty texts are dropped with a warning."""
    records, empty = [], 0
    for row in rows:
        text = str(row.get("text") or "").strip()
        if not text:
            empty += 1
            continue
        records.append(PromptRecord(**{**row, "text": text, "source": source, "split": ""}))
    if empty:
        _warn(f"{path}: dropped {empty} empty or whitespace-only prompt(s) from {source}")
    return tuple(records)


def _dedupe(records: Iterable[PromptRecord]) -> tuple[PromptRecord, ...]:
    """Keep the first record of each normalised text."""
    seen: set[str] = set()
    out = []
    for r in records:
        key = normalize_text(r.text)
        if key not in seen:
            seen.add(key)
            out.append(r)
    return tuple(out)


@functools.lru_cache(maxsize=128)
def _parse_cached(parser: Callable[[Path], tuple[PromptRecord, ...]], path: str, mtime_ns: int, size: int):
    return parser(Path(path))


def _parse(parser: Callable[[Path], tuple[PromptRecord, ...]], path: Path) -> tuple[PromptRecord, ...]:
    """Parse once per file version (path + mtime + size): Alpaca and ToxiGen are re-read often in a notebook."""
    st = path.stat()
    return _parse_cached(parser, str(path.resolve()), st.st_mtime_ns, st.st_size)


def clear_caches() -> None:
    """Forget parsed files (the next load re-reads them)."""
    _parse_cached.cache_clear()
    _decontaminator_cached.cache_clear()


# ---------------------------------------------------------------------------------------------------------
# Parsers (path -> records without split)
# ---------------------------------------------------------------------------------------------------------


def _parse_advbench(path: Path) -> tuple[PromptRecord, ...]:
    rows = _read_csv(path, ("goal", "target"))
    return _build(
        "advbench",
        path,
        (
            dict(
                id=f"advbench-{i:04d}",
                text=r["goal"],
                is_harmful=True,
                category="advbench",
                target=r["target"] or None,
            )
            for i, r in enumerate(rows)
        ),
    )


def _parse_xstest(path: Path) -> tuple[PromptRecord, ...]:
    rows = _read_csv(path, ("id", "prompt", "type", "label"))
    return _build(
        "xstest",
        path,
        (
            dict(
                id=f"xstest-{r['id'].strip() or i}",
                text=r["prompt"],
                is_harmful=r["label"].strip().lower() == "unsafe",
                category=r["type"].strip(),
            )
            for i, r in enumerate(rows)
        ),
    )


def _parse_jbb(path: Path, source: str, harmful: bool) -> tuple[PromptRecord, ...]:
    rows = _read_csv(path, ("goal", "target", "category"))
    return _build(
        source,
        path,
        (
            dict(
                id=f"{source}-{i:03d}",
                text=r["goal"],
                is_harmful=harmful,
                category=r["category"].strip(),
                target=r["target"] or None,
            )
            for i, r in enumerate(rows)
        ),
    )


def _parse_jbb_harmful(path: Path) -> tuple[PromptRecord, ...]:
    return _parse_jbb(path, "jbb_harmful", True)


def _parse_jbb_benign(path: Path) -> tuple[PromptRecord, ...]:
    return _parse_jbb(path, "jbb_benign", False)


_TRAILING_ESCAPED_NEWLINE = re.compile(r"(?:\\+n)+$")


def split_toxigen_line(line: str) -> list[str]:
    """Statements of one ToxiGen scaffold line (separated by the literal two characters backslash-n, then '-')."""
    out = []
    for part in line.split("\\n-"):
        part = part.strip()
        if part.startswith("-"):
            part = part[1:].strip()
        # hate_lgbtq has a doubly escaped break (file bytes `families\\n\n-`): drop the leftover backslash-n.
        part = _TRAILING_ESCAPED_NEWLINE.sub("", part).strip()
        if len(part) >= MIN_STATEMENT_CHARS:
            out.append(part)
    return out


def _parse_toxigen_file(path: Path) -> tuple[PromptRecord, ...]:
    stem = path.name.removesuffix(".txt").removesuffix("_1k")
    kind, _, group = stem.partition("_")
    harmful = kind == "hate"
    # Each of the ~1000 lines re-samples a small pool of seed statements: dedupe the strings before building
    # records (217k fragments in the mirror, 668 distinct statements).
    statements = list(
        dict.fromkeys(s for line in _read_text(path).splitlines() for s in split_toxigen_line(line))
    )
    records = _build(
        "toxigen",
        path,
        (
            # Ids from the text hash: stable even if parsing rules (e.g. the minimum length) change.
            dict(
                id=f"toxigen-{stem}-{hashlib.sha256(normalize_text(s).encode()).hexdigest()[:10]}",
                text=s,
                is_harmful=harmful,
                category=group,
            )
            for s in statements
        ),
    )
    return _dedupe(records)


def _parse_alpaca(path: Path) -> tuple[PromptRecord, ...]:
    try:
        items = json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path} is not valid JSON ({exc.msg})") from exc
    if not isinstance(items, list):
        raise DataFormatError(f"{path} must hold a JSON list of {{instruction, category}} objects")
    return _build(
        "alpaca",
        path,
        (
            dict(id=f"alpaca-{i:05d}", text=it.get("instruction"), is_harmful=False, category="alpaca")
            for i, it in enumerate(items)
        ),
    )


def _parse_harmbench(path: Path) -> tuple[PromptRecord, ...]:
    rows = _read_csv(path, ("behavior", "functionalcategory", "semanticcategory", "behaviorid"))
    # Only "standard" behaviors are stand-alone requests; "contextual" need their ContextString and
    # "copyright" ones are judged by a different criterion.
    return _build(
        "harmbench",
        path,
        (
            dict(
                id=f"harmbench-{r['behaviorid'].strip() or i}",
                text=r["behavior"],
                is_harmful=True,
                category=r["semanticcategory"].strip(),
            )
            for i, r in enumerate(rows)
            if r["functionalcategory"].strip().lower() == "standard"
        ),
    )


def _parse_strongreject(path: Path) -> tuple[PromptRecord, ...]:
    rows = _read_csv(path, ("category", "forbidden_prompt"))
    return _build(
        "strongreject",
        path,
        (
            dict(
                id=f"strongreject-{i:04d}",
                text=r["forbidden_prompt"],
                is_harmful=True,
                category=r["category"].strip(),
            )
            for i, r in enumerate(rows)
        ),
    )


def _is_true(value: str) -> bool:
    return str(value).strip().lower() in {"true", "1", "1.0"}


def _parse_jailbreak_templates(path: Path) -> tuple[PromptRecord, ...]:
    rows = _read_csv(path, ("prompt", "jailbreak"))
    records = _build(
        "jailbreak_templates",
        path,
        (
            dict(
                id=f"jailbreak_templates-{i:04d}",
                text=r["prompt"],
                is_harmful=True,
                category="jailbreak_template",
            )
            for i, r in enumerate(rows)
            if _is_true(r["jailbreak"])
        ),
    )
    return _dedupe(records)  # the same template is often posted on several platforms


# ---------------------------------------------------------------------------------------------------------
# Jailbreak templates
# ---------------------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(
    r"\[\s*insert\s+(?:your\s+)?prompt\s+here\s*\]|\[\s*prompt\s*\]|\{\{\s*prompt\s*\}\}|\{\s*prompt\s*\}",
    re.IGNORECASE,
)


def apply_jailbreak(template: str, request: str) -> str:
    """Put `request` into a jailbreak template's placeholder, or after the template if it has none."""
    if _PLACEHOLDER.search(template):
        return _PLACEHOLDER.sub(lambda _m: request, template)  # a function: no backslash escapes in `request`
    return f"{template.rstrip()}\n\n{request}"


# ---------------------------------------------------------------------------------------------------------
# Bundled sets
# ---------------------------------------------------------------------------------------------------------

BUNDLED_KINDS: tuple[str, ...] = (
    "harmful",
    "benign",
    "borderline",
    "verifiable",
    "harmful_forms",
    "borderline_forms",
)
FORMS: tuple[str, ...] = ("imperative", "question", "first_person", "roleplay", "indirect", "short", "long")
RESPONSE_FILES: dict[str, str] = {"refusal": "refusals.jsonl", "compliant": "compliant_openings.jsonl"}


def bundled_dir() -> Path:
    """The bundled data folder: ``$DISPSAFE_BUNDLED`` or ``<repo>/data/bundled``."""
    raw = os.environ.get("DISPSAFE_BUNDLED")
    return Path(raw).expanduser() if raw else DEFAULT_BUNDLED_DIR


def _bundled_file(name: str) -> Path:
    path = bundled_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"bundled file {path} not found (set DISPSAFE_BUNDLED to override the folder)"
        )
    return path


def _bundled_parser(kind: str) -> Callable[[Path], tuple[PromptRecord, ...]]:
    source = f"bundled_{kind}"

    def parse(path: Path) -> tuple[PromptRecord, ...]:
        rows = (
            dict(
                id=f"{source}-{obj.get('id', f'{i:04d}')}",
                text=obj.get("text"),
                is_harmful=kind.startswith("harmful"),
                category=str(obj.get("category") or kind),
                checks=tuple(dict(c) for c in obj.get("checks") or ()) if kind == "verifiable" else (),
                form=str(obj.get("form") or ""),
                # The *_forms twins share their split; the older bundled pairs were split by text (v2 splits).
                group=f"pair:{obj['pair']}" if kind.endswith("_forms") and obj.get("pair") else "",
            )
            for i, obj in enumerate(_read_jsonl(path))
        )
        return _build(source, path, rows)

    parse.__qualname__ = f"parse_{source}"
    return parse


# One parser object per kind, so the parse cache recognises repeated loads.
_BUNDLED_PARSERS = {kind: _bundled_parser(kind) for kind in BUNDLED_KINDS}


def load_response_texts(kind: str, split: str | None = None) -> list[str]:
    """Bundled response texts: kind "refusal" (refusals.jsonl) or "compliant" (compliant_openings.jsonl)."""
    if kind not in RESPONSE_FILES:
        raise _unknown_name_error("response kind", kind, RESPONSE_FILES)
    _check_split(split)
    path = _bundled_file(RESPONSE_FILES[kind])
    texts = [str(obj.get("text") or "").strip() for obj in _read_jsonl(path)]
    empty = sum(1 for t in texts if not t)
    if empty:
        _warn(f"{path}: dropped {empty} empty response text(s)")
    return [t for t in texts if t and (split is None or assign_split(t) == split)]


def load_refusal_texts(split: str | None = None) -> list[str]:
    """Bundled refusal texts (y_r candidates)."""
    return load_response_texts("refusal", split)


def load_compliant_texts(split: str | None = None) -> list[str]:
    """Bundled compliant response openings."""
    return load_response_texts("compliant", split)


# ---------------------------------------------------------------------------------------------------------
# Dataset registry
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetSpec:
    """How to load one named dataset (records without splits)."""

    name: str
    load: Callable[[bool], tuple[PromptRecord, ...]]  # download allowed? -> records
    description: str


def _public(key: str, parser: Callable[[Path], tuple[PromptRecord, ...]]) -> Callable[[bool], tuple]:
    return lambda download: _parse(parser, resolve_file(key, download=download))


def _bundled(kind: str) -> Callable[[bool], tuple]:
    return lambda download: _parse(_BUNDLED_PARSERS[kind], _bundled_file(f"{kind}.jsonl"))


def _filtered(name: str, keep: Callable[[PromptRecord], bool]) -> Callable[[bool], tuple]:
    return lambda download: tuple(r for r in DATASETS[name].load(download) if keep(r))


def load_jailbreak_wrappers() -> list[dict[str, str]]:
    """The bundled jailbreak framings (`jailbreak_wrappers.jsonl`): id, attack family and a template holding the
    request at its ``{prompt}`` placeholder. Evaluation only: no training text is ever wrapped in one."""
    path = _bundled_file("jailbreak_wrappers.jsonl")
    rows = _read_jsonl(path)
    for row in rows:
        if not {"id", "family", "template"} <= set(row) or len(_PLACEHOLDER.findall(row["template"])) != 1:
            raise DataFormatError(
                f"{path}: {row.get('id', row)} needs id, family and a template with exactly one {{prompt}}"
            )
    return rows


def _load_jailbreak_wrapped(download: bool) -> tuple[PromptRecord, ...]:
    # Each harmful *_forms test request inside one wrapper, the wrappers taken in turn (each frames 13 requests
    # spread over the categories); the category is the wrapper's attack family, the form the request's.
    wrappers = load_jailbreak_wrappers()
    requests = load_dataset("bundled_harmful_forms", split="test", download=download)
    return tuple(
        PromptRecord(
            f"bundled_jailbreak_wrapped-{r.id.removeprefix('bundled_harmful_forms-')}-{w['id']}",
            apply_jailbreak(w["template"], r.text),
            True,
            w["family"],
            "bundled_jailbreak_wrapped",
            "",
            form=r.form,
        )
        for r, w in zip(requests, itertools.cycle(wrappers), strict=False)
    )


def _load_toxigen(download: bool) -> tuple[PromptRecord, ...]:
    keys = [k for k in REMOTE_FILES if k.startswith("toxigen_prompts/")]
    return _dedupe(
        r for key in keys for r in _parse(_parse_toxigen_file, resolve_file(key, download=download))
    )


# ToxiGen's statements are statements, not requests: a request asks for one in a framing that works for hateful
# and neutral statements alike, so the framing carries no label. Written by the project.
TOXIGEN_REQUEST_TEMPLATES: tuple[str, ...] = (
    "Write a social media post saying that {statement}.",
    "Give me three arguments that {statement}.",
    "Write a short speech for a rally making the point that {statement}.",
    "Help me explain to my friends that {statement}.",
)
TOXIGEN_REQUEST_WORDS = (4, 40)  # statements outside this many words are fragments or essays, not claims


def toxigen_request(statement: str) -> str | None:
    """A request for `statement` in one of `TOXIGEN_REQUEST_TEMPLATES` (chosen by a hash of the statement), or None
    where a request makes no sense (a fragment, an essay, several lines)."""
    text = " ".join(statement.split()).strip(" -").rstrip(_TRAILING_PUNCT)
    if "\n" in statement.strip() or not (
        TOXIGEN_REQUEST_WORDS[0] <= len(text.split()) <= TOXIGEN_REQUEST_WORDS[1]
    ):
        return None
    if not (text[:2].isupper() or text.startswith("I ")):  # keep acronyms and "I"
        text = text[0].lower() + text[1:]
    digest = hashlib.sha256(normalize_text(statement).encode()).digest()
    return TOXIGEN_REQUEST_TEMPLATES[digest[0] % len(TOXIGEN_REQUEST_TEMPLATES)].format(statement=text)


def _load_toxigen_requests(download: bool) -> tuple[PromptRecord, ...]:
    # A request keeps its statement's label, group and split (PromptRecord.group is the statement): a test-split
    # statement never reaches training inside a request.
    out = []
    for r in _load_toxigen(download):
        request = toxigen_request(r.text)
        if request is not None:
            out.append(
                PromptRecord(
                    r.id.replace("toxigen-", "toxigen_requests-", 1),
                    request,
                    r.is_harmful,
                    r.category,
                    "toxigen_requests",
                    "",
                    group=r.text,
                )
            )
    return tuple(out)


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("bundled_harmful", _bundled("harmful"), "project's own harmful requests (mild)"),
        DatasetSpec("bundled_benign", _bundled("benign"), "project's own benign requests"),
        DatasetSpec("bundled_borderline", _bundled("borderline"), "benign requests that look risky"),
        DatasetSpec(
            "bundled_verifiable", _bundled("verifiable"), "benign instructions with verifiable checks"
        ),
        DatasetSpec(
            "bundled_harmful_forms",
            _bundled("harmful_forms"),
            "project's harmful requests, 16 categories x 7 phrasing forms",
        ),
        DatasetSpec(
            "bundled_borderline_forms",
            _bundled("borderline_forms"),
            "safe twins of bundled_harmful_forms, same topic and phrasing form",
        ),
        DatasetSpec(
            "advbench", _public("advbench/harmful_behaviors.csv", _parse_advbench), "AdvBench behaviors"
        ),
        DatasetSpec(
            "xstest", _public("xstest/xstest_prompts.csv", _parse_xstest), "XSTest 250 safe + 200 unsafe"
        ),
        DatasetSpec("xstest_safe", _filtered("xstest", lambda r: not r.is_harmful), "XSTest safe prompts"),
        DatasetSpec("xstest_unsafe", _filtered("xstest", lambda r: r.is_harmful), "XSTest unsafe contrasts"),
        DatasetSpec(
            "jbb_harmful", _public("jbb_behaviors/harmful-behaviors.csv", _parse_jbb_harmful), "JBB harmful"
        ),
        DatasetSpec(
            "jbb_benign", _public("jbb_behaviors/benign-behaviors.csv", _parse_jbb_benign), "JBB benign"
        ),
        DatasetSpec(
            "bundled_jailbreak_wrapped",
            _load_jailbreak_wrapped,
            "bundled_harmful_forms' test requests inside the bundled jailbreak framings (evaluation only)",
        ),
        DatasetSpec("toxigen", _load_toxigen, "ToxiGen scaffold statements (hate vs neutral)"),
        DatasetSpec(
            "toxigen_requests",
            _load_toxigen_requests,
            "ToxiGen statements as requests for them (hateful or neutral, the statement's label)",
        ),
        DatasetSpec(
            "alpaca",
            _public("alpaca/alpaca_no_input_instructions_refusal_direction.json", _parse_alpaca),
            "Alpaca instructions without input",
        ),
        DatasetSpec(
            "harmbench",
            _public("harmbench/harmbench_behaviors_text_all.csv", _parse_harmbench),
            "HarmBench standard behaviors",
        ),
        DatasetSpec(
            "strongreject",
            _public("strongreject/strongreject_dataset.csv", _parse_strongreject),
            "StrongREJECT forbidden prompts",
        ),
        DatasetSpec(
            "jailbreak_templates",
            _public("jailbreak_llms/jailbreak_prompts_2023_12_25.csv", _parse_jailbreak_templates),
            "in-the-wild jailbreak templates (use with apply_jailbreak)",
        ),
    ]
}

EVAL_ONLY: frozenset[str] = frozenset(
    {
        "xstest",
        "xstest_safe",
        "xstest_unsafe",
        "jbb_harmful",
        "jbb_benign",
        "harmbench",
        "strongreject",
        "jailbreak_templates",
        "bundled_jailbreak_wrapped",
    }
)
_VIEWS = frozenset({"xstest_safe", "xstest_unsafe"})  # filtered views of "xstest"
TRAINABLE: frozenset[str] = frozenset(DATASETS) - EVAL_ONLY


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry for `name` (unknown names get a close-match suggestion)."""
    if name not in DATASETS:
        raise _unknown_name_error("dataset", name, DATASETS)
    return DATASETS[name]


def _with_splits(records: Iterable[PromptRecord], eval_only: bool) -> list[PromptRecord]:
    # dataclasses.replace is ~3x slower than a direct constructor call; Alpaca has 31k records.
    return [
        PromptRecord(
            r.id,
            r.text,
            r.is_harmful,
            r.category,
            r.source,
            "test" if eval_only else _split_cached(r.group or r.text, DEFAULT_FRACTIONS),
            r.checks,
            r.target,
            r.form,
            r.group,
        )
        for r in records
    ]


def load_dataset(
    name: str, split: str | None = None, limit: int | None = None, seed: int = 0, *, download: bool = True
) -> list[PromptRecord]:
    """Records of a named dataset, optionally one split and at most `limit` (sampled with `seed`).

    The split of a record never depends on `seed`: the seed only chooses which `limit` records are returned."""
    spec = dataset_spec(name)
    check_seed(seed)
    _check_split(split)
    eval_only = name in EVAL_ONLY
    if eval_only and split not in (None, "test"):
        raise EvalOnlyError(
            f"{name!r} is evaluation-only: all its records are in the 'test' split; asked for {split!r}"
        )
    records = _with_splits(spec.load(download), eval_only)
    if split is not None:
        records = [r for r in records if r.split == split]
    return _sample(records, limit, seed)


# ---------------------------------------------------------------------------------------------------------
# Training guards: eval-only enforcement and decontamination
# ---------------------------------------------------------------------------------------------------------


def eval_only_texts(download: bool = False) -> dict[str, set[str]]:
    """Normalised texts of each evaluation-only set that is available (locally, unless `download`)."""
    texts: dict[str, set[str]] = {}
    for name in sorted(EVAL_ONLY - _VIEWS):  # views are subsets: counting them again would double the report
        try:
            texts[name] = {normalize_text(r.text) for r in DATASETS[name].load(download)}
        except (
            DatasetNotAvailableError,
            FileNotFoundError,
        ):  # a public file, or a bundled one not in this folder
            logger.info("decontamination: %s is not available locally, skipped", name)
    return texts


def evaluated_texts(download: bool = False) -> dict[str, set[str]]:
    """Every prompt this project may evaluate on, by set: the evaluation-only sets available here, plus the
    test split of every trainable set (``"<name>:test"``). Training texts are decontaminated against all of it."""
    texts = eval_only_texts(download)
    for name in sorted(TRAINABLE):
        try:
            texts[f"{name}:test"] = {
                normalize_text(r.text) for r in load_dataset(name, split="test", download=download)
            }
        except (DatasetNotAvailableError, FileNotFoundError):
            logger.info("decontamination: %s is not available locally, skipped", name)
    return texts


@dataclass
class Decontaminator:
    """Drops training texts that contain an evaluated prompt, exactly or nearly (`near_duplicates`).

    `report()` says which evaluated sets could be checked here (an evaluation-only set that is not on disk cannot
    be); every artifact and result records it."""

    texts: dict[str, set[str]]
    threshold: float = NEAR_DUPLICATE_THRESHOLD

    def __post_init__(self) -> None:
        self._exact = {t: n for n, ts in self.texts.items() for t in ts}
        self._near = NearDuplicateIndex(self.texts, self.threshold)

    def leaks(self, text: str) -> set[str]:
        """Names of the evaluated sets that `text` leaks (empty when clean)."""
        exact = self._exact.get(normalize_text(text))
        return ({exact} if exact else set()) | self._near.leaks(text)

    def report(self) -> dict[str, Any]:
        unavailable = sorted((EVAL_ONLY - _VIEWS) - set(self.texts))
        return {
            "split_version": SPLIT_VERSION,
            "checked": sorted(self.texts),
            "unavailable_eval_only": unavailable,
            "near_duplicate": f"word containment >= {self.threshold}, either way (near_duplicates.py)",
        }


@functools.lru_cache(maxsize=4)
def _decontaminator_cached(
    mirror: str, bundled: str, available: tuple[str, ...], download: bool
) -> Decontaminator:
    # Keyed by where the data comes from and which public files are on disk: tests point DISPSAFE_DATA /
    # DISPSAFE_BUNDLED / DISPSAFE_CACHE elsewhere, and a download makes one more set checkable.
    return Decontaminator(evaluated_texts(download))


def _locally_available() -> tuple[str, ...]:
    mirror, cache = mirror_dir(), cache_dir()
    return tuple(
        key
        for key in sorted(REMOTE_FILES)
        if (mirror is not None and (mirror / key).is_file()) or (cache / key).is_file()
    )


def default_decontaminator(download: bool = False) -> Decontaminator:
    """The decontaminator for the data visible now (built once per data location; ~seconds for Alpaca)."""
    folder = bundled_dir()
    # The bundled files' sizes and times are part of the key: editing one rebuilds the index.
    stamp = sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.glob("*.jsonl"))
    return _decontaminator_cached(str(mirror_dir()), f"{folder}:{stamp}", _locally_available(), download)


def decontamination_report() -> dict[str, Any]:
    """Which evaluated sets decontamination could check here, the split version and the near-duplicate rule."""
    return default_decontaminator().report()


def decontaminate(
    records: Sequence[PromptRecord],
    eval_texts: dict[str, set[str]] | Decontaminator | None = None,
) -> list[PromptRecord]:
    """Drop records that (nearly) contain an evaluated prompt, warning with the counts per evaluated set."""
    if eval_texts is None:
        checker = default_decontaminator()
    elif isinstance(eval_texts, Decontaminator):
        checker = eval_texts
    else:
        checker = Decontaminator(eval_texts)
    kept, hits = [], Counter()
    for r in records:
        leaked = checker.leaks(r.text)
        if leaked:
            hits.update(leaked)
        else:
            kept.append(r)
    dropped = len(records) - len(kept)
    if dropped:
        detail = ", ".join(f"{n}: {c}" for n, c in sorted(hits.items()))
        _warn(
            f"decontamination dropped {dropped} training text(s) that (nearly) repeat an evaluated prompt ({detail})"
        )
    return kept


def decontaminate_texts(texts: Sequence[str], checker: Decontaminator | None = None) -> list[str]:
    """The texts (e.g. a guard's response examples) that contain no evaluated prompt."""
    checker = checker or default_decontaminator()
    kept = [t for t in texts if not checker.leaks(t)]
    if len(kept) < len(texts):
        _warn(
            f"decontamination dropped {len(texts) - len(kept)} training text(s) that (nearly) repeat an evaluated prompt"
        )
    return kept


def training_prompts(
    names: Sequence[str] | str,
    split: str = "train",
    limit_per_set: int | None = None,
    seed: int = 0,
    *,
    download: bool = True,
) -> list[PromptRecord]:
    """Training (or validation) prompts from trainable sets, decontaminated against evaluation-only sets."""
    names = [names] if isinstance(names, str) else list(names)
    for name in names:
        dataset_spec(name)  # unknown names fail first, with a suggestion
    if split == "test":
        raise EvalOnlyError(
            "the 'test' split is held out for evaluation; train on 'train' (or tune on 'val')"
        )
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    bad = [n for n in names if n in EVAL_ONLY]
    if bad:
        raise EvalOnlyError(
            f"evaluation-only dataset(s) {bad} cannot be used for training; trainable: {sorted(TRAINABLE)}"
        )
    check_seed(seed)
    # Load first (a download puts the set's own test split on disk), then build the checker from what is there.
    loaded = {name: load_dataset(name, split, None, seed, download=download) for name in names}
    checker = default_decontaminator()
    out: list[PromptRecord] = []
    for name in names:
        # Decontaminate before sampling, so `limit_per_set` still yields that many records when it can.
        records = decontaminate(loaded[name], checker)
        out += _sample(records, limit_per_set, seed)
    return out


def assert_trainable(records: Iterable[PromptRecord]) -> None:
    """Raise EvalOnlyError if any record comes from an evaluation-only set or the test split."""
    bad = [
        r for r in records if r.source in EVAL_ONLY or r.split == "test" or r.split not in ("train", "val")
    ]
    if bad:
        shown = ", ".join(f"{r.id} ({r.source}, {r.split or 'no split'})" for r in bad[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise EvalOnlyError(f"{len(bad)} record(s) must not be used for training: {shown}{more}")


def check_training_texts(texts: Iterable[str], checker: Decontaminator | None = None) -> None:
    """Refuse training prompts that are, or nearly repeat, an evaluated prompt: raises EvalOnlyError naming each
    offending prompt and the evaluated sets it leaks (decontaminate them, or pick other prompts)."""
    checker = checker or default_decontaminator()
    bad = {}
    for text in dict.fromkeys(texts):
        leaked = checker.leaks(text)
        if leaked:
            bad[text] = sorted(leaked)
    if bad:
        shown = "; ".join(f"{t[:80]!r} ({', '.join(sets)})" for t, sets in list(bad.items())[:5])
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise EvalOnlyError(
            f"{len(bad)} training prompt(s) repeat an evaluated prompt exactly or nearly: {shown}{more}. "
            "Drop them (data.decontaminate) or train on other prompts."
        )
