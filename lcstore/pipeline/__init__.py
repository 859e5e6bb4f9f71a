"""Building releases: one module per step, in pipeline order (:mod:`~lcstore.pipeline.ingest`,
:mod:`~lcstore.pipeline.match`, :mod:`~lcstore.pipeline.write`, :mod:`~lcstore.pipeline.margin`,
:mod:`~lcstore.pipeline.refmap`, :mod:`~lcstore.pipeline.publish`), their Dask tasks
(:mod:`~lcstore.pipeline.tasks`) and the driver that wires them
(:mod:`~lcstore.pipeline.driver`)::

    from lcstore.pipeline import BuildConfig, Cutoffs, build_release, dask_client

    with dask_client(workers=2) as client:
        report = build_release(BuildConfig(..., cutoffs=Cutoffs(public, private)), client)
"""

from lcstore.kernels.embargo import Cutoffs
from lcstore.pipeline.cluster import dask_client
from lcstore.pipeline.config import BuildConfig, BuildReport
from lcstore.pipeline.driver import build_release

__all__ = ["BuildConfig", "BuildReport", "Cutoffs", "build_release", "dask_client"]
