"""Does the shared fine-tuning recipe (common.finetune.FINE_TUNE) hold on the
validation split?

The recipe was first picked at 90% sparsity on test accuracy. This re-checks
it where no model trained and nothing is reported: the reference's
validation split. At 90% global sparsity (Part 2's pruning, gradual) and for
Tucker-2 at k = 4 (Part 3), it fine-tunes with the recipe and with one change
at a time (the peak learning rate of 0.05; no teacher; pruned in one shot;
for Tucker-2, its earlier recipe: peak 0.05 without a teacher), the same seed
each, and stores every variant's validation accuracy per epoch in
results/probes.json under "fine_tune_recipe" (seeds other than 0 are named
in their entries).

    python bench/fine_tune_recipe.py --data-dir DIR     (~30 min on 2 cores)
    python bench/fine_tune_recipe.py --data-dir DIR --method tucker --seed 1 \
        --variants recipe "peak lr 0.05, no teacher"

The test set is never read.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TensorFlow is imported once the options are read (cli.load_backend), so that
# --help and a wrong option answer at once.
from common import cli, machine  # noqa: E402
from common.data import load_for_run  # noqa: E402
from common.results import file_digest, read_json, write_json  # noqa: E402

GRADUAL = {"start_kept_factor": 2, "ramp_epochs": 0.5, "mask_every": 5}  # Part 2's
ONE_SHOT = {"start_kept_factor": 1, "ramp_epochs": 0, "mask_every": 5}
VARIANTS = {  # name -> (changes to the recipe, gradual pruning)
    "recipe": ({}, GRADUAL),
    "peak lr 0.05": ({"peak_learning_rate": 0.05}, GRADUAL),
    "no teacher": ({"distillation_weight": 0.0}, GRADUAL),
    "one-shot pruning": ({}, ONE_SHOT),
    "peak lr 0.05, no teacher": ({"peak_learning_rate": 0.05, "distillation_weight": 0.0},
                                 GRADUAL),
}
PRUNED_VARIANTS = ("recipe", "peak lr 0.05", "no teacher", "one-shot pruning")
# Tucker-2 was fine-tuned before at peak 0.05 without a teacher: that, and the recipe.
TUCKER_VARIANTS = ("recipe", "peak lr 0.05, no teacher", "peak lr 0.05")


def fine_tuned(method, variant, reference_path, splits, seed):
    """Validation accuracy per epoch of one method fine-tuned with one variant."""
    from common import evaluation, finetune, models, pruning, tucker
    changes, gradual = VARIANTS[variant]
    recipe = {**finetune.fine_tune_recipe(), **changes}
    teacher = models.load_classifier(reference_path) if recipe["distillation_weight"] else None
    model = models.load_classifier(reference_path)
    if method == "pruned 90%":
        records = pruning.fine_tune_pruned(model, teacher, 0.9, splits.train,
                                           splits.validation, recipe, gradual, seed)
    else:
        model, _ = tucker.decompose_model(model, lambda c, f: tucker.tucker_ranks(c, f, 4))
        evaluation.recalibrate_batchnorm(model, splits.train[0][:10_000])
        records = finetune.fine_tune(model, splits.train, splits.validation, teacher=teacher,
                                     seed=seed, **recipe)
    return [round(r["validation_accuracy"], 4) for r in records]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--model", default=os.path.join(cli.REPO_ROOT, cli.DEFAULT_MODEL))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--method", choices=("pruned", "tucker", "both"), default="both")
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS),
                        help="only these variants (default: all of each method's)")
    args = parser.parse_args()
    splits = load_for_run(args.data_dir)
    cli.load_backend()
    from common import finetune
    path = os.path.join(cli.REPO_ROOT, "results", "probes.json")
    probe = {"what": __doc__.split("\n\n")[1].replace("\n", " "),
             "model_sha256": file_digest(args.model), "data": splits.data_id,
             "recipe": finetune.fine_tune_recipe(), "gradual": GRADUAL, "seed": 0,
             "machine": machine.label(machine.identity()), "validation_accuracy": {}}
    stored = read_json(path).get("fine_tune_recipe", {})
    if {k: stored.get(k) for k in ("model_sha256", "data", "recipe")} == \
            {k: probe[k] for k in ("model_sha256", "data", "recipe")}:
        probe["validation_accuracy"] = stored["validation_accuracy"]  # resume
    methods = {"pruned": ["pruned 90%"], "tucker": ["Tucker k = 4"],
               "both": ["pruned 90%", "Tucker k = 4"]}[args.method]
    suffix = f", seed {args.seed}" if args.seed else ""
    todo = [(m, v) for m in methods
            for v in (PRUNED_VARIANTS if m == "pruned 90%" else TUCKER_VARIANTS)
            if f"{m}: {v}{suffix}" not in probe["validation_accuracy"]
            and (args.variants is None or v in args.variants)]
    for method, variant in todo:
        start = time.perf_counter()
        accuracies = fine_tuned(method, variant, args.model, splits, args.seed)
        probe["validation_accuracy"][f"{method}: {variant}{suffix}"] = accuracies
        probes = read_json(path)
        probes["fine_tune_recipe"] = probe
        write_json(path, probes)
        print(f"{method}, {variant}: validation {accuracies} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
