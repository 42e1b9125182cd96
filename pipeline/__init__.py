"""wasm-pipeline: durable streaming pipelines through sandboxed WebAssembly guests."""

__version__ = "0.1.0"
