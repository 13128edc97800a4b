"""The object API tour: save, version, query and read objects in ./microblob.db (or $MICROBLOB_URI).

    python examples/quickstart.py [STORE_URI]

Run it twice: the objects keep their ids, so the second run adds versions instead of new objects.
"""

from __future__ import annotations

import hashlib
import struct
import sys
import zlib

import microblob


def tiny_png(width: int, height: int, shade: int) -> bytes:
    """A real grey PNG, so the browse page has a thumbnail to show."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes([(shade + x + y) % 256 for x in range(width)]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def main(uri: str | None = None) -> None:
    with microblob.connect(uri) as store:
        print(f"store: {store.uri}")
        with microblob.Workflow(name="quickstart", store=store) as wf:
            # 1. Save bytes with provenance. A fixed id makes re-runs update the same object.
            image_id = store.save_or_update_object(
                tiny_png(64, 48, 0),
                object_id="quickstart-image",
                task_id="capture-1",
                type="image",
                content_type="image/png",
                custom_metadata={"exposure_ms": 12.5, "stage": {"x": 1.0, "y": 2.0}},
                control_version=True,
            )
            obj = store.get_blob_object(image_id)
            print(f"saved {obj.object_id} v{obj.version}: {obj.size} bytes, sha256 {obj.sha256[:12]}…"
                  f" in workflow {wf.workflow_id[:8]}…")

            # 2. Update it: the old version stays readable because control_version=True.
            store.save_or_update_object(
                tiny_png(64, 48, 128), object_id=image_id, control_version=True,
                custom_metadata={"exposure_ms": 25.0, "stage": {"x": 1.0, "y": 2.0}},
            )
            latest = store.get_blob_object(image_id)
            print(f"updated to v{latest.version} (prev_version {latest.prev_version}); "
                  f"attribute and mapping access agree: {latest.custom_metadata == latest['custom_metadata']}")

            # 3. Exact versions and the history (metadata only, never the bytes).
            first = store.get_blob_object(image_id, version=0)
            assert hashlib.sha256(first.data).hexdigest() == first.sha256
            print(f"version 0 is still there: {first.size} bytes, exposure {first.custom_metadata['exposure_ms']} ms")
            for entry in store.get_object_history(image_id)[:3]:
                print(f"  history: v{entry['version']} prev={entry['prev_version']} size={entry['size']}")

            # 4. A model checkpoint and a dataset, then queries over provenance.
            store.save_or_update_ml_model(b"\x00" * 4096, object_id="quickstart-model", task_id="train-1",
                                          custom_metadata={"accuracy": 0.93}, control_version=True)
            store.save_or_update_dataset(b"x,y\n1,2\n3,4\n", object_id="quickstart-data", content_type="text/csv",
                                         control_version=True)
            good = store.ml_model_query({"custom_metadata.accuracy": {"$gte": 0.9}})
            print(f"models with accuracy >= 0.9: {[m.object_id for m in good]}")
            in_workflow = store.blob_object_query({"workflow_id": wf.workflow_id}, sort=[("type", 1)])
            print(f"objects in this workflow: {[(o.type, o.object_id) for o in in_workflow]}")

        report = store.verify()
        print(f"verify: {'ok' if report.ok else report.damaged} ({report.checked} versions re-hashed)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else None)
