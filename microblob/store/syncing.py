"""Continuous one-way sync: a store's new and changed objects pushed to another store as they are saved.

A field laptop or a Pi keeps working offline; whenever the destination (the institute's MongoDB, say)
is reachable, `sync` brings it up to date, and `SyncWorker` does so in the background, over and over,
backing off while the destination is away. Each round is a `copy` (so: idempotent, resumable, only
missing bytes travel, re-hashed on the way, whole history and workflows) limited to what changed since
the last confirmed round, followed by a check at the destination: an object counts as synced once the
destination's latest version has the source's version number and sha256. That confirmation is
recorded in the SOURCE store (`microblob.sync`: one document per destination; `microblob.sync_confirmed`:
one per object confirmed there), so `sync_status` can say what is pending without asking the destination.

What one round promises: every object whose latest version was committed before the round began and
whose copy met no problem is confirmed at the destination when the round returns. Objects that moved on
independently at the destination are never overwritten: they stay pending and are listed in
`problems` (both sides keep their versions).

Deletions travel only when asked (`propagate_deletes=True`), and only as tombstones: once a store has
a destination, `delete_object` leaves one (`microblob.tombstones`: the id, the deleted life's
`created_at` and last version). A round deletes at the destination exactly that life, unless it has a
newer version there (then it is reported and left alone); nothing is ever deleted by guessing from an
absence.

The watermark: a round lists the objects updated at or after `confirmed_until` and then moves it to the
round's start minus `WATERMARK_MARGIN`, so a save whose timestamp was taken before the round began but
whose transaction committed after the listing is seen again by the next round (copy skips what is
already there at the cost of a few lookups). Timestamps miss objects copied in with old ones and saves
made while the clock was wrong, so a full round (`full=True`: every object not confirmed at its
current version, found locally) runs when the clock went back, and `SyncWorker` runs one hourly.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .._exceptions import InvalidArgument, MicroblobError
from ..engine import codec as _codec
from .base import StoreBase
from .copier import CopyReport, _Copier
from .evicted_counts import evicted_totals
from .records import SYNC_DESTINATIONS, TOMBSTONES, _same_life, _version_of, destination_name, tombstone_lives
from .sync_pending import COUNTED, note_confirmed, pending_totals, start, unconfirmed_pages, walk_pending
from .sync_records import _changed_since, _confirmation_id, _confirmations, _confirmed, _dest_tag, _is_confirmed

if TYPE_CHECKING:  # pragma: no cover
    from .core import Store

__all__ = ["SyncRound", "SyncStatus", "SyncWorker", "sync", "sync_status"]



def _log() -> Any:
    """The `microblob.sync` logger (`logging` loads with the first round, not with `import microblob`)."""
    import logging

    return logging.getLogger("microblob.sync")

WATERMARK_MARGIN = _dt.timedelta(seconds=5)  # longer than any write transaction takes to commit
# An idle round (nothing new) records nothing, unless the watermark is this much behind: then it moves,
# so the stretch of already-confirmed objects each round looks at again stays short.
_IDLE_REWRITE = _dt.timedelta(minutes=5)


@dataclasses.dataclass
class SyncRound:
    """What one round did: the copy's report, and how many objects it confirmed at the destination."""

    destination: str
    copy: CopyReport
    confirmed: int
    started_at: _dt.datetime
    deleted: int = 0  # objects deleted at the destination because they were deleted here

    @property
    def ok(self) -> bool:
        return self.copy.ok

    def summary(self) -> str:
        deleted = f", {self.deleted} deleted there" if self.deleted else ""
        return f"{self.copy.summary()}; {self.confirmed} object(s) confirmed at {self.destination}{deleted}"


@dataclasses.dataclass
class SyncStatus:
    """What is not yet at a destination, from the source's own records (the destination is not asked)."""

    destination: str
    confirmed_until: _dt.datetime | None  # every object last changed before this is confirmed there
    last_round_at: _dt.datetime | None  # the last round that found something to do (idle ones record nothing)
    last_error: str | None
    pending_objects: int
    pending_bytes: int
    oldest_pending: _dt.datetime | None  # when the longest-waiting pending object was saved
    problems: list[tuple[str, str]]
    # what retention evicted here, confirmed there, and is still evicted: files, versions, bytes freed
    evicted_files: int = 0
    evicted_versions: int = 0
    evicted_bytes: int = 0

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ("confirmed_until", "last_round_at", "oldest_pending"):
            if data[key] is not None:
                data[key] = data[key].isoformat().replace("+00:00", "Z")
        data["problems"] = [list(p) for p in self.problems]
        return data


