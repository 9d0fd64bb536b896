"""Tucker-2 decomposition of Conv2D layers (Kim et al. 2016, "Compression of deep
convolutional neural networks for fast and low power mobile applications").

A Keras kernel W has shape (kh, kw, c, f). Tucker-2 factors its two channel
modes (2, 3) and leaves the small spatial modes whole:

    W[h, w, i, j] ~= sum_{a, b} core[h, w, a, b] * U_in[i, a] * U_out[j, b]

so one conv becomes three: a 1x1 conv c -> R1 (kernel U_in), a kh x kw conv
R1 -> R2 (kernel core; the original strides, padding and dilation) and a 1x1
conv R2 -> f (kernel U_out^T; the original bias and activation). A bias-free
1x1 conv maps zero padding to zero, so the three compute exactly the conv with
the reconstructed kernel, for any padding.
"""

import math
import warnings

import keras
import numpy as np
import tensorly as tl
from keras import layers
from tensorly.decomposition import partial_tucker

from common.models import replace_layers

CHANNEL_MODES = (2, 3)  # (kh, kw, c_in, c_out): decompose c_in and c_out


def tucker_ranks(in_channels, out_channels, k):
    """The study's ranks: R1 = ceil(c * k / 8), R2 = ceil(f * k / 8); k = 8 is full rank."""
    if not isinstance(k, (int, np.integer)) or not 1 <= k <= 8:
        raise ValueError(f"k must be an integer in 1..8, got {k!r}")
    return math.ceil(in_channels * k / 8), math.ceil(out_channels * k / 8)


def _partial_tucker(kernel, ranks):
    """(first, core, last, relative error) of the channel modes' partial Tucker."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 4:
        raise ValueError(f"expected a kernel (kh, kw, c, f), got shape {kernel.shape}")
    r1, r2 = ranks
    c, f = kernel.shape[2:]
    if not (1 <= r1 <= c and 1 <= r2 <= f):
        raise ValueError(f"ranks {tuple(ranks)} outside 1..{c} and 1..{f} for kernel {kernel.shape}")
    # init="svd": HOSVD start, then HOOI iterations; deterministic. A rank above
    # what the other modes allow (R1 > kh*kw*R2) is lowered by tensorly, which
    # warns; the core's shape then tells the ranks actually used.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Trying to compute SVD with n_eigenvecs")
        (core, (u_in, u_out)), errors = partial_tucker(
            kernel, rank=[r1, r2], modes=list(CHANNEL_MODES), init="svd", tol=1e-6,
            n_iter_max=200)
    return np.asarray(u_in), np.asarray(core), np.asarray(u_out).T, float(errors[-1])


def decompose_kernel(kernel, ranks):
    """Partial Tucker of a conv kernel on its channel modes.

    Parameters
    ----------
    kernel : ndarray (kh, kw, c, f)
    ranks : (R1, R2), 1 <= R1 <= c, 1 <= R2 <= f

    Returns
    -------
    first : ndarray (c, R1)           input factor U_in
    core : ndarray (kh, kw, R1, R2)
    last : ndarray (R2, f)            output factor, transposed (U_out^T)
    """
    return _partial_tucker(kernel, ranks)[:3]


def reconstruct_kernel(first, core, last):
    """Kernel (kh, kw, c, f) from the factors returned by `decompose_kernel`."""
    return tl.tenalg.multi_mode_dot(core, [first, last.T], modes=list(CHANNEL_MODES))


def relative_error(kernel, ranks):
    """||W - W_hat|| / ||W|| (Frobenius) of the rank-(R1, R2) Tucker-2
    approximation, as tensorly's partial_tucker reports it (from the norms:
    ~1e-8 rather than 0 at full rank)."""
    return _partial_tucker(kernel, ranks)[3]


def is_decomposable(layer):
    """A plain 2-D conv whose kernel has spatial extent (1x1 convs gain nothing)."""
    return (type(layer) is layers.Conv2D and layer.groups == 1
            and layer.data_format == "channels_last"
            and tuple(layer.kernel_size) != (1, 1))


def decompose_conv(conv, ranks):
    """Replace one Conv2D by three (see the module docstring); a pure function.

    Returns the list [first 1x1, core kh x kw, last 1x1] of new, built layers
    named ``<name>_tucker_in``, ``<name>_tucker_core``, ``<name>_tucker_out``.
    """
    if not is_decomposable(conv):
        raise ValueError(f"layer {conv.name!r} ({type(conv).__name__}) is not a "
                         "channels-last Conv2D with groups=1 and a kernel larger than 1x1")
    kernel = keras.ops.convert_to_numpy(conv.kernel)
    c, f = kernel.shape[2:]
    first, core, last = decompose_kernel(kernel, ranks)
    r1, r2 = core.shape[2:]
    dtype = conv.dtype_policy
    pieces = [
        (layers.Conv2D(r1, 1, use_bias=False, dtype=dtype, name=f"{conv.name}_tucker_in"),
         c, [first[None, None]]),                                         # (1, 1, c, R1)
        (layers.Conv2D(r2, conv.kernel_size, strides=conv.strides, padding=conv.padding,
                       dilation_rate=conv.dilation_rate, use_bias=False, dtype=dtype,
                       name=f"{conv.name}_tucker_core"),
         r1, [core]),                                                     # (kh, kw, R1, R2)
        (layers.Conv2D(f, 1, use_bias=conv.use_bias, activation=conv.activation, dtype=dtype,
                       name=f"{conv.name}_tucker_out"),
         r2, [last[None, None]] + ([keras.ops.convert_to_numpy(conv.bias)] if conv.use_bias else [])),
    ]
    new_layers = []
    for layer, in_channels, weights in pieces:
        layer.build((None, None, None, in_channels))
        layer.set_weights([w.astype(np.float32) for w in weights])
        new_layers.append(layer)
    return new_layers


def decomposable_convs(model, include_first=False):
    """Names of the convs `decompose_model` would replace, in model order.

    The first conv (3 input channels) stays unless `include_first`: it holds
    few weights and little would be gained.
    """
    return [layer.name for layer in model.layers
            if is_decomposable(layer) and (include_first or layer.kernel.shape[2] > 3)]


def decompose_model(model, rank_fn, layer_names=None):
    """A new model with the named convs Tucker-decomposed and every other layer
    copied with its weights (the original is not changed and shares nothing).

    Parameters
    ----------
    model : keras.Sequential or functional keras.Model
    rank_fn : callable (c, f) -> (R1, R2), e.g. ``lambda c, f: tucker_ranks(c, f, 4)``
    layer_names : list of str, optional
        Convs to decompose; default ``decomposable_convs(model)``.

    Returns
    -------
    new_model : keras.Model
    ranks : dict layer name -> [R1, R2], as used (the core's shape)
    """
    names = decomposable_convs(model) if layer_names is None else list(layer_names)
    unknown = [n for n in names if n not in {layer.name for layer in model.layers}]
    if unknown:
        raise ValueError(f"no layer named {', '.join(unknown)} in model {model.name!r}")
    replaced, ranks = {}, {}
    for name in names:
        conv = model.get_layer(name)
        replaced[name] = decompose_conv(conv, rank_fn(*conv.kernel.shape[2:]))
        # the core's shape: tensorly lowers a rank above what the other modes allow
        ranks[name] = list(replaced[name][1].kernel.shape[2:])

    new_model = replace_layers(model, replaced, name=f"{model.name}_tucker")
    return new_model, ranks
