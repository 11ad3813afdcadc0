"""``imagerec train | models | demo``."""

from __future__ import annotations

from pathlib import Path

import typer

from imagerec.cli.app import app
from imagerec.cli.options import option
from imagerec.errors import ImagerecError
from imagerec.settings import DataConfig, LRFindSettings, RaySettings, RunConfig

# Train options default to None (= the config file, else the setting's default or a value chosen from the data);
# the help texts name these defaults.
DEFAULTS = RunConfig()


@app.command("train")
def train(
    data: list[str] = typer.Argument(
        ..., help="Folder, split folder, CSV, or builtin:NAME; several are merged (same-named classes join)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to create."),
    init: Path = typer.Option(
        None, "--init", help="Fine-tune from this run's model (same or more classes; keeps its architecture)."
    ),
    model: str = typer.Option(
        None, help=f"Registry name (see 'imagerec models'); default {DEFAULTS.model.name}."
    ),
    epochs: int = typer.Option(None, help="Epochs (default: from the dataset size)."),
    image_size: int = typer.Option(
        None, "--image-size", help="Square input side (default: from the images)."
    ),
    channels: int = typer.Option(None, help="1 or 3 (default: grey data stays grey)."),
    batch_size: int = typer.Option(None, "--batch-size"),
    lr: float = typer.Option(None, "--lr", help="Peak learning rate."),
    optimizer: str = typer.Option(None, help="adamw | sgd"),
    schedule: str = typer.Option(None, help="cosine | onecycle | constant"),
    augment: str = typer.Option(
        None, help="auto | none | light | flip | hflip | hflip-erase | default | strong"
    ),
    label_smoothing: float = typer.Option(None, "--label-smoothing"),
    weight_decay: float = typer.Option(
        None, "--weight-decay", help="AdamW decoupled weight decay (scaled by the learning rate)."
    ),
    class_weights: str = typer.Option(None, "--class-weights", help="none | auto"),
    early_stopping: int = typer.Option(None, "--early-stopping", help="Patience in epochs (0 = off)."),
    weights: str = typer.Option(None, help="Backbones: imagenet | none | PATH.weights.h5"),
    task: str = typer.Option(
        None,
        "--task",
        help="auto (multilabel for a CSV with a 'labels' column) | multiclass | multilabel (several classes "
        "per image: sigmoid head, one threshold per class).",
    ),
    mixed_precision: str = typer.Option(
        None, "--mixed-precision", help="auto (bf16 on AVX512-BF16/AMX CPUs and GPUs) | off | bf16"
    ),
    strategy: str = typer.Option(None, help="auto | default | mirrored | multiworker"),
    val: float = typer.Option(
        None,
        "--val",
        help=f"Fraction of train held out for validation (default {DEFAULTS.data.val}; 0: train on all of it and keep the last epoch).",
    ),
    test: float = typer.Option(
        None,
        "--test",
        help=f"Fraction held out for test when the data has no test part (default {DEFAULTS.data.test}).",
    ),
    seed: int = typer.Option(None),
    follow_symlinks: bool = typer.Option(
        None,
        "--follow-symlinks/--no-follow-symlinks",
        help="Use image files that are symlinks to places outside DATA (a subset made of links).",
    ),
    deterministic: bool = typer.Option(
        None, "--deterministic/--no-deterministic", help="Op determinism (slower)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue (or extend with a larger --epochs) a run."),
    force: bool = typer.Option(False, "--force", help="Replace an existing run."),
    ray: bool = typer.Option(
        False, "--ray", help="Run on Ray Train workers (TensorflowTrainer); see docs/scaling.md."
    ),
    ray_address: str = option(
        RaySettings,
        "address",
        "--ray-address",
        help="Ray cluster (host:port, ray://host:10001); default: a local instance.",
    ),
    num_workers: int = option(
        RaySettings, "num_workers", "--num-workers", help="Ray Train workers (with --ray)."
    ),
) -> None:
    """Train a classifier and write a run directory (model, labels, config, split, history, metrics, logs)."""
    from functools import partial

    from imagerec.training.trainer import train as train_run

    RaySettings(num_workers=num_workers, address=ray_address).validate()
    if (ray or ray_address) and init is not None:
        raise ImagerecError("--init runs on this machine only; drop --ray to fine-tune from a run")
    if ray or ray_address:
        from imagerec.distributed.ray import train_with_ray

        train_run = partial(train_with_ray, num_workers=num_workers, address=ray_address)
    train_run(
        data if len(data) > 1 else data[0], out, resume=resume, force=force, init=init,
        model=model, epochs=epochs, image_size=image_size, channels=channels, batch_size=batch_size,
        learning_rate=lr, optimizer=optimizer, schedule=schedule, augment=augment, label_smoothing=label_smoothing,
        weight_decay=weight_decay, class_weights=class_weights, early_stopping=early_stopping, weights=weights,
        mixed_precision=mixed_precision, strategy=strategy, seed=seed, deterministic=deterministic, val=val, test=test,
        follow_symlinks=follow_symlinks, task=task,
    )  # fmt: skip