def _state(src: Store) -> Any:
    """The destinations' records (one document each, `_id` "dest:<name>")."""
    return src.internals.backend.collection(SYNC_DESTINATIONS)


def _check_stores(src: Any, dst: Any) -> None:
    if not isinstance(src, StoreBase):
        raise InvalidArgument(f"src must be a Store, not {type(src).__name__}")
    if not isinstance(dst, (StoreBase, str, os.PathLike)):
        raise InvalidArgument(f"dst must be a Store, a URI or a path, not {type(dst).__name__}")


def sync(src: Store, dst: Store | str | os.PathLike[str], *, propagate_deletes: bool = False,
         full: bool = False) -> SyncRound:
    """One round: copy what changed at `src` since the last confirmed round to `dst`, confirm it there,
    and record that in `src`. With `propagate_deletes`, objects deleted at `src` (since it first synced
    anywhere) are deleted at `dst` too, first, unless they changed there since. Raises what the
    destination raises when it cannot be reached (the records stay as they were, so the next round
    redoes this one).

    `full=True` does not trust the watermark: it walks the whole store (locally) for objects not
    confirmed at `dst` at their current version and pushes those. That catches what timestamps cannot
    see: objects brought in by `copy` with their old `updated_at`, or saved while the clock was wrong
    (a Pi without a clock before NTP). A round that finds the clock went back since the last one is
    full by itself; `SyncWorker` runs one every `reconcile_every` seconds."""
    _check_stores(src, dst)
    for label, flag in (("propagate_deletes", propagate_deletes), ("full", full)):
        if not isinstance(flag, bool):
            raise InvalidArgument(f"{label} must be True or False, not {flag!r}")
    src.internals.check_open()
    name = src.read_through.remember(dst)  # evicted bytes are read back through the URI given here
    state = _state(src)
    record = state.find_one({"_id": "dest:" + name})
    if record is None:  # from now on deletions are written down (tombstones), so they can travel
        state.replace_one({"_id": "dest:" + name}, {"_id": "dest:" + name, "destination": name}, upsert=True)
        record = {}
    if not record.get(COUNTED):  # what is pending here is counted from now on, as objects change
        start(src, name)
    since = record.get("confirmed_until")
    started = _codec.utcnow()
    last = record.get("last_attempt_at")
    full = full or since is None or (last is not None and started < last)  # the clock went back
    try:
        target, close = (dst, False) if isinstance(dst, StoreBase) else (_connect(src, dst), True)
        try:
            if target is src or target.backend is src.backend or (
                    target.uri == src.uri and not src.uri.startswith("memory:")):
                raise InvalidArgument(f"source and destination are the same store ({src.uri})")
            deleted, refused = _propagate_deletes(src, target, name) if propagate_deletes else (0, [])
            if full:
                report, confirmed = CopyReport(), 0
                for page in unconfirmed_pages(src, name, unless_history=True):
                    _add(report, _copy_listed(src, target, [d["_id"] for d in page]))
                    confirmed += _confirm(src, target, name, [page])
            else:
                report = _Copier(src, target, since, None).run()
                confirmed = _confirm(src, target, name, _changed_since(src, since))
            report.problems[:0] = refused
        finally:
            if close:
                target.close()
    except Exception as exc:  # unreachable, refused, a driver's own error: recorded, then passed on
        message = str(exc) if isinstance(exc, MicroblobError) else f"{type(exc).__name__}: {exc}"
        state.update_one({"_id": "dest:" + name}, {"$set": {"destination": name, "last_error": message,
                                                            "last_attempt_at": started}}, upsert=True)
        raise
    problems = [list(p) for p in report.problems]
    idle = (not report.copied_anything and not confirmed and not deleted and record.get("last_error") is None
            and record.get("problems", []) == problems and since is not None
            and started - since < WATERMARK_MARGIN + _IDLE_REWRITE)
    if not idle or full:  # a round that found nothing new writes nothing (an SD card wears with every commit)
        changes: dict[str, Any] = {"destination": name, "confirmed_until": started - WATERMARK_MARGIN,
                                   "last_round_at": started, "last_attempt_at": started, "last_error": None,
                                   "problems": problems}
        if full:
            changes["last_full_at"] = started
        state.update_one({"_id": "dest:" + name}, {"$set": changes}, upsert=True)
    if full and not src.backend.transactional:  # no transaction kept the counts exact: count again
        start(src, name)
    return SyncRound(name, report, confirmed, started, deleted)


