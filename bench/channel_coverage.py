"""Which Keras models can have channels removed: the channel dependency graph
(common/channels.py) on every keras.applications CNN family.

Each model is built with weights=None at 32x32x3 (or its smallest input) and
10 classes, logits out, its batch norms given random statistics (so that a
wrong slice shows; ConvNeXt's layer scales set to 1, not 1e-6), and then: its graph built (timed), 30% of the channels of every group
removed (the lowest indices kept: which ones does not matter here), the
pruned model checked against the original with the same channels zeroed
where they are made (`channels.zero_removed`, a forward pass of the
unchanged architecture), and converted to LiteRT float32 and int8.

    python bench/channel_coverage.py [--models ResNet50 MobileNetV2 ...]

Writes results/channel_coverage.json (one row per model, resumable) and
prints the table of docs/channels.md.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# TensorFlow is imported once the options are read (cli.load_backend), so that
# --help and a wrong option answer at once.
from common import cli, machine  # noqa: E402
from common.results import read_json, write_json  # noqa: E402

# keras.applications constructor -> input size: 32 where the family accepts
# it, else its documented minimum. Every CNN family keras.applications 3.15
# has (RegNet is not among them).
FAMILIES = {
    "VGG16": 32, "ResNet50": 32, "ResNet152": 32, "ResNet50V2": 32,
    "MobileNet": 32, "MobileNetV2": 32, "MobileNetV3Small": 32,
    "EfficientNetB0": 32, "EfficientNetV2B0": 32, "DenseNet121": 32,
    "Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75,
    "NASNetMobile": 32, "ConvNeXtTiny": 32,
}
KEEP = 0.7          # each group keeps 70% of its channels
IMAGES = 4          # random images for the exactness check and int8 calibration


def build(name):
    import keras
    import numpy as np
    size = FAMILIES[name]
    keras.utils.set_random_seed(0)
    constructor = getattr(keras.applications, name)
    model = constructor(weights=None, input_shape=(size, size, 3), classes=10,
                        classifier_activation=None)          # logits: softmax would saturate
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                               for w in layer.get_weights()])
        elif type(layer).__name__ == "LayerScale":             # ConvNeXt: 1e-6 at init
            layer.set_weights([np.ones_like(w) for w in layer.get_weights()])
    return model, size


def one_model(name):
    import numpy as np

    from common import channels, measure
    from common.deploy import to_flatbuffer
    model, size = build(name)
    start = time.perf_counter()
    graph = channels.build(model)
    seconds = time.perf_counter() - start
    keep = {g: np.arange(max(1, round(KEEP * group.size))) for g, group in graph.groups.items()}
    smaller = channels.remove(graph, keep)
    images = np.random.default_rng(1).uniform(0, 255, (IMAGES, size, size, 3)).astype("float32")
    pruned = smaller.predict(images, verbose=0)
    scale = float(np.abs(pruned).max())
    error = float(np.abs(pruned - channels.zero_removed(graph, keep).predict(
        images, verbose=0)).max()) / scale
    change = float(np.abs(pruned - model.predict(images, verbose=0)).max()) / scale
    litert = {}
    for precision in ("float32", "int8"):
        try:
            to_flatbuffer(smaller, precision, images if precision == "int8" else None)
            litert[precision] = "ok"
        except Exception as err:  # a row says what failed; the table goes on
            litert[precision] = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
    reasons = {}
    for layer, why in graph.whole:
        reasons[why] = reasons.get(why, 0) + 1
    return {"input": size, "params": measure.count_params(model),
            "groups": len(graph.groups),
            "channels": int(sum(g.size for g in graph.groups.values())),
            "layers_kept_whole": len(graph.whole), "why_whole": reasons,
            "flops": channels.flops(graph),
            "flops_pruned": channels.flops(graph, {g: len(k) for g, k in keep.items()}),
            "params_pruned": measure.count_params(smaller),
            "max_error": error, "max_change": change, "litert": litert,
            "graph_seconds": round(seconds, 3)}


def table(rows):
    lines = ["| model | input | groups | layers kept whole (why) | FLOPs before → after | "
             "largest error | logits changed by | LiteRT float32 / int8 | graph built in |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        why = "; ".join(f"{n}× {w}" for w, n in r["why_whole"].items()) or "none"
        lines.append(
            f"| {name} | {r['input']} | {r['groups']} | {r['layers_kept_whole']} ({why}) | "
            f"{r['flops'] / 1e6:.1f} M → {r['flops_pruned'] / 1e6:.1f} M "
            f"({r['flops_pruned'] / r['flops']:.2f}) | {r['max_error']:.1e} | "
            f"{r['max_change']:.1e} | {r['litert']['float32']} / {r['litert']['int8']} | "
            f"{r['graph_seconds']:.2f} s |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--force", action="store_true", help="measure stored rows again")
    args = parser.parse_args()
    cli.load_backend()
    import keras
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "results", "channel_coverage.json")
    settings = {"keep": KEEP, "images": IMAGES, "keras": keras.__version__, "logits": True,
                "machine": machine.label(machine.identity())}
    stored = read_json(path) if os.path.exists(path) else {}
    if stored.get("settings") != settings or args.force:
        stored = {"what": __doc__.split("\n\n")[1].replace("\n", " "), "settings": settings,
                  "models": {}}
    for name in args.models:
        if name in stored["models"]:
            continue
        start = time.perf_counter()
        stored["models"][name] = one_model(name)
        write_json(path, stored)
        row = stored["models"][name]
        print(f"{name}: {row['groups']} groups, error {row['max_error']:.1e}, "
              f"LiteRT {row['litert']}, {time.perf_counter() - start:.0f} s", flush=True)
    print(table({n: stored["models"][n] for n in FAMILIES if n in stored["models"]}))


if __name__ == "__main__":
    main()
