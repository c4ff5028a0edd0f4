"""A person's registry entries, packed: one fixed-width row per first-seen
transaction, keyed by a 64-bit hash of ``operator_id/txn_id``.

The streaming state keeps every first-seen (operator, txn_id) of a person, for
DUPLICATE and for refunds. Kept as fixed-width rows (:data:`ENTRY`) the entries of
all the people a batch touches become the kernel's registry arrays with one
``frombuffer`` and go back with one ``tobytes``: no object, string or msgpack
value per entry (docs/DECISIONS.md, 101). The key is a hash rather than the
string, so an entry has a fixed width and the state holds no transaction ids of
the past; the keys are :mod:`engine.rules.txn_keys`', which offline ``settle``
decides with too. A row keeps only what the rules read again (DECISIONS 102):
the amount and refunded sum for refunds, kind and status, and for telling a
DUPLICATE from a CONFLICTING_DUPLICATE a fingerprint of ``occurred_at`` and the
original's key instead of both.
"""

from __future__ import annotations

import numpy as np

from engine.rules.txn_keys import fingerprints

# little-endian, packed (22 bytes a row): the stored format, never reordered
ENTRY = np.dtype([("key", "<u8"),        # txn_keys.entry_keys of operator_id, txn_id
                  ("fp", "<u4"),         # txn_keys.fingerprints of occurred_at, original
                  ("amount", "<u4"),     # yen (config: max_amount < 2³²)
                  ("refunded", "<u4"),   # yen refunded against it so far (≤ amount)
                  ("kind", "i1"),        # Kind
                  ("status", "i1")])     # kernel.PENDING / ACCEPTED / REJECTED

# the rows of DECISIONS 101 (42 bytes): read from values written before 102, never written
WIDE_ENTRY = np.dtype([("key", "<u8"), ("orig", "<u8"), ("at", "<i8"), ("amount", "<i8"),
                       ("refunded", "<i8"), ("kind", "i1"), ("status", "i1")])


def narrow(wide: np.ndarray) -> bytes:
    """Rows of :data:`WIDE_ENTRY` (or a structured array with its fields) as packed
    :data:`ENTRY` rows, in the same order."""
    rows = np.zeros(len(wide), ENTRY)
    rows["fp"] = fingerprints(wide["at"], wide["orig"])
    for name in ("key", "amount", "refunded", "kind", "status"):
        rows[name] = wide[name]
    return rows.tobytes()
