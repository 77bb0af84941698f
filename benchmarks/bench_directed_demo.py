"""The demo's fine-tune under the 0.9 default, 0.8's `best`, plain sgd and fgsm: where the directed race misleads.

On a two-class model a build toward one class flips nearly every image the model gives the other, so its
non-targeted rate is the split's class mix; when the val split's mix is not the test split's, the race picks on val
the direction test has least of (benchmarks/README.md "The 0.9 default"). Prints each split's clean mix, then per
seed and attacker the test rate, build seconds, the kept v's val rate and the candidates.
The cell is the demo recipe's own non-targeted fine-tune cell (``robaudit.demo.demo_recipe``) without noise draws.
Usage: ``python benchmarks/bench_directed_demo.py [SEEDS]`` after ``robaudit demo`` trained the models (seeds 0,1,2).
"""

from __future__ import annotations

import sys

import torch

from robaudit.attacks.predict import predict
from robaudit.core.specs import DEFAULT_METHOD
from robaudit.demo import choose_data, demo_recipe
from robaudit.eval.run import run_uap
from robaudit.models import load_model_and_task

VARIANTS = {"best (0.8 default)": {"method": "best"}, "0.9 default": {}, "sgd plain": {"toward_classes": False},
            "fgsm": {"method": "fgsm"}}


def main(seeds: list[int]) -> None:
    recipe = demo_recipe(choose_data())
    [cell] = [c for c in recipe.cells(lambda m: None) if c.target is None and not c.model.endswith("_random")]
    lm, task = load_model_and_task(cell.model, device="cpu")
    for split, limit in (("val", cell.select_limit), ("test", cell.eval_limit)):
        x, y = task.tensors(split, size=lm.card.input_size, limit=limit, seed=0)
        p = predict(lm.module, x, batch_size=64)
        print(f"{split}: {len(y)} images, {(y == 0).float().mean():.3f} are {lm.classes[0]}, "
              f"{(p == 0).float().mean():.3f} called {lm.classes[0]}, accuracy {(p == y).float().mean():.3f}")
    for seed in seeds:
        for name, over in VARIANTS.items():
            spec = cell.model_copy(update={"method": DEFAULT_METHOD, **over, "seed": seed, "controls": 0,
                                           "device": "cpu"})
            r = run_uap(spec, quiet=True).result
            a = r.attack
            print(seed, name, f"test {r.metrics.fooling_rate.value:.3f}", f"{a.seconds:.1f}s",
                  f"sel {a.selection.best_rate:.3f}",
                  [(c.name, round(c.selection_rate or 0, 3), c.images_seen) for c in a.candidates], flush=True)


if __name__ == "__main__":
    torch.set_num_threads(2)
    main([int(s) for s in (sys.argv[1] if len(sys.argv) > 1 else "0,1,2").split(",")])
