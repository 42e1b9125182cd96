"""Sources and sinks: where payload bytes come from and where guest output goes."""

from pipeline.connectors.base import Sink, open_sink
from pipeline.connectors.file_sink import FileSink
from pipeline.connectors.source import Source

__all__ = ["FileSink", "Sink", "Source", "open_sink"]
