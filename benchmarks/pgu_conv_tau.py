"""Run another PGU benchmark with a separate tau for Conv2d layers (a measurement, not a library option).

    CONV_TAU=0.97 python benchmarks/pgu_conv_tau.py benchmarks/pgu_digits_curve.py --scenarios class:3
    CONV_TAU=0.97 python benchmarks/pgu_conv_tau.py benchmarks/pgu_cost.py --budgets 1000x64 --no-distance --reuse-cache

Conv2d layers get tau = $CONV_TAU, every other layer the request's ``energy``: the projector bases are
computed per layer kind by ``projection_bases`` itself (patched for this process only). Used to check
whether ResNet-20's better result at a higher tau (docs/methods/pgu.md, "Cost") comes from its convs alone.
"""

from __future__ import annotations

import os
import runpy
import sys

from unlearnkit.components import gradient_projection as gram
import unlearnkit.methods.pgu as pgu_method

_projection_bases = gram.projection_bases


class _LayerSubset:
    def __init__(self, cache, keep):
        self.layers = {n: spec for n, spec in cache.layers.items() if keep(spec)}
        self.seed = cache.seed


def projection_bases_by_kind(cache, grams, traces, energy, device=None):
    conv_tau = float(os.environ["CONV_TAU"])
    bases, ranks = {}, {}
    for tau, keep in ((conv_tau, lambda s: s["kind"] == "Conv2d"), (energy, lambda s: s["kind"] != "Conv2d")):
        b, r = _projection_bases(_LayerSubset(cache, keep), grams, traces, tau, device)
        bases.update(b)
        ranks.update(r)
    return bases, ranks


if __name__ == "__main__":
    gram.projection_bases = pgu_method.gram.projection_bases = projection_bases_by_kind
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
