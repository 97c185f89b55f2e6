"""Fetching a BERT from the Hugging Face Hub (or a mirror): only the files sbert needs, with rich progress.

A sentence-transformers repo also brings modules.json and its modules' settings (pooling, Normalize), so a repo id
embeds as sentence-transformers would.

huggingface_hub reads HF_ENDPOINT, HF_HUB_OFFLINE, HF_HOME and HF_TOKEN when it is first imported, so it is
imported inside the functions here, which keeps `sbert --help` fast and lets `--endpoint` become HF_ENDPOINT
before that first import. The endpoint is also passed to every call, for processes that imported it earlier.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from sbert_cli.errors import DownloadError
from sbert_cli.limits import parse_json
from sbert_cli.model.hf_weights import (
    WEIGHT_FILES,  # preference order; torch-free at import
)

DEFAULT_REPO = "hfl/chinese-bert-wwm-ext"
MIRROR_ENDPOINT = "https://hf-mirror.com"
REQUIRED_FILES = ("config.json", "vocab.txt")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json")
# A sentence-transformers repo: modules.json names its modules (pooling, Normalize, ...); these sit beside it, and
# each module folder (`1_Pooling/`, named `{index}_{Module}` by sentence-transformers) keeps its settings in config.json.
ST_MODULES_FILE = "modules.json"
ST_FILES = ("sentence_bert_config.json", "config_sentence_transformers.json")
ST_MODULE_CONFIG = re.compile(r"\d+_[^/]+/config\.json")
# Written into the HF metadata folder of an --out dir, so a re-run knows the folder is this model's download.
MARKER = Path(".cache") / "huggingface" / "sbert-download.json"

NETWORK_HINT = (
    f"check your connection, or use a mirror (HF_ENDPOINT={MIRROR_ENDPOINT}, or `sbert download --endpoint "
    f"{MIRROR_ENDPOINT}`), or copy a downloaded model folder to this machine and pass it with `model` DIR"
)
TOKEN_HINT = "set HF_TOKEN=<your access token> (or run `hf auth login`)"


@dataclass
class DownloadedModel:
    """Where a download landed and what it holds."""

    path: Path
    repo_id: str
    revision: str
    commit: str | None
    files: dict[str, int] = field(default_factory=dict)  # name -> bytes on disk
    removed: list[str] = field(default_factory=list)  # stale weight files deleted from out_dir
    in_cache: bool = True


def select_files(repo_id: str, repo_files: list[str]) -> tuple[list[str], str]:
    """The files of a repo listing that a BERT needs, and which of them holds (or indexes) the weights."""
    available = set(repo_files)
    for required in REQUIRED_FILES:
        if required not in available:
            why = (
                "it is not a Hugging Face BERT checkpoint"
                if required == "config.json"
                else "sbert's tokenizer needs the WordPiece vocab"
            )
            raise DownloadError(f"{repo_id} has no {required}; {why}. Pick a BERT repo that ships it")
    weights = next((name for name in WEIGHT_FILES if name in available), None)
    if weights is None:
        others = sorted(n for n in available if n.endswith((".h5", ".msgpack", ".ckpt", ".onnx", ".gguf")))
        found = f" (it has {', '.join(others)})" if others else ""
        raise DownloadError(
            f"{repo_id} has no PyTorch weights: no model.safetensors or pytorch_model.bin{found}. "
            "Pick a repo with PyTorch weights"
        )
    # Weights last: a download cut short then lacks them and counts as incomplete, so it is fetched again rather
    # than loaded without its modules.json (which comes after its module configs, for the same reason).
    wanted = [*REQUIRED_FILES, *(n for n in TOKENIZER_FILES if n in available), *_st_files(available), weights]
    return wanted, weights


def _st_files(available: set[str]) -> list[str]:
    """A sentence-transformers repo's modules.json, the files beside it and its module folders' config.json."""
    if ST_MODULES_FILE not in available:
        return []
    module_configs = sorted(n for n in available if ST_MODULE_CONFIG.fullmatch(n))
    return [*module_configs, *(n for n in ST_FILES if n in available), ST_MODULES_FILE]


def missing_files(model_dir: Path) -> list[str]:
    """What a model folder lacks before sbert can load it (config, vocab, weights and every shard, and the
    Pooling config its modules.json names, if it has one)."""
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    weights = next((name for name in WEIGHT_FILES if (model_dir / name).is_file()), None)
    if weights is None:
        return [*missing, "model.safetensors or pytorch_model.bin"]
    if weights.endswith(".index.json"):
        try:
            shards = _shards(model_dir / weights)
        except DownloadError:
            return [*missing, weights]
        missing += [s for s in shards if not (model_dir / s).is_file()]
    return [*missing, *_missing_pooling_configs(model_dir)]


def _missing_pooling_configs(model_dir: Path) -> list[str]:
    """The Pooling configs a folder's modules.json names but it lacks. No modules.json (e.g. a download by an
    sbert before 0.2.0): nothing is missing, the folder embeds with the default pooling."""
    try:
        modules = parse_json((model_dir / ST_MODULES_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):  # absent; or unreadable, which loading it reports
        return []
    if not isinstance(modules, list):
        return []
    modules = [m for m in modules if isinstance(m, dict)]
    pooling = [m.get("path") for m in modules if str(m.get("type", "")).rsplit(".", 1)[-1] == "Pooling"]
    return [f"{p}/config.json" for p in pooling if isinstance(p, str) and p and not (model_dir / p / "config.json").is_file()]


def download(
    repo_id: str = DEFAULT_REPO,
    out_dir: str | Path | None = None,
    revision: str | None = None,
    endpoint: str | None = None,
    token: str | None = None,
    progress: bool = True,
    force: bool = False,
    cache_dir: str | Path | None = None,
) -> DownloadedModel:
    """Download what a BERT needs into out_dir, or into the Hugging Face cache; returns the folder (`.path`) and what was fetched.

    Without out_dir the files go into the HF cache (HF_HOME), where a later `--model REPO_ID` finds them
    offline. An out_dir that holds anything but an earlier download of this repo is refused unless force.
    Re-running is cheap: files already there at the same commit are not fetched again.
    """
    endpoint = _endpoint(endpoint)  # first: it may set HF_ENDPOINT before huggingface_hub is imported
    from huggingface_hub import constants

    revision = revision or "main"
    out = Path(out_dir).expanduser() if out_dir is not None else None
    if out is not None:
        _check_out_dir(out, repo_id, force)
    if constants.HF_HUB_OFFLINE:
        return _offline_result(repo_id, revision, out, cache_dir)

    from huggingface_hub import HfApi

    with _hub_errors(repo_id, revision, endpoint, out):
        info = HfApi(endpoint=endpoint, token=token).model_info(
            repo_id, revision=revision, files_metadata=True, timeout=constants.HF_HUB_ETAG_TIMEOUT
        )
    sizes = {s.rfilename: (s.lfs.size if s.lfs is not None else s.size) for s in info.siblings or []}
    wanted, weights = select_files(repo_id, list(sizes))
    created = out is not None and not out.exists()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        _write_marker(out, {"repo_id": repo_id, "revision": revision, "commit": info.sha, "endpoint": endpoint})

    fetch = partial(
        _fetch_file, repo_id=repo_id, commit=info.sha or revision, endpoint=endpoint, token=token,
        out=out, cache_dir=cache_dir, revision=revision,
    )
    local: dict[str, Path] = {}
    try:
        with _progress_bars(progress) as bars:
            for name in wanted:
                local[name] = fetch(name, bars=bars, size=sizes.get(name))
            if weights.endswith(".index.json"):
                for shard in _shards(local[weights]):
                    if shard not in sizes:
                        raise DownloadError(f"{repo_id}: {weights} lists {shard}, which the repo does not have")
                    local[shard] = fetch(shard, bars=bars, size=sizes.get(shard))
    except DownloadError:
        if created and not local:  # e.g. a gated repo: leave no empty folder behind; keep partial work to resume
            shutil.rmtree(out, ignore_errors=True)
        raise
    folder = out if out is not None else local["config.json"].parent
    if out is None and info.sha and revision != info.sha:
        _record_ref(folder, revision, info.sha)
    removed = _remove_stale_weights(out, keep=set(local)) if out is not None else []
    return DownloadedModel(
        path=folder,
        repo_id=repo_id,
        revision=revision,
        commit=info.sha,
        files={name: path.stat().st_size for name, path in local.items()},
        removed=removed,
        in_cache=out is None,
    )


def fetch_model(repo_id: str, cache_dir: str | Path | None = None, progress: bool = True) -> Path:
    """A repo id's model folder: the cached snapshot if complete (no network), else downloaded into the cache."""
    from huggingface_hub import constants

    cached = cached_snapshot(repo_id, cache_dir=cache_dir)
    if cached is not None:
        return cached
    if constants.HF_HUB_OFFLINE:
        raise DownloadError(_offline_message(repo_id, cache_dir))
    return download(repo_id, progress=progress, cache_dir=cache_dir).path


