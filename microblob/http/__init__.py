"""The HTTP layer: the Starlette `ThingServer`, its routes (Things, invocations, Blob links,
store), the streaming responses, and the httpx `ThingClient`.

May import: every layer below (base, value, engine, store, things). See docs/ARCHITECTURE.md."""
