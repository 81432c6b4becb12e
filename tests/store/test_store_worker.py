"""Subprocess entry for the store tests (no tests here): ``python test_store_worker.py STORE START STOP``.

Runs one deletion request of ids START..STOP-1 with finetune on STORE and prints the status.
$UNLEARNKIT_STORE_KILL_AT makes the store SIGKILL this process at that step.
"""

import sys

if __name__ == "__main__":
    import numpy as np
    import torch

    torch.set_num_threads(1)
    from unlearnkit.progress import set_progress
    from unlearnkit.store import Store

    set_progress(False)
    store, start, stop = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    receipt = Store.open(store).request(np.arange(start, stop), method="finetune")
    print(receipt.status, receipt.request_id, flush=True)
