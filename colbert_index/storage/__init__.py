"""The on-disk format (docs/format.md): :mod:`.manifest` (format version, the manifest and the files it names),
:mod:`.files` (durable writes, atomic directories, the writer's lock), :mod:`.segments` (a segment's arrays and
the shared codebook) and :mod:`.metadata` (per-segment SQLite metadata)."""
