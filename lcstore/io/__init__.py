"""File formats lcstore reads and writes.

``ztf_products`` turns IPAC ZTF products (matchfiles, reference PSF catalogs) into the
canonical epochal and reference tables described in :mod:`lcstore.schema`.
"""
