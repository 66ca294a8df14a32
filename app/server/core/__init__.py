"""The speech core: protocol-independent. Adapters (app/server/native_ws.py, elevenlabs.py, synthesize.py,
openai_api.py) build a `ContextSpec` (spec.py) and drive a `Connection`/`StreamContext` (WebSockets) or a
`Speech` (whole texts over HTTP); every path runs through `ChunkPipeline` (pipeline.py) to the engine worker
and back in order. The core raises `app.errors.ClientError`, never a protocol's wire messages.
docs/architecture.md follows one chunk of text through it."""
