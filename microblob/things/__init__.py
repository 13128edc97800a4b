"""The Thing model: `Thing`, `thing_action`, `thing_property` and the JSON schemas of their
inputs and outputs. No HTTP.

May import: the base, the Blob value, `microblob.engine` and `microblob.store`. See docs/ARCHITECTURE.md."""
