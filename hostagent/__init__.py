"""MFS host agent: stamps the MFS header on every packet of a transfer, moves the
bytes with a small reliable UDP transport, reports flows and layer progress to the
controller, and (for emulation) drives a disaggregated prefill/decode workload.

See docs/hostagent.md.
"""
