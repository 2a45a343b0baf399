"""A local folder or a storage URI (s3://, gs://) as one pyarrow filesystem plus a root path, so
the sweep, its trials and the report read and write both alike: paths and URIs under the root,
small atomic reads and writes, listings, whole-folder copies in and out, Parquet tables. It knows
nothing of trials: the run store on top of it (protocol.store) does.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from errors import UserError
from protocol.results import replace_atomically, write_atomic


def is_uri(location: str) -> bool:
    return "://" in str(location)


def _small_writes_in_one_put(location: str) -> str:
    """For s3:// the URI pyarrow opens, with writes that fit one part sent as a single PutObject
    (`allow_delayed_open`): result.json, trial.json and the sweep state appear whole or not at all,
    in one request rather than a three-request multipart upload, whose completion some
    S3-compatible servers answer badly. A query that already sets it is left as the user wrote it."""
    if not location.startswith("s3://") or "allow_delayed_open=" in location:
        return location
    return location + ("&" if "?" in location else "?") + "allow_delayed_open=true"


class Storage:
    """OUT (or any folder the sweep writes) as a pyarrow filesystem plus a root path, so local folders
    and buckets work alike."""

    def __init__(self, out: str | Path):
        self.location = str(out)
        # A URI's query (e.g. ?endpoint_override=HOST:PORT&scheme=http for MinIO) says how to
        # reach the store: every URI derived from OUT keeps it, so Ray and the trials reach it too.
        self.query = ""
        if is_uri(self.location):
            try:
                self.fs, self.root = pafs.FileSystem.from_uri(_small_writes_in_one_put(self.location))
            except Exception as exc:
                raise UserError(f"--out {self.location}: not a storage URI pyarrow can open ({exc})") from None
            if "?" in self.location:
                self.query = "?" + self.location.split("?", 1)[1]
        else:
            self.fs, self.root = pafs.LocalFileSystem(), str(Path(self.location).expanduser().resolve())
            # Trials run in Tune's trial folders and rebuild the store from `location`: a
            # relative path would land there, so the driver passes the absolute one.
            self.location = self.root
        self.root = self.root.rstrip("/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def uri(self, *parts: str) -> str:
        """A location under OUT that Ray and people can use: a local path, or a URI with its scheme."""
        return self.display(self.path(*parts))

    def display(self, path: str) -> str:
        if self.is_local:
            return path
        return f"{self.location.split('://', 1)[0]}://{path}{self.query}"

    def download(self, local_root: Path, *parts: str, suffixes: tuple[str, ...] = ()) -> int:
        """Copy the files under OUT/<parts> (those ending in one of `suffixes`, or all) into
        local_root/<parts>, keeping the layout; returns how many were copied."""
        base = self.path(*parts)
        if not self.exists(base):
            return 0
        copied = 0
        for info in self.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if info.type != pafs.FileType.File or (suffixes and not info.path.endswith(suffixes)):
                continue
            local = Path(local_root).joinpath(*parts, info.path[len(base):].lstrip("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(info.path, str(local), source_filesystem=self.fs,
                            destination_filesystem=pafs.LocalFileSystem())
            copied += 1
        return copied

    def upload(self, local_dir: Path, *parts: str) -> str:
        """Copy the folder local_dir to OUT/<parts> (replacing it); returns its URI."""
        self._put_tree(Path(local_dir), self.path(*parts))
        return self.uri(*parts)

    def _put_tree(self, local_dir: Path, dest: str, skip: tuple[str, ...] = ()) -> None:
        """Replace the folder dest with a copy of local_dir, leaving out files under a folder named
        in `skip`."""
        self.delete_dir(dest)
        for file in sorted(p for p in local_dir.rglob("*") if p.is_file() and not set(skip) & set(p.parts)):
            target = f"{dest}/{file.relative_to(local_dir).as_posix()}"
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(file), target, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    # --- small file operations ---
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def read_json(self, path: str) -> dict:
        try:
            return json.loads(self.read_bytes(path))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None

    def write_json(self, path: str, value: Any) -> None:
        """Readers see the old file or the new one (rename locally, one PUT in a bucket)."""
        data = (json.dumps(value, indent=2, sort_keys=True, default=str) + "\n").encode()
        if self.is_local:
            replace_atomically(path, lambda tmp: Path(tmp).write_bytes(data))
        else:
            self.fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            with self.fs.open_output_stream(path) as stream:
                stream.write(data)

    def delete_dir(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_dir(path)

    def list_dirs(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path))
        return sorted(i.base_name for i in infos
                      if i.type == pafs.FileType.Directory and not i.base_name.startswith("."))

    def list_files(self, path: str) -> list[str]:
        if not self.exists(path):
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(path))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)

    # --- result tables ---
    def write_table(self, table, *parts: str) -> str:
        if self.is_local:
            return str(write_atomic(table, self.path(*parts)))
        with tempfile.TemporaryDirectory() as tmp:
            local = write_atomic(table, Path(tmp) / parts[-1])
            dest = self.path(*parts)
            self.fs.create_dir(dest.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(local), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)
        return self.uri(*parts)

