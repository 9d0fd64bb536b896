"""Model builders. Each returns an uncompiled Keras model for 32x32x3 inputs in [0, 1]."""

import os

import keras
import numpy as np
from keras import layers

from common import precision
from common.data import IMAGE_SHAPE, NUM_CLASSES


def plain_cnn():
    """Step 4's CNN: two 3x3 conv layers, no pooling, a dense head.

    Without pooling the feature map stays 28x28x32 = 25088 values, so the dense
    layer holds most of the 3.2 M weights: the net memorises the training set
    and test accuracy saturates near 60%, as in the study.
    """
    return keras.Sequential([
        keras.Input(IMAGE_SHAPE),
        layers.Conv2D(32, 3, activation="relu", name="conv1"),   # 30x30x32
        layers.Conv2D(32, 3, activation="relu", name="conv2"),   # 28x28x32
        layers.Flatten(name="flatten"),
        layers.Dense(128, activation="relu", name="dense1"),
        layers.Dense(NUM_CLASSES, activation="softmax", name="output"),
    ], name="plain_cnn")


def augmentation(max_shift=0.125, seed=0, dtype=None):
    """Random horizontal flip and shifts of up to `max_shift` of the image size
    (0.125 = 4 pixels), with reflected borders.

    Shifts are rounded to whole pixels (nearest-neighbour): bilinear resampling
    would blur the training images, which the test images never are.
    Keras preprocessing layers run inside the model and only while training,
    so a model that contains them classifies un-augmented images unchanged.
    dtype: e.g. "float32" to keep pixels exact under a mixed-precision policy.
    """
    return keras.Sequential([
        layers.RandomFlip("horizontal", seed=seed, dtype=dtype),
        layers.RandomTranslation(max_shift, max_shift, fill_mode="reflect",
                                 interpolation="nearest", seed=seed + 1, dtype=dtype),
    ], name="augmentation")


def pooled_cnn(augment=False, max_shift=0.125, seed=0):
    """Step 6's CNN: step 4's convs with 2x2 max pooling after each ("same" padding).

    Pooling shrinks the feature map to 8x8x64, so the dense head has 16x fewer
    inputs than step 4's and the convs see a wider context.
    """
    stack = [keras.Input(IMAGE_SHAPE)]
    if augment:
        stack.append(augmentation(max_shift, seed=seed))
    stack += [
        layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),  # 32x32x32
        layers.MaxPooling2D(name="pool1"),                                      # 16x16x32
        layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2"),  # 16x16x64
        layers.MaxPooling2D(name="pool2"),                                      # 8x8x64
        layers.Flatten(name="flatten"),
        layers.Dense(128, activation="relu", name="dense1"),
        layers.Dense(NUM_CLASSES, activation="softmax", name="output"),
    ]
    return keras.Sequential(stack, name="augmented_cnn" if augment else "pooled_cnn")


def whitening_kernel(images, size=2, eps=5e-4):
    """A conv kernel that whitens `size`x`size` patches of `images` (airbench's first layer).

    The eigenvectors of the patch covariance, scaled by 1/sqrt(eigenvalue), map
    patches to decorrelated unit-variance features; each is used with both signs
    so that the GELU after it keeps the information in both halves.

    images : float (N, 32, 32, 3), already scaled as the model's input
    returns: float32 kernel (size, size, 3, 2 * 3 * size**2) and bias (2 * 3 * size**2,);
             the bias centres the outputs (the patches' mean maps to zero)
    """
    n, h, w, c = images.shape
    # Every size x size patch as a row: (N * (h-size+1) * (w-size+1), size*size*c),
    # flattened in Keras' kernel order (row, column, channel).
    patches = np.stack([images[:, i:h - size + 1 + i, j:w - size + 1 + j, :]
                        for i in range(size) for j in range(size)], axis=3)
    patches = patches.reshape(-1, size * size * c).astype(np.float64)
    mean = patches.mean(axis=0)
    centred = patches - mean
    eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(patches))
    filters = eigenvectors / np.sqrt(eigenvalues + eps)        # (size*size*c, size*size*c)
    filters = np.concatenate([filters, -filters], axis=1)      # both signs
    kernel = filters.reshape(size, size, c, -1).astype(np.float32)
    return kernel, (-mean @ filters).astype(np.float32)


