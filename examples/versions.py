"""Versions and history: every update of an object is a numbered version; with control_version=True the old
ones stay readable, exactly, forever (until the object is deleted).

    python examples/versions.py [STORE_URI]        # default: ./microblob.db (or $MICROBLOB_URI)

Walks one calibration table through its versions: versioned updates, a metadata-only version that shares
the bytes, exact-version reads, fingerprints, and what a non-versioned update does.
"""

from __future__ import annotations

import json
import sys
import uuid

import microblob


def table(gain: float, offset: float) -> bytes:
    """A small calibration table, as JSON bytes."""
    return json.dumps({"gain": gain, "offset": offset, "points": [round(gain * x + offset, 3) for x in range(5)]},
                      sort_keys=True).encode()


def main(uri: str | None = None) -> None:
    with microblob.connect(uri) as store:
        print(f"store: {store.uri}")
        oid = f"calibration-{uuid.uuid4().hex[:8]}"  # a new object on every run

        # 1. Three versioned saves: 0, 1, 2. Each replaced version goes to the history.
        for gain in (1.00, 1.02, 1.05):
            store.save_or_update_object(table(gain, 0.1), object_id=oid, type="calibration",
                                        custom_metadata={"gain": gain}, control_version=True)
        latest = store.get_blob_object(oid)
        print(f"saved {oid}: latest is v{latest.version} (prev_version {latest.prev_version}), "
              f"gain {latest.custom_metadata['gain']}")

        # 2. A metadata-only version: new version number, same bytes (shared, not copied).
        store.update_object_metadata(oid, custom_metadata={"gain": 1.05, "approved_by": "ana"}, tags=["approved"])
        approved = store.get_blob_object(oid)
        print(f"metadata-only update -> v{approved.version}, tags {approved.tags}, "
              f"same bytes as v2: {store.blob_objects_equal(oid, oid, version_a=2, version_b=3)}")

        # 3. Exact-version reads: any version, from the latest or the history, byte for byte.
        for version in range(approved.version + 1):
            obj = store.get_blob_object(oid, version=version)
            print(f"  v{obj.version}: gain {json.loads(obj.data)['gain']:.2f}, sha256 {obj.sha256[:12]}…, "
                  f"prev_version {obj.prev_version}")
        print(f"v0 and v1 differ: {not store.blob_objects_equal(oid, oid, version_a=0, version_b=1)}")
        print(f"fingerprint of v1: {store.get_blob_fingerprint(oid, version=1)['sha256'][:12]}…")

        # 4. The history: metadata of every version, newest first, never the bytes.
        history = store.get_object_history(oid)
        print(f"history: {[(h['version'], h['custom_metadata'].get('gain')) for h in history]}")

        # 5. A non-versioned update replaces the latest in place: v4 appears, v3 is not archived.
        store.save_or_update_object(table(1.06, 0.1), object_id=oid, control_version=False)
        now = store.get_blob_object(oid)
        try:
            store.get_blob_object(oid, version=3)
        except microblob.VersionNotFound as exc:
            print(f"non-versioned update -> v{now.version} (prev_version {now.prev_version}); {exc}; "
                  f"readable versions: {[h['version'] for h in store.get_object_history(oid)]}")

        # 6. Older versions can be found by their metadata, too (the history collection is queryable).
        old = store.query({"object_id": oid, "custom_metadata.gain": {"$lt": 1.03}}, collection="object_history",
                          projection={"version": 1, "_id": 0}, sort=[("version", 1)])
        print(f"archived versions with gain < 1.03: {[d['version'] for d in old]}")

        store.delete_object(oid)
        print(f"deleted {oid} with its whole history: {store.get_object_history(oid) == []}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
