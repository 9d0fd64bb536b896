"""Shared code of the CIFAR-10 compression suite: data, models, training, results, plots."""

import os

# TensorFlow prints several lines of C++ start-up notices on import; the scripts'
# own output is what users read (Python errors still raise). Set before any
# module here imports TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
