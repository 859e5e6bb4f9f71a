"""Pure computation: arrays or Arrow tables in, arrays or tables out. No file I/O, no Dask
and no DuckDB (``tests/test_layers.py``)."""
