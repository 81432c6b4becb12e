"""Deletion requests as a workflow: a model store with a hash-chained ledger, receipts, gates and rollback.

A model owner honours a stream of deletion requests on one production model and must show what
was done. ``Store.create(path, checkpoint)`` (``unlearnkit store-init``) starts a store from a
checkpoint of ``unlearnkit train``; ``Store.open(path).request(ids, method=...)``
(``unlearnkit request``) runs one deletion request end to end and returns a ``Receipt``.
What the store guarantees and detects is in docs/deletion-requests.md.

The parts, each readable alone:

* ``files``     full writes, umask-respecting atomic replaces, faults as one-line errors;
* ``ledger``    the append-only hash chain of receipts, optional HMAC signing, format-1 reading;
* ``versions``  ``models/vNNNNNN`` directories, never-reused names, the ``CURRENT`` pointer swap;
* ``gates``     the acceptance gates (the forget gate with a confidence bound on the request's size);
* ``core``      ``Store``: create, open, verify, reconcile after a crash, state;
* ``request``   one request end to end (method choice, unlearning, gates, commit).
"""

from .config import StoreConfig
from .core import LEDGER_FILE, LOCK_FILE, STORE_FILE, STORE_FORMAT, TRAINING_IDS_FILE, Store
from .files import ids_sha256
from .ledger import KEY_ENV
from .receipt import EXIT_REFUSED, Receipt, has_batchnorm, recalibrate_batchnorm
from .versions import CURRENT_FILE, FORGOTTEN_FILE, MODELS_DIR, PGU_CACHE_FILE, RECEIPT_FILE

__all__ = ["Store", "StoreConfig", "Receipt", "recalibrate_batchnorm", "ids_sha256", "EXIT_REFUSED"]
