"""Fashion-MNIST recipe variants, chosen on validation data: one variant per process, in-memory arrays.

The 60k training images are split once (stratified, seed 123) into 54k train / 6k validation, the same for every
variant; each variant trains with the default recipe's pieces (registry net, AdamW, cosine with one warm-up epoch,
label smoothing, the training input pipeline and augmentation presets) with one thing changed, and prints one JSON line: validation accuracy with and
without flip test-time augmentation (what a variant is chosen on), the official test accuracy beside it (reported,
never used to choose), epoch time and images/s. Wall times are only comparable between runs on a quiet machine.

    python bench/train_variants.py                           # the default recipe, 12 epochs
    python bench/train_variants.py --epochs 16
    python bench/train_variants.py --model imagerec-cnn-wide
    python bench/train_variants.py --augment hflip-erase --batch 128
    python bench/train_variants.py --precision mixed_bfloat16 --epochs 28 --model imagerec-cnn-wide \
        --augment hflip-erase --weight-decay 0.05        # a 10-minute variant
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import replace

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="imagerec-cnn", help="a net of the registry")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=None, help="default: the training recipe's")
    parser.add_argument(
        "--augment", default="hflip", help="an augmentation preset (the default picks hflip here)"
    )
    parser.add_argument("--precision", default="float32", help="Keras dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sklearn.model_selection import train_test_split

    from imagerec.data.builtin import get_builtin

    arrays = get_builtin("fashion-mnist").load()
    (x, y), (xte, yte) = arrays["train"], arrays["test"]
    x, xte = x[..., None], xte[..., None]
    xtr, xva, ytr, yva = train_test_split(x, y, test_size=6000, stratify=y, random_state=123)

    import keras

    from imagerec.data.augment import build_augment
    from imagerec.data.pipeline import PipelineSpec, make_dataset
    from imagerec.models.registry import build_model, count_flops
    from imagerec.settings import RunConfig
    from imagerec.training.auto import choose_bn_momentum
    from imagerec.training.recipe import compile_model, lr_schedule, one_hot, steps_for

    name = args.model
    keras.utils.set_random_seed(args.seed)
    keras.mixed_precision.set_global_policy(args.precision)
    config = RunConfig()
    config = replace(
        config,
        model=replace(config.model, name=name, bn_momentum=choose_bn_momentum(len(xtr), args.batch)),
        train=replace(
            config.train,
            epochs=args.epochs,
            batch_size=args.batch,
            learning_rate=args.lr,
            weight_decay=config.train.weight_decay if args.weight_decay is None else args.weight_decay,
        ),
    )
    model = build_model(name, 28, 1, 10, config.model)
    steps = steps_for(len(xtr), args.batch)
    compile_model(model, config, lr_schedule(config, steps, args.epochs, args.lr), metrics=False)
    spec = PipelineSpec(image_size=28, channels=1, batch_size=args.batch)
    augment = build_augment(args.augment, seed=args.seed)
    ds = make_dataset(
        [], [], spec, training=True, augment=augment, seed=args.seed, arrays=(xtr, ytr.astype("int32"))
    )
    ds = one_hot(ds, 10)
    epoch_s: list[float] = []

    class EpochTimer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            epoch_s.append(time.perf_counter() - self.t0)

    t0 = time.perf_counter()
    model.fit(ds, epochs=args.epochs, verbose=0, callbacks=[EpochTimer()])
    fit_s = time.perf_counter() - t0

    def accuracy(images, labels, tta: bool = False) -> float:
        p = model.predict(images, batch_size=1024, verbose=0)
        if tta:
            p = p + model.predict(images[:, :, ::-1], batch_size=1024, verbose=0)
        return round(float((p.argmax(1) == labels).mean()), 4)

    median_epoch = float(np.median(epoch_s))
    print(json.dumps({
        **vars(args), "mflops": round(count_flops(model) / 1e6, 2), "fit_s": round(fit_s, 1),
        "epoch_s": round(median_epoch, 2), "images_per_s": round(len(xtr) / median_epoch),
        "val": accuracy(xva, yva), "val_tta": accuracy(xva, yva, True),
        "test": accuracy(xte, yte), "test_tta": accuracy(xte, yte, True),
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
