"""PGU's request on the test-suite digits models (tiny CNN and ViT): forget / retain / test accuracy
per request setting, to choose the defaults (docs/methods/pgu.md, "Choosing the request defaults").

The models are trained exactly as the tests' fixtures (tests/conftest.py); the Gram cache is prepared on
the whole digits training set with the default sample budget; each request gets no retain data (as
``unlearn(model, None, forget, "pgu", cache=...)``), so only the pass budget and the forget target stop it (sample forgetting: the original model's test
accuracy, as ``check_data=test`` would set it).

    python benchmarks/pgu_digits_curve.py                                  # the default settings
    python benchmarks/pgu_digits_curve.py --grid lr=0.05,0.2,0.5 max_epochs=5,10
    python benchmarks/pgu_digits_curve.py --models vit_tiny --scenarios class:3 --grid energy=0.9,0.95

Each --grid entry is NAME=V1,V2,... over PGUConfig fields; the rows are the product. One torch thread.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

import unlearnkit as uk
from unlearnkit.components import gradient_projection as pgu
from unlearnkit.progress import set_progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import TINY_MODELS, build_tiny  # noqa: E402  (the fixtures' own recipe)


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def parse_grid(entries: list[str]) -> list[dict]:
    names, values = [], []
    for entry in entries:
        name, _, vals = entry.partition("=")
        names.append(name)
        values.append([parse_value(v) for v in vals.split(",")])
    return [dict(zip(names, combo)) for combo in itertools.product(*values)]


def trained_model(name: str, digits, work: str | None) -> torch.nn.Module:
    """The fixture's model (trained as tests/conftest.py does), cached as safetensors in ``work`` if given."""
    from safetensors.torch import load_file, save_file

    model = build_tiny(name)
    path = Path(work) / f"{name}.safetensors" if work else None
    if path is not None and path.exists():
        model.load_state_dict(load_file(str(path)))
    else:
        uk.train(model, digits.train, TINY_MODELS[name][1])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


def layer_inputs(model: torch.nn.Module, data) -> dict[str, torch.Tensor]:
    """Every target layer's input rows (layer_inputs, group 0) over ``data`` (a Subset of an ArrayDataset)."""
    x, _ = data.dataset.batch(torch.as_tensor(data.indices))
    got: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, n=n: got.__setitem__(n, pgu.layer_inputs(m, a[0])[0]))
             for n, m in pgu.target_layers(model).items()]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return got


def print_movement(before: torch.nn.Module, after: torch.nn.Module, split) -> None:
    """Per layer: ||dW x|| / ||W x|| over retain and forget inputs of the original model, and the shift of
    the retain inputs themselves between the two models (what the projector of that layer never saw)."""
    r0, r1, f0 = layer_inputs(before, split.retain), layer_inputs(after, split.retain), layer_inputs(before, split.forget)
    new = pgu.target_layers(after)
    for name, layer in pgu.target_layers(before).items():
        w0 = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        dw = new[name].weight.detach().reshape(w0.shape) - w0
        move = lambda x: float((x @ dw.T).norm() / (x @ w0.T).norm())  # noqa: E731
        shift = float((r1[name] - r0[name]).norm() / r0[name].norm())
        print(f"    {name:20s} |dW|/|W| {float(dw.norm() / w0.norm()):.3f}  retain move {move(r0[name]):.3f}  "
              f"forget move {move(f0[name]):.3f}  retain input shift {shift:.3f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn", "vit_tiny"])
    ap.add_argument("--scenarios", nargs="+", default=["class:3", "random:0.1"])
    ap.add_argument("--grid", nargs="*", default=[])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--work", default=None, help="Folder to cache the trained models in (default: none).")
    ap.add_argument("--movement", action="store_true", help="Also print each layer's output movement on retain "
                                                             "vs forget inputs (grouped convs: group 0).")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    set_progress(False)
    digits = uk.load_dataset("digits")
    rows = parse_grid(args.grid) or [{}]
    print("model     scenario    setting                              UA(f)   RA     TA     passes  steps  stop")
    for name in args.models:
        model = trained_model(name, digits, args.work)
        with tempfile.TemporaryDirectory() as tmp:
            cache_path = Path(tmp) / "gram.safetensors"
            pgu.prepare(model, digits.train, path=cache_path)
            clean = cache_path.read_bytes()
            for scenario in args.scenarios:
                split = uk.make_unlearning_data(digits.train, digits.test, scenario, seed=0)
                test = split.test_retain if split.test_retain is not None else split.test
                base = (uk.accuracy(model, split.forget), uk.accuracy(model, split.retain),
                        uk.accuracy(model, test))
                print(f"{name:9s} {scenario:11s} {'original':36s} {base[0]:6.1f} {base[1]:6.1f} {base[2]:6.1f}")
                for setting in rows:
                    cache_path.write_bytes(clean)
                    start = time.perf_counter()
                    extra = {} if scenario.startswith("class") else {"sample_target": round(base[2], 2)}
                    res = uk.unlearn(copy.deepcopy(model), None, split.forget, "pgu", cache=str(cache_path),
                                     **{**extra, **setting})
                    secs = time.perf_counter() - start
                    out = res.model
                    ua, ra, ta = (uk.accuracy(out, split.forget), uk.accuracy(out, split.retain),
                                  uk.accuracy(out, test))
                    label = " ".join(f"{k}={v}" for k, v in setting.items()) or "defaults"
                    print(f"{name:9s} {scenario:11s} {label:36s} {ua:6.1f} {ra:6.1f} {ta:6.1f} "
                          f"{res.info['forget_passes']:6.2f} {res.steps:5d}  {res.info['stop_reason'][:40]} "
                          f"({secs:.1f}s) checks {res.info['forget_acc_history']} "
                          f"growth {res.info.get('grad_growth', float('nan')):.1f}", flush=True)
                    if args.movement:
                        print_movement(model, out, split)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
