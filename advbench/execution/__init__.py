"""Executing a plan: the scheduler (:mod:`~advbench.execution.runner`), the executors that run
ready cells in this process, in forked workers (:mod:`~advbench.execution.executors`) or as Ray
tasks (:mod:`~advbench.execution.ray_executor`), running one cell or one batch of cells with the
cache's lock and atomic write (:mod:`~advbench.execution.execute`), and what a cell needs to run
anywhere (:mod:`~advbench.execution.context`).

Imported lazily: ``from advbench.execution.runner import Runner``; this package's own import
costs nothing (``advbench --help`` never loads torch).
"""