def _propagate_deletes(src: Store, target: Store, name: str) -> tuple[int, list[tuple[str, str]]]:
    """Delete at `target` each object this store has a tombstone for and has not yet deleted there: only a
    life the tombstone names (the last one deleted, or one deleted before it since: see `_deleted_life`),
    up to the version it had here. An object changed at the destination since, or another object under
    the same id, is left alone and reported. Returns (deleted, problems)."""
    confirmed = _confirmed(src)
    tag = _dest_tag(name)
    deleted, problems = 0, []
    for tomb in src.internals.backend.collection(TOMBSTONES).iter_documents():
        object_id = tomb["_id"]
        done_id = f"tdone:{tag}:{object_id}"
        done = confirmed.find_one({"_id": done_id})
        if done is not None and done.get("deleted_at") == tomb.get("deleted_at"):
            continue
        here = src.internals.objects.find_one({"_id": object_id}, projection={"created_at": 1})
        if here is not None and tomb.get("created_at") is None:
            continue  # saved again under this id and the tombstone cannot tell lives apart: keep it
        there = target.internals.objects.find_one({"_id": object_id}, projection={"created_at": 1, "version": 1})
        if there is not None:
            deleted_life = _deleted_life(confirmed, name, tomb, here, there)
            if deleted_life is None:
                pass  # another object under this id at the destination: not one deleted here
            elif _version_of(there) > deleted_life:
                problems.append((object_id, f"deleted here at version {deleted_life} but changed at the "
                                            f"destination since (version {_version_of(there)}): left alone"))
                continue
            else:
                try:
                    target.delete_object(object_id)
                    deleted += 1
                except MicroblobError as exc:
                    if not isinstance(exc, KeyError):  # ObjectNotFound: deleted there meanwhile, also done
                        raise
        confirmed.replace_one({"_id": done_id}, {"_id": done_id, "deleted_at": tomb.get("deleted_at")}, upsert=True)
    return deleted, problems


def _deleted_life(confirmed: Any, name: str, tomb: dict[str, Any], here: dict[str, Any] | None,
                  there: dict[str, Any]) -> int | None:
    """The last version this store held of the life the destination's object `there` is, if that life was
    deleted here; None if `there` is no life of this store's. The tombstone names the last life deleted and
    the earlier ones deleted since (an id deleted, saved and deleted again between two rounds); for one
    written before it kept them, this store's confirmation at the destination names the life it put there,
    when this store no longer holds that life."""
    if there.get("created_at") is None:
        return None
    for created_at, version in reversed(tombstone_lives(tomb)):
        if created_at is not None and _same_life(there, created_at):
            return _version_of({"version": version})
    mine = confirmed.find_one({"_id": _confirmation_id(name, tomb["_id"])})
    if mine is None or mine.get("created_at") is None or not _same_life(there, mine["created_at"]):
        return None
    if here is not None and _same_life(here, mine["created_at"]):
        return None  # that life is still this store's current one: nothing of it was deleted
    return _version_of(mine)


class _ListedCopier(_Copier):
    """`copy` of the named objects only (and the workflows): what a full round found unconfirmed."""

    def __init__(self, src: Store, dst: Store, object_ids: list[str]) -> None:
        super().__init__(src, dst, None, None)
        self._listed = sorted(object_ids)

    def _object_ids(self) -> list[str]:
        return self._listed

    def _user_file_ids(self) -> list[Any]:
        return []


def _copy_listed(src: Store, target: Store, object_ids: list[str]) -> CopyReport:
    return _ListedCopier(src, target, object_ids).run()


def _add(total: CopyReport, part: CopyReport) -> None:
    for field in dataclasses.fields(CopyReport):
        if field.name == "problems":
            total.problems.extend(part.problems)
        else:
            setattr(total, field.name, getattr(total, field.name) + getattr(part, field.name))


