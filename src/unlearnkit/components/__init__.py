"""Building blocks the unlearning methods are made of (each one is also usable on its own).

- ``gradient_projection``: per-layer input Gram matrices and their projectors (PGU's data side:
  prepare once, downdate per request).
- ``lora_adapters``: our LoRA adapters (add, train, merge); used by lora, prune_lora, rfa_lora.
- ``pruning``: structured L2 filter pruning and global magnitude pruning with their masks.
- ``weight_masks``: ``ParamMask``, masks enforced exactly through any optimizer (pruning, SalUn).
- ``compaction``: physically remove pruned channels (``unlearnkit compact``).

The methods themselves live in ``unlearnkit.methods`` (one file per method).
"""