@keras.saving.register_keras_serializable(package="cifar_suite")
class ScaledShift(layers.Layer):
    """y = x + scale * b, one b per channel.

    The gradient reaching b is scale times that of the shift, and so is each
    step: the shift moves scale**2 times faster than a plain bias would at the
    same learning rate. airbench trains batch-norm biases at 64x the learning
    rate of the weights; Keras optimizers have one rate, so scale = 8 does it.
    """

    def __init__(self, scale, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def build(self, input_shape):
        self.b = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="b")

    def call(self, x):
        return x + keras.ops.cast(self.scale * self.b, x.dtype)

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def _norm(x, name, shift_lr_multiplier, epsilon):
    """Batch norm without a learned scale (as airbench: the next conv rescales).

    shift_lr_multiplier: None for a standard BatchNormalization (what the model
    is saved as); a number m splits the shift into a `ScaledShift` of scale
    sqrt(m) for training, so that it learns m times faster.
    """
    # momentum 0.6: running statistics follow the fast-changing weights of a
    # 10-epoch run (Keras' default 0.99 lags by ~100 steps).
    norm = dict(momentum=0.6, epsilon=epsilon, scale=False, name=name)
    if shift_lr_multiplier is None:
        return layers.BatchNormalization(**norm)(x)
    x = layers.BatchNormalization(center=False, **norm)(x)
    return ScaledShift(scale=float(np.sqrt(shift_lr_multiplier)), name=f"{name}_shift")(x)


def _conv_block(x, width, name, shift_lr_multiplier, epsilon):
    """conv -> 2x2 max pool -> BN -> GELU -> conv -> BN -> GELU (airbench's ConvGroup)."""
    # Convs have no bias: the batch norm after each supplies the shift.
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    x = layers.MaxPooling2D(name=f"{name}_pool")(x)
    x = _norm(x, f"{name}_bn1", shift_lr_multiplier, epsilon)
    x = layers.Activation("gelu", name=f"{name}_gelu1")(x)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2")(x)
    x = _norm(x, f"{name}_bn2", shift_lr_multiplier, epsilon)
    return layers.Activation("gelu", name=f"{name}_gelu2")(x)


def reference_cnn(widths=(64, 256, 256), whitening=None, shift_lr_multiplier=None,
                  bn_epsilon=1e-5):
    """The ~90% reference net for Parts 2 and 3, after airbench94.

    A frozen 2x2 whitening conv (3 -> 24 channels), three conv blocks that each
    halve the resolution (32 -> 16 -> 8 -> 4), global max pooling, and a
    bias-free linear head scaled by 1/9 (small logits, as airbench).

    whitening : (kernel, bias) from `whitening_kernel`, or None (trainable, random).
    shift_lr_multiplier : None, or the training form with faster batch-norm
        shifts (see `_norm`); `export_reference` turns that into the standard
        form, which is what Parts 2 and 3 load.
    bn_epsilon : 1e-5, not Keras' 1e-3: weight decay shrinks the bias-free convs
        until their output variance is ~1e-3 (measured), where a large epsilon
        would stop normalising.
    """
    inputs = keras.Input(IMAGE_SHAPE)
    # float32 even under a bf16 policy: whitening multiplies the faint
    # high-frequency patch components by up to ~100, and bf16's 8-bit mantissa
    # would turn them into noise (17% of the signal, measured).
    stem = layers.Conv2D(24, 2, padding="valid", name="whiten", dtype="float32",
                         trainable=whitening is None)                  # 31x31x24
    x = layers.Activation("gelu", name="whiten_gelu", dtype="float32")(stem(inputs))
    for i, width in enumerate(widths, start=1):
        x = _conv_block(x, width, f"block{i}", shift_lr_multiplier, bn_epsilon)  # 15, 7, 3
    x = layers.GlobalMaxPooling2D(name="pool")(x)                       # (width,)
    x = layers.Dense(NUM_CLASSES, use_bias=False, name="head")(x)
    x = layers.Rescaling(1 / 9, name="logit_scale")(x)
    outputs = layers.Activation("softmax", dtype="float32", name="softmax")(x)
    model = keras.Model(inputs, outputs, name="reference_cnn")
    if whitening is not None:
        stem.set_weights(list(whitening))
    _identity_init(model)
    return model