def _confirm(src: Store, target: Store, name: str, pages: Iterable[list[dict[str, Any]]]) -> int:
    """Record, for each object of `pages`, whether the destination's latest version is the source's
    (same version, sha256 and life): one write per page. Returns how many this round confirmed.

    The record also names the history versions the destination holds for that life (`history`:
    version -> sha256), so retention may evict those too (store/retention.py): it evicts only what a
    record names with the same version and sha256."""
    state = _confirmed(src)
    now = _codec.utcnow()
    confirmed = 0
    for page in pages:
        ids = [d["_id"] for d in page]
        there = {d["_id"]: d for d in target.internals.objects.find(
            {"_id": {"$in": ids}}, projection={"_id": 1, "version": 1, "sha256": 1, "created_at": 1})}
        known = _confirmations(state, name, ids)
        todo = []
        for doc in page:
            other = there.get(doc["_id"])
            if other is None or other.get("version") != doc.get("version") \
                    or other.get("sha256") != doc.get("sha256") or not _same_life(other, doc.get("created_at")):
                continue
            mine = known.get(doc["_id"])
            if _is_confirmed(mine, doc) and mine is not None and "history" in mine:
                continue
            todo.append(doc)
        if not todo:
            continue
        held: dict[str, dict[str, str]] = {d["_id"]: {} for d in todo}
        lives = {d["_id"]: d.get("created_at") for d in todo}
        for entry in target.internals.history.find(
                {"object_id": {"$in": list(held)}},
                projection={"object_id": 1, "version": 1, "sha256": 1, "created_at": 1}):
            owner = entry.get("object_id")
            if owner in held and entry.get("created_at") is not None \
                    and entry.get("created_at") == lives[owner] and isinstance(entry.get("sha256"), str):
                held[owner][str(_version_of(entry))] = entry["sha256"]
        records = [{"_id": _confirmation_id(name, d["_id"]), "destination": name, "object_id": d["_id"],
                    "version": d.get("version"), "sha256": d.get("sha256"), "created_at": d.get("created_at"),
                    "history": held[d["_id"]], "confirmed_at": now} for d in todo]
        def write(records: list[dict[str, Any]] = records) -> None:
            for r in records:
                state.replace_one({"_id": r["_id"]}, r, upsert=True)
                note_confirmed(src.internals.backend, name, r)

        src.internals.backend.atomic(write)
        confirmed += sum(1 for d in todo if not _is_confirmed(known.get(d["_id"]), d))
    return confirmed


def _connect(src: Store, uri: str | os.PathLike[str]) -> Store:
    """The destination, created if it is a new file (as `copy` does), opened by the `opener` that
    `connect()` gave the source (this module cannot import `connect`, which imports the Store)."""
    if src.opener is None:
        raise InvalidArgument(f"{src.uri} was not opened with microblob.connect(), so it cannot open {uri!r}: "
                              "pass the destination as a Store")
    return src.opener(uri)


def sync_status(src: Store, dst: Store | str | os.PathLike[str] | None = None) -> list[SyncStatus]:
    """What each destination `src` syncs to (or just `dst`) still lacks, from `src`'s own records:
    pending objects (changed since their last confirmation there), their bytes, the oldest of them."""
    if not isinstance(src, StoreBase):
        raise InvalidArgument(f"src must be a Store, not {type(src).__name__}")
    src.internals.check_open()
    state = _state(src)
    if dst is not None:
        name = destination_name(dst)
        records = [state.find_one({"_id": "dest:" + name}) or {"destination": name}]
    else:
        records = state.find({})
    out = []
    for record in records:
        name = record["destination"]
        since = record.get("confirmed_until")
        if record.get(COUNTED):
            pending, pending_bytes, oldest = pending_totals(src, name)
        else:  # never synced to (nothing is confirmed there): the walk, once
            walked = walk_pending(src, name)
            pending, pending_bytes = len(walked), sum(int(d.get("size") or 0) for d in walked)
            oldest = min((d["updated_at"] for d in walked), default=None)
        files, versions, freed = evicted_totals(src.internals.backend, name)
        out.append(SyncStatus(name, since, record.get("last_round_at"), record.get("last_error"), pending,
                              pending_bytes, oldest, [tuple(p) for p in record.get("problems") or []],
                              files, versions, freed))
    return out


