"""Train a VGG net with the paper's recipe (Sec. 3.1) on any ImageFolder dataset, on CPU, optionally data-parallel.

    python -m train.fit --data data/digits --arch A_bn --width 0.125 --hidden 128 --train-size 64 --scale 72 \\
        --epochs 30 --batch-size 64 --dropout 0.25 --no-flip --out runs/vgg_a.pt       # the demo's A
    python -m train.fit --data DIR --arch A --out runs/vgg_a.pt                      # the paper's recipe as is
    python -m train.fit ... --arch D --init-from runs/vgg_a.pt --out runs/vgg_d.pt   # deeper net from A
    python -m train.fit ... --world-size 2                                          # DDP over 2 gloo processes
    python -m train.fit ... --resume                                                # continue runs/vgg_d.pt

The checkpoint (--out, rewritten after every epoch) holds the weights in torchvision's layout under "state_dict",
plus what resuming needs; export/to_onnx.py reads it directly. A JSON line per epoch goes to --log.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from export.checkpoint import CheckpointError, infer_config
from train.augment import Lighting, TrainTransform
from train.checkpoints import default_log_path, load_training_checkpoint, save_atomic, write_log
from train.distributed import World, barrier, spawn
from train.imagefolder import DatasetError, ImageFolder, ImageLoader, resolve_splits
from train.init import initialise
from train.loop import train_epoch, validate
from train.recipe import Recipe, RecipeError
from vgg.nets import VGG

USER_ERRORS = (DatasetError, CheckpointError, RecipeError)


@dataclass
class Run:
    """A run ready to train: data, model, optimiser, schedule and where a resumed run left off."""

    recipe: Recipe
    train: ImageFolder
    val: ImageFolder
    model: VGG
    optimizer: torch.optim.SGD
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    transform: TrainTransform
    start_epoch: int = 0
    best_val_acc: float = 0.0
    history: list[dict] = field(default_factory=list)


def prepare(recipe: Recipe) -> Run:
    """Everything that can fail because of the user's input happens here, before any process is spawned."""
    check_writable(recipe.out_path)
    torch.manual_seed(recipe.seed)  # identical initial weights in every process
    train, val = resolve_splits(Path(recipe.data), Path(recipe.val) if recipe.val else None, recipe.val_fraction,
                                recipe.seed)
    config = recipe.model_config(len(train.classes))
    model = VGG(config, dropout=recipe.dropout)
    initialise(model, Path(recipe.init_from) if recipe.init_from and not recipe.resume else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=recipe.lr_factor, patience=recipe.lr_patience, threshold=recipe.lr_threshold,
        threshold_mode="abs", min_lr=recipe.min_lr)
    lighting = Lighting.from_dataset(train, recipe.pca_std, recipe.seed) if recipe.pca_std > 0 else None
    transform = TrainTransform(config.training_size, recipe.scale[0], recipe.scale[1], recipe.flip, lighting)
    run = Run(recipe, train, val, model, optimizer, scheduler, transform)
    if recipe.resume:
        _restore(run)
    return run