@app.command("models")
def models(image_size: int = typer.Option(32, "--image-size"), channels: int = typer.Option(3)) -> None:
    """List the model registry with parameters and FLOPs per image at IMAGE_SIZE."""
    DataConfig(image_size=image_size, channels=channels).validate()
    from rich.console import Console
    from rich.table import Table

    from imagerec.models.registry import build_model, count_flops, list_models

    table = Table(title=f"models at {image_size}x{image_size}x{channels}")
    for col in ("name", "kind", "params", "MFLOPs/image", "input range", "description"):
        table.add_column(col, no_wrap=col != "description")
    for spec in list_models():
        size = max(image_size, spec.min_size)
        m = build_model(spec.name, size, channels, 10)
        table.add_row(
            spec.name,
            spec.kind,
            f"{m.count_params():,}",
            f"{count_flops(m) / 1e6:.1f}",
            spec.input_range,
            spec.description,
        )
    Console().print(table)


@app.command("demo")
def demo(
    out: Path = typer.Option(Path("runs/demo-fashion-mnist"), "--out", help="Run directory."),
    epochs: int = typer.Option(None, help="Override the recipe's epochs."),
) -> None:
    """Materialise built-in Fashion-MNIST, train the default recipe, print test accuracy and the run's path."""
    from imagerec.training.trainer import train as train_run

    run = train_run("builtin:fashion-mnist", out, force=True, epochs=epochs)
    acc = run.metrics["test"]["accuracy"]
    typer.echo(
        f"test accuracy {acc:.4f} on {run.metrics['test']['num_images']} official test images; run: {run.path}"
    )


@app.command("lr-find")
def lr_find(
    data: str = typer.Argument(..., help="Folder, split folder, CSV, or builtin:NAME."),
    plot: Path = option(LRFindSettings, "plot", "--plot", help="Where to save the loss-vs-LR plot (PNG)."),
    model: str = typer.Option(None, help="Registry name (default: the train default)."),
    image_size: int = typer.Option(None, "--image-size"),
    batch_size: int = typer.Option(None, "--batch-size"),
    steps: int = option(LRFindSettings, "steps", "--steps", help="Steps of the range test."),
    start_lr: float = option(LRFindSettings, "start_lr", "--start-lr"),
    end_lr: float = option(LRFindSettings, "end_lr", "--end-lr"),
    seed: int = typer.Option(None),
) -> None:
    """Learning-rate range test (as fastai's lr_find): plot loss vs LR and suggest a learning rate."""
    LRFindSettings(steps=steps, start_lr=start_lr, end_lr=end_lr).validate()  # before TensorFlow loads
    from imagerec.training.lr_find import lr_find as run_lr_find

    result = run_lr_find(
        data, plot=plot, steps=steps, start_lr=start_lr, end_lr=end_lr,
        model=model, image_size=image_size, batch_size=batch_size, seed=seed, log=lambda m: typer.echo(m, err=True),
    )  # fmt: skip
    typer.echo(
        f"suggested learning rate {result.steepest:.2e} (steepest descent); min loss / 10: {result.min_loss_over_10:.2e}; "
        f"plot: {result.plot}\nuse it with: imagerec train {data} --out RUN --lr {result.steepest:.2e}"
    )
