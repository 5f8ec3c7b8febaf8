"""Data that ships with the package: :mod:`.synthetic` (clustered synthetic corpora for the demo, tests and
benchmarks) and :mod:`.demo_texts` (the text demo's passages and queries)."""