def export_reference(trained, widths):
    """The float32, standard-layer form of a `reference_cnn(shift_lr_multiplier=m)`:
    each BN + ScaledShift pair becomes one BN whose beta is scale * b."""
    with precision.policy("float32"):  # the whitening weights passed keep it frozen
        model = reference_cnn(widths, whitening=trained.get_layer("whiten").get_weights(),
                              bn_epsilon=trained.get_layer("block1_bn1").epsilon)
    for layer in model.layers:
        if not layer.weights:
            continue
        source = trained.get_layer(layer.name)
        if isinstance(layer, layers.BatchNormalization):
            shift = trained.get_layer(f"{layer.name}_shift")
            beta = shift.scale * keras.ops.convert_to_numpy(shift.b)
            layer.set_weights([beta, *source.get_weights()])  # beta, moving mean, variance
        else:
            layer.set_weights(source.get_weights())
    return model


def _identity_init(model):
    """Make each 3x3 conv start as identity on its first c_in filters (airbench's
    dirac init): the block starts close to a residual path, which trains faster."""
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.kernel_size == (3, 3):
            kernel = keras.ops.convert_to_numpy(layer.kernel).copy()  # (3, 3, c, f)
            c = min(kernel.shape[2], kernel.shape[3])
            kernel[:, :, :, :c] = 0.0
            kernel[1, 1, np.arange(c), np.arange(c)] = 1.0
            layer.kernel.assign(kernel)


