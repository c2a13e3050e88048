"""The data: fetching sources into parquet (`fetch`, `fetch_catalog`, `raw_parquet`), decoding
them into the prepared arrays (`prepare`, `prepare_catalog`, `prepared`, `images`),
duplicates and image hashes, and the reviewed corrections.

May import: imgrec's root modules and `imgrec.pipeline`; never training, recommender,
serving, cli or server.
"""
