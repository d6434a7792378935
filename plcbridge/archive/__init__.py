"""The image archive: the frames of rejected and fail-safe parts (and a sample of passed
ones), each with its decision record, kept on disk for review and retraining (`[archive]`,
docs/archive.md). A sink on the journal's seam (plcbridge/sinks.py): side work that a full
or missing disk can slow or stop, never the PLC's answers.

- store.py: the layout, atomic files, the index and eviction (also read by the tool);
- sink.py: the writer, on its own thread.
"""

from plcbridge.archive.sink import ArchiveSink

__all__ = ["ArchiveSink"]
