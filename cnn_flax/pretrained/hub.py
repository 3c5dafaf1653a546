"""The Hugging Face Hub: `hf://user/name[@revision]` as a weight source, and an export folder pushed as a model repo.

Downloads go through `huggingface_hub.snapshot_download`, so they land in (and are served from) the hub
library's own cache, `HF_HUB_OFFLINE=1` works from that cache, and a token is found as the library finds
it (`hf auth login`, `HF_TOKEN`). Only the files a model needs are fetched.
"""

from __future__ import annotations

import os
import re

from cnn_flax.errors import UserError

HF_PREFIX = "hf://"
# What a model repository of ours (or timm's) needs: weights, config and labels, never code.
DOWNLOAD_PATTERNS = ["*.safetensors", "*.json", "labels.txt", "README.md"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_source(source: str) -> bool:
    return str(source).startswith(HF_PREFIX)


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """'hf://user/name@v1' -> ('user/name', 'v1'); the revision is None for the default branch."""
    rest = source[len(HF_PREFIX):]
    repo_id, at, revision = rest.partition("@")
    if not _REPO_ID.match(repo_id) or (at and not revision):
        raise UserError(f"{source!r} is not a Hub model; write hf://user/name or hf://user/name@revision")
    return repo_id, revision or None


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id or ""):
        raise UserError(f"--repo_id={repo_id!r}: give the Hub repository as user/name (or organisation/name)")
    return repo_id


def download(source: str) -> str:
    """The local folder of `hf://user/name[@revision]`'s files, downloaded into the hub cache if not there."""
    repo_id, revision = parse_hub_source(source)
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise UserError(f"{source}: reading from the Hub needs huggingface_hub (pip install huggingface_hub)") from None
    try:
        return snapshot_download(repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS)
    except LocalEntryNotFoundError:
        raise UserError(f"{source}: not in the local Hub cache and the Hub cannot be reached (HF_HUB_OFFLINE is "
                        "set, or no network); download it once with network access") from None
    except HfHubHTTPError as error:
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise UserError(f"{source}: the Hub refused it ({first}); check the name, the revision and your token "
                        "(hf auth login)") from None


def push_folder(folder: str, repo_id: str, *, private: bool = False, revision: str | None = None,
                message: str = "Upload cnn_flax export") -> str:
    """Upload every file of `folder` (an export folder) to the model repository `repo_id`; returns its URL."""
    check_repo_id(repo_id)
    if not os.path.isfile(os.path.join(folder, "model.safetensors")):
        raise UserError(f"{folder} holds no model.safetensors; run --mode=export first")
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    api = huggingface_hub.HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=message)
    except (HfHubHTTPError, OSError) as error:  # offline mode and connection failures are OSErrors
        first = " ".join(str(error).split())[:200] or type(error).__name__
        raise UserError(f"pushing {folder} to {repo_id} failed ({first}); check the network, HF_HUB_OFFLINE and "
                        "your token (hf auth login)") from None
    return str(url)
