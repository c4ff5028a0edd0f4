"""A person's registry entries, packed: one fixed-width row per first-seen
transaction, keyed by a 64-bit hash of ``operator_id/txn_id``.

The streaming state keeps every first-seen (operator, txn_id) of a person, for
DUPLICATE and for refunds. Kept as fixed-width rows (:data:`ENTRY`) the entries of
all the people a batch touches become the kernel's registry arrays with one
``frombuffer`` and go back with one ``tobytes``: no object, string or msgpack
value per entry (docs/DECISIONS.md, 101). The key is a hash rather than the
string, so an entry has a fixed width and the state holds no transaction ids of
the past; the keys are :mod:`engine.rules.txn_keys`', which offline ``settle``
decides with too.
"""

from __future__ import annotations

import numpy as np

# little-endian, packed (42 bytes a row): the stored format, never reordered
ENTRY = np.dtype([("key", "<u8"),        # txn_keys.entry_keys of operator_id, txn_id
                  ("orig", "<u8"),       # the same of original_txn_id, 0: none
                  ("at", "<i8"),         # occurred_at (µs)
                  ("amount", "<i8"),     # yen
                  ("refunded", "<i8"),   # yen refunded against it so far
                  ("kind", "i1"),        # Kind
                  ("status", "i1")])     # kernel.PENDING / ACCEPTED / REJECTED
