"""The figure of each result kind, one module per group of analyses (connectivity,
landscapes, curvature, transfer, ...): each registers its functions with
:func:`basinscope.plotting.plots`; :func:`basinscope.plotting.plot` imports them all."""
