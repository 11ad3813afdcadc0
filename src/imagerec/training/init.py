"""``imagerec train DATA --init RUN``: fine-tune from an existing run's model.

The new run takes the source run's architecture (model name, image size, channels, resize, task) and, unless given,
its augmentation preset; every layer starts from the source's weights, except the rows of the final ``logits`` layer
for classes the source did not know, which keep their fresh initialisation (the source's classes are mapped by name, in any order). The new run's
config.json records ``init_from``: the source run's path and its model's sha256.

Example:
    >>> imagerec.train(["photos/", "reviewed/"], out="runs/v2", init="runs/v1")
"""

from __future__ import annotations

from typing import Any

from imagerec.errors import RunError
from imagerec.run import RunDir
from imagerec.settings import RunConfig
from imagerec.training.learner import SPLITS, Learner

LOGITS = "logits"
#: (section, field) the new run takes from the source run: the model's shape must match to start from its weights
INHERITED = (
    ("model", "name"), ("model", "task"), ("model", "dropout"), ("model", "fine_tune_layers"),
    ("data", "image_size"), ("data", "channels"), ("data", "resize"),
)  # fmt: skip
#: (section, field) the new run takes from the source run unless given. The augmentation: the recipe picks one by
#: dataset size, and a few thousand pictures would get "flip" (with translation) for a model trained with "hflip";
#: the re-estimated BatchNorm statistics then follow the shifted pictures and the fine-tuned model, weights
#: unchanged, lost 0.5 points of Fashion-MNIST test accuracy (4-6 points on T-shirt and Pullover recall).
FOLLOWED = (("augment", "preset"),)


def source_config(init: RunDir) -> RunConfig:
    """The source run's resolved settings (its config.json), refusing a folder that is not a finished run."""
    init.require()
    return RunConfig.from_dict(init.read_config()["config"])


def inherit(
    config: RunConfig, source: RunConfig, given: dict[tuple[str, str], Any], init: RunDir
) -> RunConfig:
    """``config`` with the source run's architecture settings (a ``given`` (section, field) that differs is
    refused) and its augmentation unless one is given."""
    for section, name in INHERITED:
        theirs = getattr(getattr(source, section), name)
        if (section, name) in given and given[(section, name)] != theirs:
            raise RunError(
                f"--init {str(init.path)!r}: its {section}.{name} is {theirs!r}, got {given[(section, name)]!r}; "
                f"fine-tuning keeps the source's architecture (drop the flag, or train without --init)"
            )
        config = config.override(section, **{name: theirs})
    for section, name in FOLLOWED:
        if (section, name) not in given:
            config = config.override(section, **{name: getattr(getattr(source, section), name)})
    return config.override("model", weights="none")  # the weights come from the source run


def transfer_weights(source, target, source_classes: list[str], target_classes: list[str]) -> int:
    """Copy ``source``'s weights into ``target`` (the same architecture, layer by layer); the ``logits`` layer's
    class rows are mapped by class name, the others keep ``target``'s fresh values. Returns the classes mapped.

    Raises:
        RunError: the architectures differ.
    """
    if len(source.layers) != len(target.layers):
        raise RunError(
            f"--init: the source model has {len(source.layers)} layers, the new one {len(target.layers)}"
        )
    for theirs, mine in zip(source.layers, target.layers, strict=True):
        if mine.name == LOGITS:
            continue
        weights = theirs.get_weights()
        if [w.shape for w in weights] != [w.shape for w in mine.get_weights()]:
            raise RunError(f"--init: layer {mine.name!r} differs in shape from the source's {theirs.name!r}")
        mine.set_weights(weights)
    kernel, bias = target.get_layer(LOGITS).get_weights()
    old_kernel, old_bias = source.get_layer(LOGITS).get_weights()
    where = {name: i for i, name in enumerate(source_classes)}
    mapped = [(j, where[name]) for j, name in enumerate(target_classes) if name in where]
    for j, i in mapped:
        kernel[:, j], bias[j] = old_kernel[:, i], old_bias[i]
    target.get_layer(LOGITS).set_weights([kernel, bias])
    return len(mapped)


class InitLearner(Learner):
    """A :class:`Learner` whose model starts from the run ``init`` (see the module docstring)."""

    def __init__(self, data, config: RunConfig, run: RunDir, init: RunDir, previous=None, log=print):
        super().__init__(data, config, run, previous, log)
        self.init = init
        self.init_from = (previous or {}).get("init_from") or {
            "run": str(init.path.resolve()),
            "model_sha256": init.model_sha256(),
        }

    def build(self, distribute: bool = True, splits: tuple[str, ...] = SPLITS) -> InitLearner:
        super().build(distribute, splits)
        if self.previous:  # a resumed run restores its own checkpoint
            return self
        source_classes = self.init.read_labels()
        with self.strategy.scope():
            mapped = transfer_weights(self.init.load_model(), self.model, source_classes, self.class_names)
        new = [name for name in self.class_names if name not in source_classes]
        self.log(
            f"init: weights from {str(self.init.path)!r}; {mapped} class(es) kept"
            + (f", {len(new)} new: {', '.join(new)}" if new else "")
        )
        return self

    def record(self) -> dict[str, Any]:
        record = super().record()
        record["init_from"] = self.init_from
        self.run.write_json("config.json", record)
        return record