class SyncWorker:
    """Rounds of `sync(src, dst)` on a background thread, every `interval` seconds, until `stop()`;
    a full one (see `sync`) when none ran for `reconcile_every` seconds, the first included. A round
    that fails (the destination is away) is logged in one line and retried after a delay that doubles
    from `interval` up to `max_backoff`; saves to `src` never wait for any of it.

    With `keep_free` and/or `max_size` (bytes, or "2G"), each round that succeeded is followed by
    `evict(src, ...)` (store/retention.py): the oldest objects confirmed at `dst` lose their local bytes
    until the target is met; `last_eviction` is its report."""

    def __init__(self, src: Store, dst: str | os.PathLike[str], *, interval: float = 2.0,
                 max_backoff: float = 60.0, propagate_deletes: bool = False, reconcile_every: float = 3600.0,
                 on_round: Callable[[SyncRound], None] | None = None, keep_free: int | str | None = None,
                 max_size: int | str | None = None) -> None:
        _check_stores(src, dst)
        from .retention import parse_size

        self.keep_free, self.max_size = parse_size(keep_free, "keep_free"), parse_size(max_size, "max_size")
        self.last_eviction: Any = None
        if not isinstance(propagate_deletes, bool):
            raise InvalidArgument(f"propagate_deletes must be True or False, not {propagate_deletes!r}")
        self.propagate_deletes = propagate_deletes
        self.reconcile_every = _dt.timedelta(seconds=reconcile_every)
        for label, value in (("interval", interval), ("max_backoff", max_backoff),
                             ("reconcile_every", reconcile_every)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InvalidArgument(f"{label} must be a number of seconds > 0, not {value!r}")
        self.src, self.dst = src, dst
        self.interval, self.max_backoff = float(interval), float(max(max_backoff, interval))
        self.on_round = on_round
        self.rounds = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="microblob-sync", daemon=True)

    def start(self) -> SyncWorker:
        """Start the rounds (once: a started worker, e.g. `store.sync_to(...)` used in `with`, is left as is)."""
        if self._thread.ident is not None:
            return self
        if self.keep_free is not None or self.max_size is not None:
            self.src.on_full = self._make_room  # a save that finds the disk full evicts before it fails
        self._thread.start()
        return self

    def _make_room(self, wanted: int) -> int:
        """Evict for a save of `wanted` bytes that found the disk full; returns the bytes freed."""
        from .retention import evict

        try:
            report = evict(self.src, keep_free=(self.keep_free or 0) + 2 * wanted + (16 << 20),
                           max_size=self.max_size, destination=self.dst)
        except Exception as exc:  # noqa: BLE001 - the save fails with its own StoreFull; logged here
            _log().warning("retention could not make room for a save: %s", exc)
            return 0
        if report.evicted_files:
            _log().info("retention, for a save that found the disk full: %s", report.summary())
        return report.bytes_freed

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the worker to stop after its current round, and wait for it."""
        self._stop.set()
        if self.src.on_full == self._make_room:
            self.src.on_full = None
        if self._thread.is_alive():
            self._thread.join(timeout)

    def join(self, timeout: float | None = None) -> None:
        """Wait for the worker to end (it ends when stopped, or when its source store closes)."""
        while self._thread.is_alive():
            self._thread.join(timeout if timeout is not None else 0.5)  # short waits: Ctrl-C gets through
            if timeout is not None:
                return

    def __enter__(self) -> SyncWorker:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _due(self) -> bool:
        """Whether the next round should be a full one: none for `reconcile_every` (or ever)."""
        record = _state(self.src).find_one({"_id": "dest:" + destination_name(self.dst)}) or {}
        last = record.get("last_full_at")
        return last is None or _codec.utcnow() - last >= self.reconcile_every

    def _run(self) -> None:
        delay = self.interval
        while not self._stop.is_set():
            try:
                result = sync(self.src, self.dst, propagate_deletes=self.propagate_deletes, full=self._due())
            except Exception as exc:  # noqa: BLE001 - any failure of a round is logged and retried
                if self.src.closed:
                    return
                self.failures += 1
                _log().warning("sync to %s failed (%s); retrying in %.0f s", destination_name(self.dst),
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff)
                continue
            self.rounds += 1
            delay = self.interval
            if result.copy.copied_anything or not result.ok:
                _log().info("sync to %s: %s", result.destination, result.summary())
            if self.keep_free is not None or self.max_size is not None:
                last = self.last_eviction
                # Only a confirmation makes more bytes evictable: after a round that confirmed nothing,
                # a target the last eviction could not meet is not walked for again.
                if result.confirmed or last is None or last.met or last.unreachable:
                    self._evict()
            if self.on_round is not None:
                self.on_round(result)
            self._stop.wait(self.interval)

    def _evict(self) -> None:
        from .retention import evict

        try:
            report = evict(self.src, keep_free=self.keep_free, max_size=self.max_size, destination=self.dst)
        except Exception as exc:  # noqa: BLE001 - logged; the next round tries again
            if not self.src.closed:
                _log().warning("eviction after syncing to %s failed: %s", destination_name(self.dst), exc)
            return
        self.last_eviction = report
        if report.evicted_files or not report.met:
            _log().info("retention: %s", report.summary())
