"""Defaults that adapt to the data (``training/auto.py``)."""

from __future__ import annotations

from imagerec.training import auto


def test_batch_epochs_and_bn_momentum_follow_the_dataset_size():
    assert auto.choose_batch_size(54_000) == 256 and auto.choose_batch_size(5_000) == 64
    assert auto.choose_batch_size(40) == 10 and auto.choose_batch_size(3) == 8
    assert auto.choose_epochs(54_000, "scratch") == 12 and auto.choose_epochs(500, "scratch") == 30
    assert auto.choose_epochs(500, "backbone") == 10
    assert auto.choose_bn_momentum(500, 32) == 0.9 and auto.choose_bn_momentum(10**6, 32) == 0.99
    # Fashion-MNIST, 211 steps per epoch: the moving variance's start (1) is forgotten within the first epoch
    # (0.99 left 0.99^422 = 1.4% of it after two epochs, 58x the data's variance of 2.5e-4)
    momentum = auto.choose_bn_momentum(54_000, 256)
    assert 0.9 < momentum < 0.99 and momentum**211 < 2e-6


def test_augmentation_follows_size_data_and_schedule():
    assert auto.choose_augment(28, 1, 54_000, 10) == "hflip"
    assert auto.choose_augment(28, 1, 54_000, 40) == "flip"  # long schedules need translation
    assert auto.choose_augment(28, 1, 2_000, 20) == "flip"
    assert auto.choose_augment(28, 1, 27_000, 20) == "hflip"  # fashion-mnist-pairs: still improving at 20
    assert auto.choose_augment(128, 3, 54_000, 12) == "default"


def test_resolve_fills_every_choice_and_records_it(colour_data):
    from imagerec.data.scan import scan_dataset
    from imagerec.settings import RunConfig

    resolved = auto.resolve(RunConfig(), scan_dataset(colour_data), n_train=28)
    assert resolved.data.image_size == 32 and resolved.data.channels == 3
    assert resolved.train.batch_size == 8 and resolved.train.epochs == 30
    assert resolved.model.bn_momentum == 0.9 and resolved.augment.preset == "flip"
    assert None not in (resolved.train.learning_rate, resolved.train.batch_size)
