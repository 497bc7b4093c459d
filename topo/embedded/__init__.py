"""The embedded software switch: the MFS pipeline of p4src/ served over real P4Runtime.

See docs/embedded-switch.md. Entry points: :func:`topo.embedded.server.start_server`
(in-process) and the ``mfs-switch`` command (:mod:`topo.embedded.main`).
"""
