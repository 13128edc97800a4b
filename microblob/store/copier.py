"""The copy engine behind `copy` (store/copying.py) and `sync` (store/syncing.py): `_Copier` moves
objects, history, workflows and bytes between two open stores, as copying.py's documentation says.
It opens nothing itself (opening a URI is `connect`'s job, one layer of calls up), so the Store's core
may reach it through `Store.sync_to` without an import cycle.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .._exceptions import DuplicateKey, MicroblobError, ObjectEvicted
from .base import StoreBase
from .evicted_counts import note_dropped
from .records import EVICTED_AT, EVICTED_TO, _same_life
from .sync_pending import note_change

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

__all__ = ["CopyReport"]

Progress = Callable[[int, int], None]
_BATCH_BYTES = 8 * 1024 * 1024  # chunk bytes committed per write while copying a file


@dataclasses.dataclass
class CopyReport:
    """What `copy` did. `*_copied` were written to the destination; `*_skipped` were already there.
    `problems`: (object_id, reason) for objects left alone (diverged at the destination, or damaged at
    the source)."""

    objects_copied: int = 0
    objects_skipped: int = 0
    versions_copied: int = 0
    versions_skipped: int = 0
    workflows_copied: int = 0
    workflows_skipped: int = 0
    files_copied: int = 0
    files_skipped: int = 0
    bytes_copied: int = 0
    bytes_skipped: int = 0
    problems: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def copied_anything(self) -> bool:
        return bool(self.objects_copied or self.versions_copied or self.workflows_copied or self.files_copied)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["problems"] = [list(p) for p in self.problems]
        return data

    def summary(self) -> str:
        """One line for people, e.g. for the CLI."""
        if not self.copied_anything:
            text = (f"nothing to copy: {_n(self.objects_skipped, 'object')} ({_n(self.versions_skipped, 'version')}), "
                    f"{_n(self.workflows_skipped, 'workflow')} and {_n(self.files_skipped, 'file')} already up to date")
        else:
            text = (f"copied {_n(self.objects_copied, 'object')} ({_n(self.versions_copied, 'version')}), "
                    f"{_n(self.workflows_copied, 'workflow')}, {_n(self.files_copied, 'file')} "
                    f"({_size(self.bytes_copied)}); already there: {_n(self.objects_skipped, 'object')}, "
                    f"{_n(self.files_skipped, 'file')} ({_size(self.bytes_skipped)})")
        if self.problems:
            text += f"; {_n(len(self.problems), 'object')} left alone (see problems)"
        return text


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"  # pragma: no cover


class _Skip(MicroblobError):
    """This object cannot be copied; the reason goes to CopyReport.problems."""


class _Copier:
    def __init__(self, src: Store, dst: Store, since: _dt.datetime | None, progress: Progress | None) -> None:
        self.src, self.dst = src, dst
        self.since = since
        self.progress = progress
        self.report = CopyReport()
        self.done = 0
        self.total = 0
        self.keeps_object_ids = bool(getattr(dst.backend, "holds_object_ids", False))
        self.leases: list[Any] = []
        self.files_seen: set[Any] = set()  # each file counts once, however many versions share it
        self.in_one_commit = False  # inside _copy_object_in_one_commit's transaction

    # --- plan: which bytes the destination lacks (for the progress total) ----------------------------

    def _object_ids(self) -> list[str]:
        flt = {"updated_at": {"$gte": self.since}} if self.since is not None else {}
        return sorted(d["_id"] for d in self.src.internals.objects.find(flt, projection={"_id": 1}))

    def _user_file_ids(self) -> list[Any]:
        flt: dict[str, Any] = {"metadata.microblob_object_id": {"$exists": False}}
        if self.since is not None:
            flt["uploadDate"] = {"$gte": self.since}
        return [d["_id"] for d in self.src.internals.file_docs.find(flt, projection={"_id": 1})]

    def _file_ids_of(self, object_id: str) -> set[Any]:
        current = self.src.internals.objects.find_one({"_id": object_id}, projection={"file_id": 1, "created_at": 1})
        if current is None:
            return set()
        ids = {current.get("file_id")}
        history = self.src.internals.history
        for entry in history.find({"object_id": object_id}, projection={"file_id": 1, "created_at": 1}):
            if _same_life(entry, current.get("created_at")):
                ids.add(entry.get("file_id"))
        ids.discard(None)
        return ids

    def _missing_bytes(self, file_ids: Iterator[Any]) -> int:
        total = 0
        for file_id in file_ids:
            src_doc = self.src.internals.file_docs.find_one({"_id": file_id}, projection={"length": 1, "sha256": 1})
            if src_doc is None:
                continue
            dst_doc = self.dst.internals.file_docs.find_one({"_id": self._dst_id(file_id)},
                                                     projection={"length": 1, "sha256": 1})
            if dst_doc is None:
                total += int(src_doc.get("length") or 0)
        return total

    # --- run -------------------------------------------------------------------------------------------

    def run(self) -> CopyReport:
        object_ids = self._object_ids()
        user_files = self._user_file_ids()

        def planned() -> Iterator[Any]:
            for object_id in object_ids:
                yield from self._file_ids_of(object_id)
            yield from user_files

        self.total = self._missing_bytes(planned())
        self._tick(0)
        self._copy_workflows()
        for file_id in user_files:
            try:
                self._ensure_file(file_id)
            except _Skip as exc:
                self.report.problems.append((f"file {file_id}", str(exc)))
            finally:
                self._release_leases()
        one_commit = bool(getattr(self.dst.backend, "transactional", False))  # a bundle sink is not
        for object_id in object_ids:
            try:
                if one_commit and self._source_bytes(object_id) <= _BATCH_BYTES:
                    self._copy_object_in_one_commit(object_id)
                else:
                    self._copy_object(object_id)
            except _Skip as exc:
                self.report.problems.append((object_id, str(exc)))
            finally:
                self._release_leases()
        return self.report

    def _source_bytes(self, object_id: str) -> int:
        """The bytes of every version of the object at the source (each shared file once)."""
        total = 0
        for file_id in self._file_ids_of(object_id):
            doc = self.src.internals.file_docs.find_one({"_id": file_id}, projection={"length": 1})
            total += int(doc.get("length") or 0) if doc is not None else 0
        return total

    def _copy_object_in_one_commit(self, object_id: str) -> None:
        """A small object (all its versions' bytes within one batch) copied in ONE write transaction of
        a transactional destination: bytes, history and latest version appear together or not at all,
        so no upload lease is needed, and it costs one commit instead of about seven. The transaction
        may be re-run (a map that had to grow): each attempt starts from the report as it was."""
        report = dataclasses.replace(self.report, problems=list(self.report.problems))
        seen, done = set(self.files_seen), self.done

        def attempt() -> None:
            self.report = dataclasses.replace(report, problems=list(report.problems))
            self.files_seen, self.done = set(seen), done
            self.in_one_commit = True
            try:
                self._copy_object(object_id)
            finally:
                self.in_one_commit = False

        self.dst.internals.backend.atomic(attempt, size_hint=_BATCH_BYTES)

    def _tick(self, n: int) -> None:
        self.done += n
        if self.progress is not None:
            self.progress(self.done, max(self.total, self.done))

    def _release_leases(self) -> None:
        for file_id in self.leases:
            self.dst.internals.leases.delete_one({"_id": file_id})
        self.leases = []

    # --- workflows ---------------------------------------------------------------------------------------

    def _copy_workflows(self) -> None:
        src, dst = self.src.internals.workflows, self.dst.internals.workflows
        for workflow_id in [d["_id"] for d in src.find({}, projection={"_id": 1})]:
            doc = src.find_one({"_id": workflow_id})
            if doc is None:
                continue
            there = dst.find_one({"_id": workflow_id})
            if there == doc:
                self.report.workflows_skipped += 1
                continue
            if there is None:
                try:
                    dst.insert_one(doc)
                except DuplicateKey:
                    dst.replace_one({"_id": workflow_id}, doc)
            else:  # a workflow record is mutable (ended_at, status): the source's is the newer
                dst.replace_one({"_id": workflow_id}, doc)
            self.report.workflows_copied += 1

    # --- objects -----------------------------------------------------------------------------------------

    def _copy_object(self, object_id: str) -> None:
        src, dst = self.src, self.dst
        current = src.internals.objects.find_one({"_id": object_id}, projection={"data": 0})
        if current is None:
            return  # deleted at the source since we listed it
        life = current.get("created_at")
        there = dst.internals.objects.find_one({"_id": object_id}, projection={"data": 0})
        version = _version(current)
        if there is not None:
            if not _same_life(there, life):
                raise _Skip("the destination holds another object under this id (different created_at)")
            if _version(there) > version:
                raise _Skip(f"the destination is ahead (version {_version(there)} > {version})")
            if _version(there) == version and (there.get("sha256") != current.get("sha256")
                                               or there.get("updated_at") != current.get("updated_at")):
                raise _Skip(f"version {version} differs between source and destination")
        copied_before = self.report.versions_copied
        # 1. the history, oldest first (each entry after its bytes)
        entries = [e for e in src.internals.history.find({"object_id": object_id},
                                                 projection={"_id": 1, "version": 1, "created_at": 1})
                   if _same_life(e, life)]
        dst_entries = {e["_id"]: e for e in dst.internals.history.find(
            {"object_id": object_id}, projection={"_id": 1, "created_at": 1, "sha256": 1, "version": 1})}
        if there is not None and _version(there) < version:
            self._check_fast_forward(object_id, there, entries)
        for stub in sorted(entries, key=_version):
            entry = src.internals.history.find_one({"_id": stub["_id"]})
            if entry is None:
                continue
            existing = dst_entries.get(entry["_id"])
            if existing is not None and _same_life(existing, life):
                if existing.get("sha256") != entry.get("sha256"):
                    raise _Skip(f"history version {_version(entry)} differs between source and destination")
                self._count_present(entry)
                self.report.versions_skipped += 1
                continue
            entry = self._with_bytes(entry)
            if existing is not None:  # an earlier life's leftover at the destination
                dst.internals.history.replace_one(
                    {"_id": entry["_id"], "created_at": existing.get("created_at")}, entry)
            else:
                try:
                    dst.internals.history.insert_one(entry)
                except DuplicateKey:
                    self.report.versions_skipped += 1
                    continue
            self.report.versions_copied += 1
        # 2. the latest version, last
        if there is not None and _version(there) == version:
            self._count_present(current)
            self.report.versions_skipped += 1
        else:
            latest = self._with_bytes(src.internals.objects.find_one({"_id": object_id}) or current)
            if _version(latest) != version:
                raise _Skip("the source changed while copying; run copy again")
            backend = getattr(dst.internals, "backend", None)  # a bundle being written has none
            if backend is None:
                self._write_latest(object_id, there, latest)
            else:
                backend.atomic(lambda: self._write_latest(object_id, there, latest))
            if there is not None:
                old_file = there.get("file_id")
                if old_file is not None and old_file != latest.get("file_id"):
                    dst.internals.release_file(old_file)  # freed only if no version references it any more
            self.report.versions_copied += 1
        if self.report.versions_copied > copied_before:
            self.report.objects_copied += 1
        else:
            self.report.objects_skipped += 1

    def _write_latest(self, object_id: str, there: Mapping[str, Any] | None, latest: dict[str, Any]) -> None:
        """The latest version, and what the destination's own sync destinations now lack of it
        (store/sync_pending.py), in one transaction."""
        dst = self.dst
        if there is None:
            try:
                dst.internals.objects.insert_one(latest)
            except DuplicateKey:
                raise _Skip("the object appeared at the destination while copying; run copy again") from None
        else:
            swap = {"_id": object_id, "version": there.get("version"), "created_at": there.get("created_at")}
            if not dst.internals.objects.replace_one(swap, latest):
                raise _Skip("the object changed at the destination while copying; run copy again")
        if getattr(dst.internals, "backend", None) is not None:
            note_change(dst.internals.backend, object_id, latest)
            if there is not None and there.get(EVICTED_TO):  # an evicted latest version replaced
                note_dropped(dst.internals.backend, [dict(there)])

    def _check_fast_forward(self, object_id: str, there: Mapping[str, Any], entries: list[dict]) -> None:
        """The destination's latest must be a version of the source's history (or one the source
        overwrote without keeping it): otherwise the two have diverged."""
        for stub in entries:
            if _version(stub) == _version(there):
                entry = self.src.internals.history.find_one(
                    {"_id": stub["_id"]}, projection={"sha256": 1, "updated_at": 1})
                if entry is not None and entry.get("sha256") != there.get("sha256"):
                    raise _Skip(f"version {_version(there)} differs between source and destination")

    def _count_present(self, doc: Mapping[str, Any]) -> None:
        """A version already at the destination: its file (if chunked) counts as already there."""
        file_id = doc.get("file_id")
        if file_id is not None and file_id not in self.files_seen:
            self.files_seen.add(file_id)
            self.report.files_skipped += 1
            self.report.bytes_skipped += int(doc.get("size") or 0)

    def _with_bytes(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The document as the destination stores it, after making sure its bytes are there."""
        if EVICTED_TO in doc or EVICTED_AT in doc:  # the bytes are made present there: no marks travel
            doc = {k: v for k, v in doc.items() if k not in (EVICTED_AT, EVICTED_TO)}
        file_id = doc.get("file_id")
        if file_id is None:
            return doc
        self._ensure_file(file_id)
        dst_id = self._dst_id(file_id)
        if dst_id != file_id:
            doc = {**doc, "file_id": dst_id}
        return doc

    # --- bytes ---------------------------------------------------------------------------------------------

    def _dst_id(self, file_id: Any) -> Any:
        if self.keeps_object_ids or isinstance(file_id, (str, int, bytes)):
            return file_id
        return str(file_id)  # an ObjectId, into a store that cannot hold one

    def _evicted_version(self, file_id: Any) -> dict[str, Any] | None:
        """A version of the source whose bytes (this file) retention evicted, or None."""
        if not isinstance(self.src, StoreBase):  # a bundle being imported evicts nothing
            return None
        for coll in (self.src.internals.objects, self.src.internals.history):
            doc = coll.find_one({"file_id": file_id, EVICTED_TO: {"$exists": True}}, projection={"data": 0})
            if doc is not None:
                return doc
        return None

    def _ensure_evicted_file(self, file_id: Any, version: dict[str, Any]) -> None:
        """An evicted file: already at the destination with the same bytes (the usual case: the one it
        was evicted to), else read back from where it was evicted to and written here, re-hashed on
        the way; a destination that cannot serve it leaves the object out, in the report's problems."""
        dst = self.dst.internals
        dst_id = self._dst_id(file_id)
        length = int(version.get("size") or 0)
        there = dst.file_docs.find_one({"_id": dst_id}, projection={"length": 1, "sha256": 1})
        if there is not None:
            if int(there.get("length") or 0) != length or there.get("sha256") != version.get("sha256"):
                raise _Skip(f"file {file_id!r} differs between source and destination")
            self.files_seen.add(file_id)
            self.report.files_skipped += 1
            self.report.bytes_skipped += length
            return
        try:
            stream = self.src.read_through.open({**version, "object_id": version.get("object_id") or version["_id"]})
        except ObjectEvicted as exc:
            raise _Skip(str(exc)) from None
        dst.leases.delete_one({"_id": dst_id})
        dst.chunks.delete(dst_id)
        if not self.in_one_commit:
            dst.take_lease(dst_id)
            self.leases.append(dst_id)
        chunk_size = int(getattr(self.dst, "chunk_size", 0) or 255 * 1024)
        digest = hashlib.sha256()
        first = written = 0
        batch: list[bytes] = []
        with stream:
            while True:
                piece = stream.read(chunk_size)
                if piece:
                    digest.update(piece)
                    batch.append(piece)
                    written += len(piece)
                if batch and (not piece or len(batch) * chunk_size >= _BATCH_BYTES):
                    dst.put_chunks(dst_id, first, batch)
                    self._tick(sum(len(p) for p in batch))
                    first += len(batch)
                    batch = []
                if not piece:
                    break
        if written != length or digest.hexdigest() != version.get("sha256"):
            dst.chunks.delete(dst_id)
            raise _Skip(f"file {file_id!r}: the bytes read back from {version.get(EVICTED_TO)} do not match")
        doc = {"_id": dst_id, "length": length, "chunkSize": chunk_size, "uploadDate": version.get("updated_at"),
               "filename": str(version.get("object_id") or ""), "sha256": digest.hexdigest(),
               "metadata": {"microblob_object_id": version.get("object_id")}}
        try:
            dst.file_docs.insert_one(doc)
        except DuplicateKey:
            pass
        self.files_seen.add(file_id)
        self.report.files_copied += 1
        self.report.bytes_copied += length

    def _ensure_file(self, file_id: Any) -> None:
        if file_id in self.files_seen:
            return  # another version sharing these bytes already brought them over (or found them there)
        src, dst = self.src.internals, self.dst.internals
        src_doc = src.file_docs.find_one({"_id": file_id})
        if src_doc is None:
            evicted = self._evicted_version(file_id)
            if evicted is None:
                raise _Skip(f"file {file_id!r} is missing at the source (run verify there)")
            self._ensure_evicted_file(file_id, evicted)
            return
        dst_id = self._dst_id(file_id)
        there = dst.file_docs.find_one({"_id": dst_id}, projection={"length": 1, "sha256": 1})
        length = int(src_doc.get("length") or 0)
        if there is not None:
            same_length = int(there.get("length") or 0) == length
            same_hash = src_doc.get("sha256") is None or there.get("sha256") in (None, src_doc.get("sha256"))
            if not (same_length and same_hash):
                raise _Skip(f"file {file_id!r} differs between source and destination")
            self.files_seen.add(file_id)
            self.report.files_skipped += 1
            self.report.bytes_skipped += length
            return
        # Leftovers of an interrupted copy (no files document yet): start the file again, under our lease
        # (none in one commit with the object: nothing is visible before all of it is).
        dst.leases.delete_one({"_id": dst_id})
        dst.chunks.delete(dst_id)
        if not self.in_one_commit:
            dst.take_lease(dst_id)
            self.leases.append(dst_id)
        digest = hashlib.sha256()
        chunk_size = int(src_doc["chunkSize"])
        count = -(-length // chunk_size) if length else 0
        batch: list[bytes] = []
        batch_bytes = first = 0
        for n in range(count):
            expected = min(chunk_size, length - n * chunk_size)
            data = src.chunks.get(file_id, n)
            if data is None or len(data) != expected:
                raise _Skip(f"file {file_id!r}: chunk {n} is missing or short at the source (run verify there)")
            digest.update(data)
            batch.append(data)
            batch_bytes += len(data)
            if batch_bytes >= _BATCH_BYTES:
                dst.put_chunks(dst_id, first, batch)
                self._tick(batch_bytes)
                first += len(batch)
                batch, batch_bytes = [], 0
        if batch:
            dst.put_chunks(dst_id, first, batch)
            self._tick(batch_bytes)
        sha256 = digest.hexdigest()
        if src_doc.get("sha256") not in (None, sha256):
            dst.chunks.delete(dst_id)
            raise _Skip(f"file {file_id!r} does not match its sha256 at the source (run verify there)")
        doc = {**src_doc, "_id": dst_id, "sha256": sha256}
        try:
            dst.file_docs.insert_one(doc)
        except DuplicateKey:  # a concurrent copy finished it first
            pass
        self.files_seen.add(file_id)
        self.report.files_copied += 1
        self.report.bytes_copied += length


def _version(doc: Mapping[str, Any]) -> int:
    version = doc.get("version")
    return version if isinstance(version, int) and not isinstance(version, bool) else 0
