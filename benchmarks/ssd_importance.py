"""SSD importance estimates against the retrain oracle (docs/methods/baselines.md, "ssd").

    python benchmarks/ssd_importance.py [--dataset digits|mnist] [--seeds 0 1] [--alphas 2 3 5 8 10]

Trains a CNN on the dataset, then for class forgetting (class 3) and random 10% forgetting compares
SSD with importance="per_sample", "reference_batches" and the former shuffled-batch estimate
("shuffled_batches", batch 64, alpha 10) with the retrain oracle (the same recipe on the retain set).
Prints UA / RA / TA / MIA-Efficacy, Avg.Gap and the dampened fraction per estimate.
"""

from __future__ import annotations

import argparse
import copy

import torch

import unlearnkit as uk
from unlearnkit.methods import create_method, ssd
from unlearnkit.methods.random_label import concat_datasets

SETTINGS = {  # dataset -> (model kwargs, recipe, train subset size or None)
    "digits": (dict(width=16), uk.Recipe(epochs=15, lr=0.05, batch_size=64), None),
    "mnist": (dict(width=16), uk.Recipe(epochs=3, lr=0.05, batch_size=128), 10000),
}


def shuffled_batch_ssd(model, retain, forget, seed):
    """The former estimate: squared batch-mean gradients over a shuffled pass of D (batch 64)."""
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    imp_d = ssd.batch_fisher(model, concat_datasets(retain, forget), 64, shuffle=True, generator=gen)
    imp_f = ssd.batch_fisher(model, forget, 64, shuffle=True, generator=gen)
    selected = ssd.dampen(model, imp_d, imp_f, 10.0, 1.0)
    return model, selected / sum(v.numel() for v in imp_d.values())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="digits", choices=sorted(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--alphas", type=float, nargs="+", default=[10.0])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model_kwargs, recipe, subset = SETTINGS[args.dataset]
    splits = uk.load_dataset(args.dataset)
    train = splits.train if subset is None else torch.utils.data.Subset(splits.train, range(subset))
    in_channels = splits.train[0][0].shape[0]
    for seed in args.seeds:
        torch.manual_seed(seed)
        original = uk.create_model("cnn", num_classes=10, in_channels=in_channels, **model_kwargs)
        uk.train(original, train, recipe)
        for request in ("class:3", "random:0.1"):
            data = uk.make_unlearning_data(train, splits.test, request, seed=seed)
            torch.manual_seed(seed)
            oracle = uk.create_model("cnn", num_classes=10, in_channels=in_channels, **model_kwargs)
            uk.train(oracle, data.retain, recipe)
            oracle_ev = uk.evaluate(oracle, data, seed=seed)
            rows = [("retrain", oracle, 0.0), ("original", original, 0.0)]
            rows.append(("shuffled_batches",) + shuffled_batch_ssd(original, data.retain, data.forget, seed))
            for importance in ("per_sample", "reference_batches"):
                for alpha in args.alphas:
                    result = create_method("ssd", original, seed=seed, importance=importance,
                                           alpha=alpha).fit(data.retain, data.forget)
                    rows.append((f"{importance} a={alpha:g}", result.model, result.info["dampened_fraction"]))
            for name, model, fraction in rows:
                ev = uk.evaluate(model, data, reference=oracle_ev, seed=seed)
                m = ev.summary()
                print(f"{args.dataset} seed {seed} {request:10s} {name:24s} UA {m['UA']:6.2f} RA {m['RA']:6.2f} "
                      f"TA {m['TA']:6.2f} MIA {m['MIA-Efficacy']:6.2f} Avg.Gap {m.get('Avg.Gap', 0):6.2f} "
                      f"dampened {100 * fraction:6.3f}%", flush=True)


if __name__ == "__main__":
    main()