def _basic_block(x, width, stride, name, weight_decay):
    """conv3x3 -> BN -> ReLU -> conv3x3 -> BN, plus the shortcut, then ReLU
    (He et al. 2016, "Deep residual learning", CIFAR variant). Where the
    shape changes the shortcut is a strided 1x1 conv with batch norm (their
    option B), so that every layer is a standard Keras layer."""
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    conv = dict(padding="same", use_bias=False, kernel_initializer="he_normal",
                kernel_regularizer=regularizer)
    y = layers.Conv2D(width, 3, strides=stride, name=f"{name}_conv1", **conv)(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(width, 3, name=f"{name}_conv2", **conv)(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    if stride != 1 or x.shape[-1] != width:
        x = layers.Conv2D(width, 1, strides=stride, name=f"{name}_proj",
                          **{**conv, "padding": "valid"})(x)
        x = layers.BatchNormalization(name=f"{name}_proj_bn")(x)
    y = layers.Add(name=f"{name}_add")([x, y])
    return layers.ReLU(name=f"{name}_out")(y)


def cifar_resnet(depth=56, widths=(16, 32, 64), weight_decay=0.0):
    """He et al.'s CIFAR ResNet of `depth` = 6n + 2 layers (20, 32, 44, 56, 110):
    a 3x3 conv stem, three stages of n basic blocks at `widths` channels on
    32x32, 16x16 and 8x8 maps, global average pooling and a Dense softmax head.
    ResNet-56: 125 M multiply-adds and 0.86 M parameters per image.

    weight_decay : L2 factor on the conv and Dense kernels (0: none), as a
        Keras regularizer so that it is part of the model's loss.
    """
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), "
                         f"got {depth}")
    blocks = (depth - 2) // 6
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None
    inputs = keras.Input(IMAGE_SHAPE)
    x = layers.Conv2D(widths[0], 3, padding="same", use_bias=False, name="stem_conv",
                      kernel_initializer="he_normal", kernel_regularizer=regularizer)(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage, width in enumerate(widths, start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            x = _basic_block(x, width, stride, f"stage{stage}_block{block + 1}", weight_decay)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(NUM_CLASSES, name="head", kernel_regularizer=regularizer)(x)
    outputs = layers.Activation("softmax", dtype="float32", name="softmax")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


def leaf_layers(model):
    """Every layer of `model` in order, nested models (e.g. an augmentation
    Sequential, or a classifier inside a trainer) opened up."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer


def replace_layers(model, replacements, name=None):
    """A new model in which each layer named in `replacements` is swapped for the
    given list of built layers, applied in sequence (an empty list drops the
    layer), and every other layer is copied with its weights; `model` is not
    changed and shares nothing with the result.

    model : keras.Sequential or functional keras.Model, each replaced layer
        with one input and one output
    replacements : dict layer name -> list of keras layers
    """
    def copy(layer):
        return layer.__class__.from_config(layer.get_config())

    if isinstance(model, keras.Sequential):
        stack = [keras.Input(model.input_shape[1:])]
        for layer in model.layers:
            stack += replacements[layer.name] if layer.name in replacements else [copy(layer)]
        new_model = keras.Sequential(stack, name=name or model.name)
    else:
        def call(layer, *args, **kwargs):
            if layer.name not in replacements:
                return layer(*args, **kwargs)
            x = args[0]
            for piece in replacements[layer.name]:
                x = piece(x)
            return x
        new_model = keras.models.clone_model(model, clone_function=copy, call_function=call)
        new_model.name = name or model.name
    for layer in model.layers:
        if layer.name not in replacements and layer.weights:
            new_model.get_layer(layer.name).set_weights(layer.get_weights())
    return new_model


def file_problem(path):
    """Why the file at `path` is not a Keras 3 `.keras` archive, or None: read
    from its first bytes (a LiteRT flatbuffer says "TFL3", HDF5 its own
    signature; a .keras file is a zip archive)."""
    import zipfile
    with open(path, "rb") as f:
        head = f.read(8)
    if head[4:8] == b"TFL3":
        return ("a LiteRT flatbuffer, not a Keras model: give the .keras it was "
                "converted from (part4_deploy.py converts it)")
    if head.startswith(b"\x89HDF"):
        return ("a Keras 2 / HDF5 file: load it with Keras and save it as .keras "
                "(model.save('model.keras'))")
    if not zipfile.is_zipfile(path):
        return "not a .keras file (a .keras model is a zip archive; this one is not, or is damaged)"
    return None


def load_classifier(path, hint=""):
    """Load a .keras CIFAR-10 classifier with Keras' safe mode on (no arbitrary code).

    Raises ValueError naming the file when it is missing, not a Keras model, or
    not a classifier of 32x32x3 images into 10 classes. `hint` is appended to
    the missing-file message (e.g. the command that makes the model).
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: model file not found{hint}")
    problem = file_problem(path)
    if problem:
        raise ValueError(f"{path}: {problem}")
    try:
        model = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as err:
        import re
        text = str(err).splitlines()[0] if str(err) else ""
        custom = re.search(r"Could not locate class '([^']+)'", str(err))
        if custom:
            raise ValueError(f"{path}: layer class {custom.group(1)!r} is not one of Keras' "
                             "own (a custom layer): its code is not loaded, and safe mode "
                             "runs none; rebuild the model from standard layers") from None
        raise ValueError(f"{path}: not a loadable Keras model "
                         f"({type(err).__name__}: {text[:160]})") from None
    if not isinstance(model, keras.Model) or len(model.outputs) != 1 \
            or tuple(model.input_shape[1:]) != IMAGE_SHAPE \
            or tuple(model.output_shape[1:]) != (NUM_CLASSES,):
        raise ValueError(f"{path}: not a CIFAR-10 classifier (input {model.input_shape}, "
                         f"output {model.output_shape}; expected (None, 32, 32, 3) -> (None, 10))")
    return model


def with_precision(model, policy, name_prefix=""):
    """A copy of `model` computing in `policy` (e.g. "mixed_bfloat16"), same
    weights, its layers' names prefixed with `name_prefix`.

    Two ends stay float32: the input stem up to and including the first conv
    (raw pixels and, in the reference net, the whitening filters that amplify
    faint components; see `reference_cnn`) and the output layer, so that the
    probabilities and the loss keep float32 precision.
    """
    names = [layer.name for layer in model.layers]
    first_conv = next((i for i, layer in enumerate(model.layers)
                       if isinstance(layer, layers.Conv2D)), -1)
    keep = set(names[:first_conv + 1]) | {names[-1]}

    def clone(layer):
        config = layer.get_config()
        if layer.name not in keep and "dtype" in config:
            config["dtype"] = policy
        config["name"] = name_prefix + layer.name
        return layer.__class__.from_config(config)
    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def reinitialized(model, policy=None, weight_decay=0.0):
    """`model`'s architecture with fresh weights (each layer's own
    initializer, seeded by `keras.utils.set_random_seed`), an L2 factor
    `weight_decay` on every kernel that takes a regularizer (0: none), and
    computing in `policy` as `with_precision` does (None: as saved). For
    training a pruned architecture from scratch (Liu et al. 2019's Scratch-B)."""
    regularizer = keras.regularizers.L2(weight_decay) if weight_decay else None

    def clone(layer):
        config = layer.get_config()
        if "kernel_regularizer" in config:
            config["kernel_regularizer"] = regularizer
        return layer.__class__.from_config(config)
    fresh = keras.models.clone_model(model, clone_function=clone)
    return with_precision(fresh, policy) if policy else fresh
