"""Building releases: one module per step, in pipeline order (:mod:`~lcstore.build.ingest`,
:mod:`~lcstore.build.match`, :mod:`~lcstore.build.write`, :mod:`~lcstore.build.margin`,
:mod:`~lcstore.build.refmap`, :mod:`~lcstore.build.publish`), their Dask tasks
(:mod:`~lcstore.build.tasks`) and the driver that wires them
(:mod:`~lcstore.build.pipeline`)::

    from lcstore.build import BuildConfig, Cutoffs, build_release, dask_client

    with dask_client(workers=2) as client:
        report = build_release(BuildConfig(..., cutoffs=Cutoffs(public, private)), client)
"""

from lcstore.build.cluster import dask_client
from lcstore.build.config import BuildConfig, BuildReport
from lcstore.build.pipeline import build_release
from lcstore.kernels.embargo import Cutoffs

__all__ = ["BuildConfig", "BuildReport", "Cutoffs", "build_release", "dask_client"]
