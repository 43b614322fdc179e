"""What recomputing the BatchNorm statistics after training (PreciseBN, training/nets/batchnorm.py)
does to held-out Dice, at CPU size, on phantoms. No database, no worker: the ML core only.

    .venv/bin/python bench/precise_bn.py [--train 10] [--test 20] [--size 64] [--epochs 40]

Trains one network with `fit` (which ends with the recalibration), then predicts the held-out
phantoms twice: with the weights `fit` saved, and with the same weights but the moving averages
Keras kept during training (the last epoch's checkpoint, written before the recalibration).
Prints both Dice figures against the phantoms' true infection (mean, median, share of images at
0.5 or more: an MD's "none" threshold in `manage.py replay`) and the seconds each part took.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import training.nets  # noqa: E402,F401  (sets the environment before TensorFlow loads)
from annotation.phantoms import make_phantom, md_drawing  # noqa: E402
from training.nets.checkpoints import CHECKPOINT_DIR  # noqa: E402
from training.nets.config import preset  # noqa: E402
from training.nets.fit import fit  # noqa: E402
from training.nets.predict import dice, load_model, predict_probabilities, predicted_mask  # noqa: E402


def held_out_dice(model, tests: list, size: int) -> dict[str, float]:
    grays = [gray for gray, _ in tests]
    probs = predict_probabilities(model, grays, size=size)
    values = [
        dice(predicted_mask(prob, *gray.shape), truth)
        for (gray, truth), prob in zip(tests, probs, strict=True)
    ]
    return {
        "mean": round(float(np.mean(values)), 3),
        "median": round(float(np.median(values)), 3),
        "share_at_least_0.5": round(float(np.mean(np.asarray(values) >= 0.5)), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=10, help="COVID-19 phantoms to train on")
    p.add_argument("--test", type=int, default=20, help="held-out COVID-19 phantoms")
    p.add_argument("--size", type=int, default=64, help="network input side")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--arch", default="unet")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    import tensorflow as tf

    folder = Path(tempfile.mkdtemp(prefix="precise-bn-"))
    images, masks, tests = [], [], []
    for i in range(args.train + args.test):
        phantom = make_phantom(1000 + i, size=256, covid=True)
        if i < args.train:  # trained on an MD-like drawing, judged against the truth
            images.append(str(folder / f"cxr{i}.png"))
            masks.append(str(folder / f"mask{i}.png"))
            Image.fromarray(phantom.image).save(images[-1])
            drawing = md_drawing(phantom.infection, i).astype(np.uint8) * 255
            Image.fromarray(drawing).save(masks[-1])
        else:
            tests.append((phantom.image, phantom.infection))
    config = preset(
        "small", input_size=args.size, epochs=args.epochs, arch=args.arch, seed=args.seed
    )
    started = time.monotonic()
    result = fit(config, images, masks, out_dir=folder / "run")
    trained_s = time.monotonic() - started
    run = json.loads(result.run_path.read_text())

    model = load_model(config, result.weights_path)
    recalibrated = held_out_dice(model, tests, args.size)
    # The last epoch's checkpoint holds the same weights with Keras' moving averages.
    checkpoint = tf.train.Checkpoint(model=model)
    checkpoint.restore(
        tf.train.latest_checkpoint(str(folder / "run" / CHECKPOINT_DIR))
    ).expect_partial()
    moving = held_out_dice(model, tests, args.size)
    print(
        json.dumps(
            {
                "config": {k: config.to_dict()[k] for k in ("arch", "input_size", "epochs")},
                "train_images": args.train,
                "test_images": args.test,
                "steps": run["steps_per_epoch"] * args.epochs,
                "final_loss": round(result.loss_history[-1], 3),
                "held_out_dice_moving_averages": moving,
                "held_out_dice_recalibrated": recalibrated,
                "recalibration": run["batchnorm"],
                "fit_s": round(trained_s, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
