"""Where a dataset is written: a local folder or any fsspec URL, behind one pyarrow FileSystem.

Local paths use pyarrow's LocalFileSystem (no fsspec needed). URLs pyarrow knows natively
(s3://, gs://, hdfs://, file://) use pyarrow's own filesystems; any other scheme (hf://,
memory://, …) goes through fsspec, wrapped as a pyarrow filesystem, so the writer has one API.

Atomic publishing: files are written under `STAGING` inside the dataset and moved to their final
name only when complete, so a final name never shows a partial file. On a local disk the move is
a rename; object stores (where a PUT becomes visible only when the upload completes anyway) copy.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from podcastpile.store.exports import dataset_key

STAGING = ".incomplete"  # hidden: dataset readers and `datasets` globbing skip dot-folders


class DestinationError(RuntimeError):
    """The dataset location cannot be used (unknown scheme, missing fsspec backend, no access)."""


@dataclass(frozen=True)
class Destination:
    """A dataset root on some filesystem. `url` is its canonical name (the ledger's key)."""

    filesystem: pafs.FileSystem
    root: str
    url: str

    def path(self, relative: str) -> str:
        """The filesystem path of a file given relative to the dataset root."""
        return posixpath.join(self.root, relative) if self.root else relative

    def staging_path(self, relative: str) -> str:
        """Where `relative` is written before it is published."""
        return self.path(posixpath.join(STAGING, relative))

    def make_dirs(self, relative: str) -> None:
        """Create a folder (and parents) below the root; a no-op on object stores."""
        self.filesystem.create_dir(self.path(relative), recursive=True)

    def publish(self, staged_path: str, relative: str) -> None:
        """Move a complete staged file to its final name (replacing any file there)."""
        final = self.path(relative)
        self.filesystem.create_dir(posixpath.dirname(final), recursive=True)
        self.filesystem.move(staged_path, final)

    def write_atomically(self, relative: str, data: bytes) -> None:
        """Replace a small file (manifest, dataset card) in one step: staged, then moved over."""
        staged = self.staging_path(f"{relative}.{uuid.uuid4().hex}")
        self.filesystem.create_dir(posixpath.dirname(staged), recursive=True)
        with self.filesystem.open_output_stream(staged) as sink:
            sink.write(data)
        self.publish(staged, relative)

    def read_text(self, relative: str) -> str | None:
        """A small file's text, or None when it does not exist."""
        if not self.exists(relative):
            return None
        with self.filesystem.open_input_stream(self.path(relative)) as source:
            return source.read().decode("utf-8")

    def exists(self, relative: str) -> bool:
        """Whether a file exists below the root."""
        return self.filesystem.get_file_info(self.path(relative)).type == pafs.FileType.File

    def files(self, relative: str) -> set[str]:
        """Relative paths of all files below a folder of the root (empty if it does not exist)."""
        selector = pafs.FileSelector(self.path(relative), recursive=True, allow_not_found=True)
        prefix = self.path("")
        prefix = prefix if prefix.endswith("/") or not prefix else prefix + "/"
        return {
            info.path[len(prefix):] if info.path.startswith(prefix) else info.path
            for info in self.filesystem.get_file_info(selector)
            if info.type == pafs.FileType.File
        }

    def delete(self, relative: str) -> None:
        """Delete a file below the root if it exists."""
        if self.exists(relative):
            self.filesystem.delete_file(self.path(relative))

    def remove_staging_if_empty(self) -> None:
        """Remove the staging folder when no file is left in it (readers need not see it)."""
        staging = self.path(STAGING)
        if self.filesystem.get_file_info(staging).type == pafs.FileType.Directory and not self.files(STAGING):
            self.filesystem.delete_dir(staging)

    def clear_staging(self) -> int:
        """Delete whatever an interrupted run left half-written in the staging folder."""
        leftovers = self.files(STAGING)
        for relative in leftovers:
            self.filesystem.delete_file(self.path(relative))
        return len(leftovers)


def open_destination(location: str) -> Destination:
    """A `Destination` for a local folder (created if needed) or a URL such as s3://bucket/ds."""
    if "://" not in location or location.startswith("file://"):
        root = dataset_key(location)
        filesystem = pafs.LocalFileSystem()
        filesystem.create_dir(root, recursive=True)
        return Destination(filesystem, root.replace(os.sep, "/"), root)
    url = dataset_key(location)
    try:
        filesystem, root = pafs.FileSystem.from_uri(url)
        return Destination(filesystem, root.rstrip("/"), url)
    except (ValueError, OSError, NotImplementedError) as error:
        native_error = error  # an unknown scheme for pyarrow: try fsspec
    try:
        import fsspec
    except ImportError:
        raise DestinationError(
            f"{url}: pyarrow cannot open it ({native_error}) and fsspec is not installed"
        ) from None
    try:
        spec_filesystem, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:
        raise DestinationError(f"{url}: {error}") from None
    filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(spec_filesystem))
    return Destination(filesystem, root.rstrip("/"), url)