def cached_snapshot(repo_id: str, revision: str = "main", cache_dir: str | Path | None = None) -> Path | None:
    """The HF-cache snapshot of repo_id at revision if it holds everything a BERT needs, else None. No network."""
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir, revision=revision)
    except ValueError:  # an invalid repo id cannot be in the cache
        return None
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    return None if missing_files(snapshot) else snapshot


def _endpoint(endpoint: str | None) -> str:
    """The hub URL to use: `endpoint`, else HF_ENDPOINT, else huggingface.co."""
    if endpoint and "huggingface_hub" not in sys.modules:
        # huggingface_hub also talks to its import-time endpoint on its own (e.g. a registry it caches), so
        # a mirror given on the command line must be in place before the first import, not only passed below.
        os.environ["HF_ENDPOINT"] = endpoint
    from huggingface_hub import constants

    url = (endpoint or constants.ENDPOINT).rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise DownloadError(f"endpoint {url!r} is not a URL; use e.g. `endpoint` {MIRROR_ENDPOINT}")
    return url


def _check_out_dir(out: Path, repo_id: str, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise DownloadError(f"{out}: is a file; choose another `out`")
    if not out.is_dir() or not any(out.iterdir()):
        return
    owner = _read_marker(out).get("repo_id")
    if owner == repo_id or force:
        return
    holds = f"a download of {owner}" if owner else "other files"
    raise DownloadError(
        f"{out}: already holds {holds}; choose another `out`, or pass `force` to download {repo_id} into it"
    )


def _read_marker(out: Path) -> dict:
    try:
        marker = parse_json((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def _write_marker(out: Path, content: dict) -> None:
    path = out / MARKER
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise DownloadError(f"cannot write {path}: {e.strerror or e}; choose another `out`") from None


def _offline_message(repo_id: str, cache_dir: str | Path | None) -> str:
    from huggingface_hub import constants

    where = cache_dir or constants.HF_HUB_CACHE
    return (
        f"HF_HUB_OFFLINE is set and {repo_id} is not (completely) in the cache {where}; unset HF_HUB_OFFLINE "
        "to download it, or pass a local model folder with `model` DIR"
    )


def _offline_result(repo_id: str, revision: str, out: Path | None, cache_dir) -> DownloadedModel:
    """With HF_HUB_OFFLINE, a download is a no-op when the files are already there, else an error."""
    folder = cached_snapshot(repo_id, revision, cache_dir) if out is None else out
    if folder is None or not folder.is_dir() or missing_files(folder):
        raise DownloadError(_offline_message(repo_id, cache_dir) if out is None else (
            f"HF_HUB_OFFLINE is set and {out} does not hold a complete download of {repo_id}; "
            "unset HF_HUB_OFFLINE to download it"
        ))
    files = {name: (folder / name).stat().st_size for name in _bert_files(repo_id, folder)}
    commit = folder.name if out is None else _read_marker(folder).get("commit")
    return DownloadedModel(folder, repo_id, revision, commit, files, in_cache=out is None)


def _bert_files(repo_id: str, folder: Path) -> list[str]:
    """The files of a complete local download that select_files would have fetched, shards included."""
    listing = [p.name for p in folder.iterdir() if p.is_file()]
    listing += [f"{p.name}/config.json" for p in folder.iterdir() if p.is_dir() and (p / "config.json").is_file()]
    wanted, weights = select_files(repo_id, listing)
    return wanted + (_shards(folder / weights) if weights.endswith(".index.json") else [])


def _shards(index_path: Path) -> list[str]:
    try:
        weight_map = parse_json(Path(index_path).read_text(encoding="utf-8"))["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise DownloadError(f"{index_path}: not a valid shard index ({e}); download it again") from None


def _fetch_file(name: str, *, repo_id, commit, revision, endpoint, token, out, cache_dir, bars, size) -> Path:
    """One file via hf_hub_download (which skips it when already there), its progress on its own bar."""
    from huggingface_hub import hf_hub_download

    bar = bars.add_task(name, total=size)
    with _hub_errors(repo_id, revision, endpoint, out, filename=name):
        path = hf_hub_download(
            repo_id,
            name,
            revision=commit,
            endpoint=endpoint,
            token=token,
            local_dir=out,
            cache_dir=cache_dir,
            tqdm_class=partial(_RichBar, bars, bar),
        )
    size_on_disk = Path(path).stat().st_size  # also for files that were already there and not fetched
    bars.update(bar, total=size_on_disk, completed=size_on_disk)
    return Path(path)


def _record_ref(snapshot: Path, revision: str, commit: str) -> None:
    """refs/REVISION -> commit in the cache, as huggingface_hub keeps it, so offline lookups by branch find it.

    Files are fetched by commit hash (one consistent snapshot even if the branch moves meanwhile), which
    leaves the branch's ref to us.
    """
    ref = snapshot.parent.parent / "refs" / revision
    try:
        if ref.is_file() and ref.read_text(encoding="utf-8").strip() == commit:
            return
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".{ref.name}.{os.getpid()}.tmp")
        tmp.write_text(commit, encoding="utf-8")
        os.replace(tmp, ref)
    except OSError as e:
        raise DownloadError(f"cannot write {ref}: {e.strerror or e}; check the Hugging Face cache (HF_HOME)") from None


def _remove_stale_weights(out: Path, keep: set[str]) -> list[str]:
    """Weight files from an earlier download that would shadow the new ones when the folder is loaded."""
    stale = [name for name in WEIGHT_FILES if name not in keep and (out / name).is_file()]
    for name in stale:
        (out / name).unlink()
    return stale


class _RichBar:
    """The part of tqdm's interface that huggingface_hub drives, forwarded to one bar of a rich Progress."""

    def __init__(self, bars, bar, total=None, initial=0, **_tqdm_options):
        self._bars, self._bar = bars, bar
        if total:
            bars.update(bar, total=total)
        bars.update(bar, completed=initial or 0)

    def update(self, n=1):
        self._bars.advance(self._bar, n or 0)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return False

    def close(self):
        pass

    def refresh(self, *args, **kwargs):
        pass

    def set_postfix_str(self, *args, **kwargs):
        pass

    def set_description(self, *args, **kwargs):
        pass


def _progress_bars(show: bool):
    """Per-file download bars on stderr (stdout stays for results); hidden when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    console = Console(stderr=True)
    return Progress(
        TextColumn("{task.description:<32}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not (show and console.is_terminal),
    )


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exception bases of whichever HTTP client this huggingface_hub uses."""
    found: list[type[BaseException]] = []
    for module, attr in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError"),
                         ("requests", "Timeout")):
        with contextlib.suppress(ImportError, AttributeError):
            found.append(getattr(__import__(module), attr))
    return tuple(found)


@contextlib.contextmanager
def _hub_errors(repo_id: str, revision: str, endpoint: str, out: Path | None, filename: str | None = None):
    """huggingface_hub and network exceptions -> one DownloadError line saying what to do."""
    from huggingface_hub.utils import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise DownloadError(
            f"{repo_id} is gated on {endpoint}: accept its terms on the model page with your account, then {TOKEN_HINT}"
        ) from None
    except RepositoryNotFoundError:
        raise DownloadError(
            f"{repo_id}: no such model on {endpoint}; check the name (owner/name), or if it is private {TOKEN_HINT}"
        ) from None
    except RevisionNotFoundError:
        raise DownloadError(f"{repo_id} has no revision {revision!r} on {endpoint}; check `revision`") from None
    except OfflineModeIsEnabled:
        raise DownloadError(_offline_message(repo_id, None)) from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise DownloadError(f"{endpoint} refused access to {repo_id} (HTTP {status}); {TOKEN_HINT}") from None
        if isinstance(e, EntryNotFoundError):
            raise DownloadError(f"{repo_id} lists {filename} but {endpoint} cannot serve it; try again later") from None
        raise DownloadError(
            f"{endpoint} answered HTTP {status} for {repo_id}; try again later, or {NETWORK_HINT}"
        ) from None
    except LocalEntryNotFoundError as e:
        reason = e.__cause__ or e
        raise DownloadError(
            f"cannot download {repo_id} from {endpoint} ({_first_line(reason)}); {NETWORK_HINT}"
        ) from None
    except _transport_errors() as e:
        raise DownloadError(f"cannot reach {endpoint} ({_first_line(e)}); {NETWORK_HINT}") from None
    except HFValidationError:
        raise DownloadError(
            f"{repo_id!r} is not a hub repo id; it looks like owner/name, e.g. {DEFAULT_REPO}"
        ) from None
    except OSError as e:
        if e.errno is None:  # not the file system: e.g. a size check after a broken transfer
            raise DownloadError(f"downloading {filename or repo_id} failed ({_first_line(e)}); try again") from None
        where = out if out is not None else "the Hugging Face cache (HF_HOME)"
        raise DownloadError(
            f"cannot write {filename or repo_id} into {where}: {e.strerror}; "
            "free some disk space or choose another `out`"
        ) from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
