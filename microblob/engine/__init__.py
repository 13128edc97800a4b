"""Storage engines and the document layer: the LMDB and in-memory key-value engines, the
Mongo-compatible collections over them, the query language, and the Mongita and MongoDB backends.

May import: `microblob._exceptions` only (and third-party libraries). See docs/ARCHITECTURE.md."""
