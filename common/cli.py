"""Command-line options shared by the part scripts; bad values exit 2 with one line."""

import argparse
import os
import sys
import tempfile
import threading
import time
import weakref

from common.precision import PRECISIONS
from common.quiet import quiet_stderr

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join("models", "reference.keras")
MODEL_HELP = ("the .keras CIFAR-10 classifier to {}; default: models/reference.keras "
              "of --output-dir, else the repository's (committed)")


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors are one line (`prog: error: ...`), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _int_at_least(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {minimum}")
        return value
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def train_limit(text):
    """argparse type of --train-limit: 1 .. CIFAR-10's 50,000 training images."""
    from common.data import TRAIN_IMAGES
    value = positive_int(text)
    if value > TRAIN_IMAGES:
        raise argparse.ArgumentTypeError(f"{text!r}: CIFAR-10 has {TRAIN_IMAGES:,} "
                                         "training images")
    return value


def int_in_range(name, low, high):
    """argparse type: an integer in low..high, e.g. `k`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name} must be an integer in {low}..{high}, got {text!r}")
        return value
    return parse


def unit_fraction(name):
    """argparse type: a number in [0, 1), e.g. a prune rate."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be a number in [0, 1), got {text!r}") from None
        if not 0 <= value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be in [0, 1), got {text!r}")
        return value
    return parse


def positive_float(name):
    """argparse type: a number above 0, e.g. a latency in ms."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not value > 0:
            raise argparse.ArgumentTypeError(f"{name} must be a number above 0, got {text!r}")
        return value
    return parse


def share(name, none=False):
    """argparse type: a share in (0, 1], e.g. of a group's channels kept;
    with `none`, "none" too (None)."""
    def parse(text):
        if none and text.lower() == "none":
            return None
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not 0 < value <= 1:
            raise argparse.ArgumentTypeError(f"{name} must be a number in (0, 1]"
                                             + (" or none" if none else "") + f", got {text!r}")
        return value
    return parse


def open_fraction(name):
    """argparse type: a number strictly between 0 and 1, e.g. a share of FLOPs removed."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not 0 < value < 1:
            raise argparse.ArgumentTypeError(f"{name} must be a number in (0, 1), got {text!r}")
        return value
    return parse


