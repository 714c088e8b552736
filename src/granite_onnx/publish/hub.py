"""``granite-onnx publish``: one commit to a Hub model repo, or a dry run that prints it.

``huggingface_hub`` does the transfer: the token comes from ``HF_TOKEN`` or the login cache, and
large files go the way the client handles them (LFS / Xet) inside ``create_commit``. The folder is
checked against its ``SHA256SUMS`` first, and everything goes in one commit, so a failed upload
leaves the repo as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError, GraniteOnnxError
from .checksums import MANIFEST, bundle_files, verify_manifest


@dataclass(frozen=True)
class UploadOp:
    path_in_repo: str
    bytes: int


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    revision: str | None
    operations: tuple[UploadOp, ...]
    commit_url: str | None  # None for a dry run

    @property
    def total_bytes(self) -> int:
        return sum(op.bytes for op in self.operations)


def plan_upload(folder: Path) -> tuple[UploadOp, ...]:
    """Every file of an assembled bundle, SHA256SUMS included; refuses a folder that fails its manifest."""
    folder = Path(folder)
    problems = verify_manifest(folder)
    if problems:
        raise BundleError(
            f"{folder} is not an assembled bundle ({problems[0]}): run `granite-onnx bundle` first"
        )
    names = [*bundle_files(folder), MANIFEST]
    return tuple(UploadOp(name, (folder / name).stat().st_size) for name in sorted(names))


def describe(result: PublishResult) -> list[str]:
    head = f"{'would upload' if result.commit_url is None else 'uploaded'} to {result.repo_id}"
    if result.revision:
        head += f" (revision {result.revision})"
    lines = [f"{head} in one commit: {len(result.operations)} files, {result.total_bytes:,} bytes"]
    lines += [f"  add {op.path_in_repo}  {op.bytes:,} bytes" for op in result.operations]
    if result.commit_url:
        lines.append(f"commit: {result.commit_url}")
    return lines


def publish(
    folder: Path,
    repo_id: str,
    revision: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    api=None,
    message: str | None = None,
) -> PublishResult:
    """Create the repo if needed and upload the bundle in one commit (no network on a dry run)."""
    folder = Path(folder)
    operations = plan_upload(folder)
    if dry_run:
        return PublishResult(repo_id, revision, operations, None)
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = api or HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        info = api.create_commit(
            repo_id,
            operations=[
                CommitOperationAdd(op.path_in_repo, str(folder / op.path_in_repo)) for op in operations
            ],
            commit_message=message or f"granite-onnx bundle ({len(operations)} files)",
            revision=revision,
            repo_type="model",
        )
    except HfHubHTTPError as exc:
        raise GraniteOnnxError(
            f"the Hub refused the upload to {repo_id}: {str(exc).splitlines()[0][:200]}"
        ) from exc
    except OSError as exc:  # no network, DNS, TLS
        raise GraniteOnnxError(f"cannot reach the Hub to publish {repo_id}: {exc}") from exc
    return PublishResult(repo_id, revision, operations, str(info.commit_url))
