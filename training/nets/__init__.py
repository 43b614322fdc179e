"""Django-free ML core: model builders, losses, data pipeline, folds, fitting, metrics.

segmentation_models reads these two variables at import time; they must be set before the
first import of TensorFlow or segmentation_models anywhere in the process.
"""

import os

os.environ.setdefault("SM_FRAMEWORK", "tf.keras")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