def check_writable(out: Path) -> None:
    """--out names a file that can be written: found now, not after the first epoch."""
    if out.is_dir():
        raise RecipeError(f"--out {out} is a folder; name the checkpoint file, e.g. {out / 'vgg_a.pt'}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=out.parent).close()
    except OSError as exc:
        raise RecipeError(f"--out {out}: cannot write into {out.parent} ({exc.strerror or exc})") from None


def _restore(run: Run) -> None:
    path = run.recipe.out_path
    if not path.exists():
        raise RecipeError(f"--resume: {path} does not exist; run without --resume to start training")
    saved = load_training_checkpoint(path)
    wanted = run.model.state_dict()
    if {k: v.shape for k, v in saved["state_dict"].items()} != {k: v.shape for k, v in wanted.items()}:
        raise RecipeError(f"--resume: {path} holds {infer_config(saved['state_dict'])}, but the arguments describe "
                          f"{run.model.config}")
    if list(saved.get("classes", run.train.classes)) != list(run.train.classes):
        raise RecipeError(f"--resume: {path} was trained on other classes than {run.train.root}")
    run.model.load_state_dict(saved["state_dict"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scheduler.load_state_dict(saved["scheduler"])
    run.start_epoch = int(saved["epoch"])
    run.best_val_acc = float(saved.get("best_val_acc", 0.0))
    run.history = list(saved.get("history", []))


def checkpoint_payload(run: Run, epoch: int) -> dict:
    return {
        "state_dict": run.model.state_dict(),
        "config": run.model.config.to_dict(),
        "classes": list(run.train.classes),
        "normalization": "torchvision",
        "epoch": epoch,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "best_val_acc": run.best_val_acc,
        "history": run.history,
        "recipe": run.recipe.to_dict(),
        "lighting": run.transform.lighting.to_dict() if run.transform.lighting else None,
    }


def train(run: Run, world: World) -> None:
    """Epochs from where the run left off to recipe.epochs; rank 0 checkpoints and logs after each."""
    threads = torch.get_num_threads()
    torch.set_num_threads(run.recipe.threads or max(1, (os.cpu_count() or 1) // world.size))
    try:
        _epochs(run, world)
    finally:
        torch.set_num_threads(threads)  # in-process callers (demo_models, tests) keep their own setting


def _epochs(run: Run, world: World) -> None:
    recipe = run.recipe
    model = DistributedDataParallel(run.model) if world.size > 1 else run.model
    load = ImageLoader(cache=recipe.cache_images)
    log_path = Path(recipe.log) if recipe.log else default_log_path(recipe.out_path)
    if world.is_main and run.start_epoch >= recipe.epochs:
        print(f"{recipe.out}: already trained for {run.start_epoch} epochs (--epochs {recipe.epochs})")
    for epoch in range(run.start_epoch + 1, recipe.epochs + 1):
        started = time.perf_counter()
        lr = run.optimizer.param_groups[0]["lr"]
        loss, train_acc = train_epoch(model, run.optimizer, run.train, load, run.transform, recipe.batch_size, world,
                                      recipe.seed, epoch, recipe.progress)
        val_acc = validate(run.model, run.val, load, recipe.validation_scale, world)
        run.scheduler.step(val_acc)
        run.best_val_acc = max(run.best_val_acc, val_acc)
        entry = {"epoch": epoch, "loss": round(loss, 5), "train_acc": round(train_acc, 5),
                 "val_acc": round(val_acc, 5), "lr": lr, "seconds": round(time.perf_counter() - started, 2),
                 "world_size": world.size}
        run.history.append(entry)
        if world.is_main:
            save_atomic(checkpoint_payload(run, epoch), recipe.out_path)
            write_log(run.history, log_path)
            print(f"epoch {epoch}/{recipe.epochs}  loss {loss:.4f}  train {train_acc:.1%}  val {val_acc:.1%}  "
                  f"lr {lr:g}  {entry['seconds']:.1f} s", flush=True)
        barrier(world)


def _worker(world: World, recipe: Recipe) -> None:
    """Body of each spawned DDP process: the same preparation, then its share of every batch."""
    try:
        train(prepare(recipe), world)
    except USER_ERRORS as exc:
        print(f"fit: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def parse_args(argv: list[str] | None) -> Recipe:
    parser = argparse.ArgumentParser(prog="python -m train.fit", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    d = Recipe(data="", out="")
    parser.add_argument("--data", required=True, help="ImageFolder root, or a folder holding train/ (and val/)")
    parser.add_argument("--out", required=True, help="checkpoint to write after every epoch (and to --resume)")
    parser.add_argument("--arch", default=d.arch, help="A, A-LRN, B, C, D, E or vgg11/13/16/19, optionally _bn")
    parser.add_argument("--width", type=float, default=d.width, help="channel multiplier (1: the paper's nets)")
    parser.add_argument("--hidden", type=int, default=d.hidden, help="units in fc6 and fc7")
    parser.add_argument("--train-size", type=int, default=d.train_size, help="crop side, a multiple of 32")
    parser.add_argument("--scale", type=int, nargs="+", default=list(d.scale), metavar="S",
                        help="training scale S, or S_min S_max for scale jittering")
    parser.add_argument("--val", help="validation ImageFolder (default: DATA/val, else a fraction of training)")
    parser.add_argument("--val-fraction", type=float, default=d.val_fraction)
    parser.add_argument("--val-scale", type=int, help="Q for validation (default: S, or the middle of S's range)")
    parser.add_argument("--epochs", type=int, default=d.epochs, help="train until this many epochs are done")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch, split over processes")
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--momentum", type=float, default=d.momentum)
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay)
    parser.add_argument("--dropout", type=float, default=d.dropout, help="on fc6 and fc7")
    parser.add_argument("--lr-factor", type=float, default=d.lr_factor, help="applied when val accuracy stalls")
    parser.add_argument("--lr-patience", type=int, default=d.lr_patience,
                        help="epochs without val-accuracy gain before the learning rate drops")
    parser.add_argument("--lr-threshold", type=float, default=d.lr_threshold)
    parser.add_argument("--min-lr", type=float, default=d.min_lr)
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=d.flip,
                        help="random horizontal flips (turn off for data that is not mirror-symmetric, e.g. digits)")
    parser.add_argument("--pca-std", type=float, default=d.pca_std, help="AlexNet colour shift strength (0: off)")
    parser.add_argument("--init-from", help="configuration A checkpoint for the first four convs and fc6-fc8")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--world-size", type=int, default=d.world_size, help="data-parallel processes (gloo)")
    parser.add_argument("--threads", type=int, help="torch threads per process (default: cores / world size)")
    parser.add_argument("--cache-images", action="store_true",
                        help="keep decoded images in memory (small datasets: saves decoding them every epoch)")
    parser.add_argument("--log", help="JSON lines, one per epoch (default: beside --out, *.log.jsonl)")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint at --out")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=d.progress,
                        help="progress bar on a terminal")
    args = parser.parse_args(argv)
    if len(args.scale) not in (1, 2):
        parser.error("--scale takes S or S_min S_max")
    values = vars(args)
    values["scale"] = (args.scale[0], args.scale[-1])
    return Recipe(**values)


def main(argv: list[str] | None = None) -> int:
    try:
        recipe = parse_args(argv)
        run = prepare(recipe)  # validates everything; DDP workers repeat it in their own processes
        if recipe.world_size == 1:
            train(run, World())
        else:
            del run
            spawn(_worker, recipe.world_size, recipe)
    except USER_ERRORS as exc:
        print(f"fit: error: {exc}", file=sys.stderr)
        return 1
    except (mp.ProcessExitedException, mp.ProcessRaisedException) as exc:
        print(f"fit: error: a training process failed: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fit: interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
