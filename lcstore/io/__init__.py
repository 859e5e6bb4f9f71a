"""Formats and files: one module per kind of file lcstore reads or writes, and
:mod:`~lcstore.io.layout` for every path name of a store and a release."""
