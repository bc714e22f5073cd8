"""Metrics sources built into the core, registered in the ``mlrollout.metrics`` entry point group
like a third party's: ``prometheus`` (:mod:`mlrollout.metrics.prometheus_spec`, the cheap spec
``plan validate`` loads; :mod:`mlrollout.metrics.prometheus`, the live source)."""