def make_parser(description, epilog=None, epochs=True):
    """A parser with the options every part shares (`epochs`: include --epochs)."""
    parser = Parser(description=description, epilog=epilog,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", metavar="DIR",
                        help="folder with the official CIFAR-10 python version "
                             "(cifar-10-batches-py/ or cifar-10-python.tar.gz); "
                             "default: $CIFAR10_DIR, else Keras' download")
    if epochs:
        parser.add_argument("--epochs", type=positive_int, metavar="N",
                            help="override every experiment's number of epochs")
    parser.add_argument("--batch-size", type=positive_int, metavar="N",
                        help="override the batch size")
    parser.add_argument("--train-limit", type=train_limit, metavar="N",
                        help="train on the first N training images only (quick runs)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="compute precision of the reference model's training and of "
                             "fine-tuning (Part 1's steps 4-7 stay float32): auto is "
                             "mixed_bfloat16 where the hardware has bfloat16 units, else "
                             "float32 (default: %(default)s; see common/precision.py)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="random seed for weights, shuffling and augmentation "
                             "(default: %(default)s)")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where results/, figures/, models/ and checkpoints/ are "
                             "written (default: the repository for the committed "
                             "settings, else runs/<part>-<label>/, which git ignores)")
    parser.add_argument("--force", action="store_true",
                        help="redo work whose results are already there (the results "
                             "file is first copied to results/<part>.backup-<time>.json)")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw the figures from results/*.json, train nothing")
    return parser


def one_model_each(parser, option, values, model_name):
    """Exit 2 (one line) where two values of `option` would name the same
    model file, e.g. --flops-reductions 0.5 0.5000001."""
    names = [model_name(v) for v in values]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        parser.error(f"{option}: values that name the same model ({clash[0]}); give each once")


def output_paths(output_dir):
    """The results/, figures/, models/ and checkpoints/ folders under
    `output_dir`, created and checked writable (ValueError naming the folder)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output-dir {output_dir}: not a folder")
    paths = {name: os.path.join(output_dir, name)
             for name in ("results", "figures", "models", "checkpoints")}
    for path in paths.values():
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as err:
            what = "not a folder" if isinstance(err, (FileExistsError, NotADirectoryError)) \
                else f"cannot be written ({err.strerror})"
            raise ValueError(f"--output-dir {output_dir}: {path} {what}") from None
    return paths


def default_model(output_dir):
    """models/reference.keras of `output_dir` if it has one, else the repository's."""
    own = os.path.join(output_dir or REPO_ROOT, DEFAULT_MODEL)
    return own if os.path.exists(own) else os.path.join(REPO_ROOT, DEFAULT_MODEL)


def model_path(model_option, output_dir):
    """--model, else the default model (see `default_model`), checked to be a
    file before TensorFlow is imported (ValueError naming it)."""
    path = model_option or default_model(output_dir)
    if not os.path.isfile(path):
        hint = "" if model_option else \
            "; make it with: python part1_cnn.py --experiments reference"
        raise ValueError(f"{path}: model file not found{hint}")
    return path


def is_reference(path):
    """Whether the model file at `path` is the repository's reference model
    (same bytes): only then are the study's and the targets' rows beside it."""
    from common.results import file_digest
    reference = os.path.join(REPO_ROOT, DEFAULT_MODEL)
    return os.path.isfile(reference) and file_digest(path) == file_digest(reference)


def shown_path(path):
    """`path` relative to the repository when inside it (as results record it)."""
    relative = os.path.relpath(os.path.abspath(path), REPO_ROOT)
    return path if relative.startswith(os.pardir) else relative


def load_backend():
    """Import Keras and its backend with the C++ start-up notices hidden.

    TensorFlow's absl logging prints before TF_CPP_MIN_LOG_LEVEL is read
    ("All log messages before absl::InitializeLog()", oneDNN, CUDA), so they
    are held back (see `quiet_stderr`) and shown only if the import fails.
    """
    with quiet_stderr():
        import keras
        if keras.backend.backend() == "tensorflow":
            import tensorflow  # noqa: F401


def run_main(main, argv=None):
    """Call `main(argv)`; a ValueError (bad data, bad model file) exits 2 with
    one line; Ctrl-C exits 130 with one line (every step stored so far stays:
    the same command resumes)."""
    prog = os.path.basename(sys.argv[0])
    try:
        return main(argv)
    except ValueError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\n{prog}: interrupted; what finished is stored, and the same command "
              "resumes from there", file=sys.stderr)
        return 130


HEARTBEAT = 15.0   # seconds: the longest a step goes without a line saying it runs


def _beat(ref, stop):
    """Call `ref().beat()` a few times a second until it returns False, `stop`
    is set or the object is gone (a Sweep done or dropped, a block left)."""
    while not stop.wait(min(1.0, HEARTBEAT / 4)):
        beating = ref()
        if beating is None or not beating.beat():
            return
        del beating


def _start_beating(obj):
    stop = threading.Event()
    weakref.finalize(obj, stop.set)
    threading.Thread(target=_beat, args=(weakref.ref(obj), stop), daemon=True).start()
    return stop


class Heartbeat:
    """`with Heartbeat("what it does"):` prints "what it does ..." and then
    "what it does: running for 40 s" every HEARTBEAT seconds while the block
    runs: a step that prints nothing for long still says it is alive."""

    def __init__(self, what):
        self.what = what

    def __enter__(self):
        print(f"{self.what} ...", flush=True)
        self._start = self._spoke = time.perf_counter()
        self._stop = _start_beating(self)
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def beat(self):
        now = time.perf_counter()
        if now - self._spoke >= HEARTBEAT:
            print(f"{self.what}: running for {now - self._start:.0f} s", flush=True)
            self._spoke = now
        return True


class Sweep:
    """Progress across a sweep of `total` items: Keras' Progbar (a bar with ETA)
    in a terminal; in a log, each item's line starts with `[i/total, ETA]`.

    `sweep.done(line)` after each item prints its result line and advances;
    `skipped` items (done by an earlier run) are counted in one line. While an
    item runs longer than HEARTBEAT seconds, a line says which one and for
    how long, every HEARTBEAT seconds: no sweep goes silent.
    """

    def __init__(self, total, what, skipped=0):
        import keras
        if skipped:
            print(f"{what}: {skipped} of {total + skipped} done already, skipped")
        self.total, self.what, self.count = total, what, 0
        self.live = sys.stdout.isatty()
        self._bar = keras.utils.Progbar(total, verbose=1 if self.live else 0, unit_name="item")
        self._start = self._item_start = self._spoke = time.perf_counter()
        self._lock = threading.Lock()
        _start_beating(self)

    def _say(self, line):
        if self.live:
            print(f"\r{line}\033[K", flush=True)  # over the bar, which redraws below
            self._bar.update(self.count)
        else:
            print(line, flush=True)
        self._spoke = time.perf_counter()

    def _eta(self, now):
        """Minutes left: the mean finished item's time for each item to come."""
        if not self.count:
            return ""
        mean = (self._item_start - self._start) / self.count
        left = max(mean * (self.total - self.count) - (now - self._item_start), 0)
        return f", ETA {left / 60:.1f} min"

    def beat(self):
        """Say that the current item still runs, if nothing was said for
        HEARTBEAT seconds; False once every item is done."""
        with self._lock:
            now = time.perf_counter()
            if self.count >= self.total:
                return False
            if now - self._spoke >= HEARTBEAT:
                self._say(f"[{self.what} {self.count + 1}/{self.total}{self._eta(now)}] "
                          f"running for {now - self._item_start:.0f} s")
            return True

    def done(self, line):
        with self._lock:
            self.count += 1
            now = time.perf_counter()
            if self.live:
                self._say(line)
            else:
                eta = (now - self._start) / self.count * (self.total - self.count)
                self._say(f"[{self.what} {self.count}/{self.total}, ETA {eta / 60:.1f} min] {line}")
            self._item_start = now

