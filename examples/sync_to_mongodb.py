"""The nightly sync: copy a store (the Raspberry Pi's file, say) to the institute's MongoDB.

    python examples/sync_to_mongodb.py SOURCE mongodb://host:27017/lab

`microblob.copy` brings over every object with its whole history, the workflows and the file bytes (in
MongoDB's GridFS layout, so `mongofiles` reads them too). Only what the destination lacks travels, so
run it as often as you like: a second run says "nothing to copy". Needs pymongo
(``pip install 'microblob[mongodb]'``).
"""

from __future__ import annotations

import sys

import microblob


def sync(source: str, destination: str) -> microblob.CopyReport:
    report = microblob.copy(source, destination)
    print(report.summary())
    for object_id, reason in report.problems:
        print(f"  left alone: {object_id}: {reason}")

    # Read back from MongoDB: each object's latest version there has the source's bytes (by sha256).
    with microblob.connect(source) as src, microblob.connect(destination) as dst:
        objects = src.blob_object_query({})
        same = versions = 0
        for obj in objects:
            try:
                same += dst.get_blob_fingerprint(obj.object_id)["sha256"] == obj.sha256
            except microblob.ObjectNotFound:
                continue
            versions += len(dst.get_object_history(obj.object_id))
        print(f"MongoDB holds {same} of the {len(objects)} source objects with the same bytes "
              f"({versions} versions in all)")
    return report


def main(argv: list[str]) -> None:
    if len(argv) != 2 or not argv[1].startswith("mongodb"):
        print(__doc__)
        raise SystemExit(2)
    report = sync(argv[0], argv[1])
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
