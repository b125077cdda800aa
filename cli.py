"""`unlearn`: the one command-line entry point."""

from __future__ import annotations

import logging
from pathlib import Path

import typer

app = typer.Typer(help="Prune first, then unlearn: make image classifiers forget on request.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


@app.callback()
def main(verbose: bool = typer.Option(True, help="Print a progress line per epoch.")) -> None:
    """Make trained image classifiers forget data on request, verifiably."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@app.command()
def train(
    preset: str = typer.Option("digits", help="Recipe: digits, cifar10, cifar100, svhn."),
    data_root: Path = typer.Option(Path("data/external"), help="torchvision data folder (or the .npz file)."),
    download: bool = typer.Option(False, help="Let torchvision download a missing data set."),
    prepared: Path = typer.Option(Path("data/raw/dataset.npz"), help="Where the prepared data set is kept."),
    out: Path = typer.Option(Path("models/original.pt"), help="Checkpoint to write."),
    seed: int = typer.Option(0, help="Seed of the split and of the weights."),
    device: str = typer.Option("auto", help="auto, cpu or cuda[:N]."),
) -> None:
    """Train the original model of a preset and print its test accuracy."""
    from unlearn.checkpoint import model_metadata, save_checkpoint
    from unlearn.data import DataBundle, load_dataset
    from unlearn.device import pick_device
    from unlearn.original import train_original
    from unlearn.presets import get_preset
    from unlearn.train import accuracy

    recipe = get_preset(preset)
    if prepared.is_file() and DataBundle.load(prepared).name == recipe.dataset:
        bundle = DataBundle.load(prepared)
    else:
        bundle = load_dataset(recipe.dataset, data_root, seed=seed, download=download)
        bundle.save(prepared)
    chosen = pick_device(device)
    model, history = train_original(recipe, bundle, bundle.train, chosen, seed=seed)
    test_accuracy = accuracy(model, bundle.test, chosen)
    metadata = model_metadata(recipe.arch, bundle, model_options=recipe.model_options, seed=seed,
                              epochs=recipe.train.epochs, preset=recipe.name,
                              test_accuracy=test_accuracy)
    save_checkpoint(out, model, metadata)
    typer.echo(f"{recipe.name}: {recipe.arch} trained {recipe.train.epochs} epochs in "
               f"{history.seconds:.1f} s on {chosen}; test accuracy {test_accuracy:.2f}% -> {out}")


if __name__ == "__main__":
    app()
