"""Public files pinned to upstream commits, resolved mirror -> cache -> download and checked by sha256."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dispsafe_nb.common.content_hash import file_sha256
from dispsafe_nb.common.paths import REPO_ROOT, cache_root
from dispsafe_nb.data.errors import ChecksumError, DatasetNotAvailableError, data_warning, unknown_name_error

DOWNLOAD_TIMEOUT_S = 30.0


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


def remote_file(key: str | RemoteFile) -> RemoteFile:
    """Look up a registered public file by its mirror-layout path."""
    if isinstance(key, RemoteFile):
        return key
    if key not in REMOTE_FILES:
        raise unknown_name_error("remote file", key, REMOTE_FILES)
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
    actual = file_sha256(path)
    if actual != rf.sha256:
        raise ChecksumError(
            f"{path} (from DISPSAFE_DATA) has the wrong sha256: expected {rf.sha256}, got {actual}. "
            f"The mirror holds a different version of {rf.local_path} than the one pinned ({rf.url})."
        )


def _cached_file_ok(cached: Path, expected: str | None) -> bool:
    """True if the cached file can be used; a corrupted one is deleted so it is downloaded again."""
    try:
        actual: str | None = file_sha256(cached)
    except OSError:
        actual = None  # unreadable (permissions, a directory in its place, ...)
    if actual is not None and expected is None:
        # Put in the cache by hand, with no pin and no sidecar: trust it now and remember its hash.
        _write_sidecar(cached, actual)
        data_warning(f"{cached} has no pinned checksum; recorded sha256 {actual} on first use")
        return True
    if actual is not None and actual == expected:
        return True
    data_warning(
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
        actual = file_sha256(tmp)
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
        data_warning(
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
