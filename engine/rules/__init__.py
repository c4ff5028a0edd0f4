"""Pure decision and points logic: no I/O, no clock, no globals.

- ``model``       campaign, operators, reason codes, kinds (plain data)
- ``strings``     numba kernels over Arrow string buffers (formats, RFC 3339,
                  Individual Number, Kafka partitions)
- ``validate``    stateless checks 1–4, per batch, into array form
- ``kernel``      the stateful checks and the points, one compiled pass
- ``settlement``  offline driver (``decide_offline``, ``settle_records``)
"""
