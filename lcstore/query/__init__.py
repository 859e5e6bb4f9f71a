"""Reading published releases: :func:`lcstore.open` and :class:`~lcstore.query.release.Release`,
over one class per search (:mod:`~lcstore.query.search`) and DuckDB SQL
(:mod:`~lcstore.query.sql`)."""
