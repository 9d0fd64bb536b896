#!/usr/bin/env bash
# The ResNet-56 study (docs/resnet56.md): every command in the order it runs.
# Each resumes where it stopped and skips what is done, so running this file
# again continues the queue. Results, figures and models go to resnet56/
# (committed); the base is models/resnet56.keras (seed 0, committed).
#
#     CIFAR10_DIR=... nohup bash resnet56/queue.sh > resnet56/queue.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=models/resnet56.keras
OUT=resnet56

# 1. Filter removal at the table's points: 2.13x and 2.57x fewer multiply-adds
#    (1 - 1/2.13 = 0.531, 1 - 1/2.57 = 0.611), 10 epochs of fine-tuning with
#    the base as teacher; Keras and LiteRT float32 time beside the base.
python part2_structured.py --model $BASE --flops-reductions 0.531 0.611 \
    --fine-tune-epochs 10 --output-dir $OUT
# 2. Tucker-2 at the study's k = 4 (3 epochs of fine-tuning), then every model
#    so far in LiteRT (Part 4).
python part3_tucker.py --model $BASE --k 4 --output-dir $OUT
python part4_deploy.py --model $BASE --output-dir $OUT
# 3. Scratch-B (Liu et al. 2019): each pruned architecture from fresh weights for
#    the base's 30 epochs x the MACs ratio + the 10 fine-tuning epochs.
python part1_cnn.py --experiments resnet56 --output-dir $OUT --epochs 74 \
    --architecture $OUT/models/structured_53.1.keras
python part1_cnn.py --experiments resnet56 --output-dir $OUT --epochs 87 \
    --architecture $OUT/models/structured_61.1.keras
# 4. Magnitude pruning (weights zeroed: smaller files, no speed), then Part 4
#    again to deploy its models beside the others (every flatbuffer re-timed).
python part2_prune.py --model $BASE --output-dir $OUT
python part4_deploy.py --model $BASE --output-dir $OUT
# 5. The latency-budget search over groups, on this machine (nothing else running).
#    A budget that no configuration meets ends it with exit 2 once the others
#    are stored (its last line names it): the queue goes on.
python part5_budget.py --model $BASE --latency-budget 0.5 0.3 0.2 0.1 \
    --keeps 1 0.75 0.5 0.25 --ranks none 0.5 --output-dir $OUT || [ $? -eq 2 ]
#    Part 4 once more, so that the searched models are deployed beside the others.
python part4_deploy.py --model $BASE --output-dir $OUT
# 6. The spread: the base and the 2.13x row over seeds 1 and 2, with each
#    fine-tuning recipe seed 0 got: 10 epochs, 15 (better on validation on
#    seed 0), and 10 at the base's own peak learning rate (0.2 at batch 128 is
#    0.8 at 512; better still on seed 0's validation). A later run takes over
#    its seed's sensitivity sweep and candidates. Then each seed's 2.13x
#    architecture from scratch (Scratch-B, as step 3: 30 / 0.469 + 10 = 74
#    epochs): seed 0's best row, measured on that seed alone.
RECIPES=("--fine-tune-epochs 10" "--fine-tune-epochs 15"
         "--fine-tune-epochs 10 --fine-tune-peak-lr 0.8")
for recipe in "${RECIPES[@]:1}"; do     # seed 0's 10 epochs are step 1
    python part2_structured.py --model $BASE --flops-reductions 0.531 $recipe --output-dir $OUT
done
for seed in 1 2; do
    python part1_cnn.py --experiments resnet56 --seed $seed --output-dir $OUT/seed$seed
    for recipe in "${RECIPES[@]}"; do
        python part2_structured.py --model $OUT/seed$seed/models/resnet56.keras --seed $seed \
            --flops-reductions 0.531 $recipe --output-dir $OUT/seed$seed
    done
done
for seed in 1 2; do
    python part1_cnn.py --experiments resnet56 --seed $seed --output-dir $OUT/seed$seed \
        --epochs 74 --architecture $OUT/seed$seed/models/structured_53.1.keras
done
# 7. The table beside the published rows, the spread over seeds, and the figure.
python common/report.py --output-dir $OUT --figure $OUT/figures/resnet56_published.png
