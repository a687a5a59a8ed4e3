"""vidsearch: search video libraries by meaning.

Videos are cut into clips, embedded with InternVideo2, stored as Parquet shards plus a FAISS
index, and searched with text through DuckDB filters. See README.md and docs/ARCHITECTURE.md.
"""

__version__ = "0.1.0"
