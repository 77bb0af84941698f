"""``robaudit models list`` and ``robaudit train MODEL``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(help="Zoo recipes and trained models in the store.", no_args_is_help=True)

ZOO_ARCHS = ("tf_efficientnet_lite0", "resnet18", "resnet50", "vgg16", "inception_v3")


@app.command("list")
def list_(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show zoo recipes (task x arch x init) and which are trained in the store."""
    from rich.table import Table

    from robaudit.core.console import err, print_json
    from robaudit.data.cards import TASK_FLAGS
    from robaudit.models.store import read_card, store_root, trained_names
    from robaudit.models.zoo import model_name

    store = store_root()  # a ROBAUDIT_HOME that cannot hold the store is one BadInput line
    trained = {n: read_card(store / n / "card.json") for n in trained_names()}
    rows = []
    for task in TASK_FLAGS:
        for arch in ZOO_ARCHS:
            for transfer in ("full", "scratch", "linear"):
                n = model_name(task, arch, transfer)
                rows.append({"name": n, "task": task, "arch": arch, "transfer": transfer, "trained": n in trained})
    for n, card in trained.items():
        if not any(r["name"] == n for r in rows):
            rows.append({"name": n, "task": card.task, "arch": card.arch, "transfer": card.transfer, "trained": True})
    for r in rows:
        c = trained.get(r["name"])
        r["replicate"] = c.replicate if c else None  # NAME@R rows sit beside NAME (replicate 0)
        r["test_accuracy"] = c.metrics.get("test_accuracy") if c else None
        r["input_size"] = c.input_size if c else None
    if json_out:
        print_json({"store": str(store), "models": rows})
        return
    table = Table(title=f"Model zoo (store: {store}); any timm arch works as <task>_<arch>")
    for col in ("name", "replicate", "task", "arch", "init / transfer", "trained", "size", "test acc"):
        table.add_column(col)
    for r in sorted(rows, key=lambda r: (not r["trained"], r["name"])):
        rep = "" if r["replicate"] is None else str(r["replicate"])
        table.add_row(r["name"], rep, r["task"] or "", r["arch"], r["transfer"] or "",
                      "[green]yes[/]" if r["trained"] else "no", str(r["input_size"] or ""),
                      f"{r['test_accuracy']:.3f}" if r["test_accuracy"] is not None else "")
    err.print(table)


def train(
    model: Annotated[str, typer.Argument(help="Zoo name, e.g. skin_resnet50, skin_resnet50_random, _linear, _top2.")],
    epochs: Annotated[int, typer.Option(min=1)] = 3,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[Optional[float], typer.Option(help="Default 1e-3 (fine-tune), 3e-3 (scratch), 1e-2 (linear).")]
    = None,
    image_size: Annotated[int, typer.Option(help="Input size in px (paper: 299 on a GPU).")] = 64,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd (Nesterov, as published).")] = "adamw",
    seed: Annotated[int, typer.Option(help="Seed of the training subset and of replicate 0.")] = 0,
    replicate: Annotated[Optional[int], typer.Option(
        min=0, help="Training replicate R (stored as MODEL@R; 0 = MODEL): its own initialisation, data order and "
        "augmentation, paired across configurations.")] = None,
    augment: Annotated[bool, typer.Option("--train-augment/--no-train-augment",
                                          help="Training augmentation: rotation 5 deg, 5% shifts, flips.")]
    = True,
    augment_old: Annotated[Optional[bool], typer.Option("--augment/--no-augment", hidden=True,
                                                        help="Deprecated: --train-augment.")] = None,
    balanced: Annotated[bool, typer.Option("--balanced", help="Class-balanced sampling.")] = False,
    train_limit: Annotated[Optional[int], typer.Option(help="Use a reproducible subset of N training images.")]
    = None,
    weights_file: Annotated[Optional[str], typer.Option(help="Local ImageNet weights for the arch.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    resume: Annotated[bool, typer.Option("--resume/--restart", help="Resume an unfinished run (--restart: ignore "
                                         "it and start over).")] = True,
    json_out: Annotated[bool, typer.Option("--json", help="Print the model card JSON on stdout.")] = False,
) -> None:
    """Fine-tune (ImageNet init) or train from scratch (random init) a zoo model and store it."""
    from robaudit.commands._options import deprecated
    from robaudit.core.console import err, print_json
    from robaudit.core.files import validate
    from robaudit.models.train import TrainConfig, check_trainable, train_model
    from robaudit.models.zoo import with_replicate

    augment = deprecated(augment_old, "--augment", "--train-augment", augment, default=True)
    cfg = validate(TrainConfig, dict(epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                                     optimizer=optimizer, seed=seed, augment=augment, balanced=balanced,
                                     train_limit=train_limit, weights_file=weights_file), flag=True)
    model = with_replicate(model, replicate)
    check_trainable(model)
    card = train_model(model, cfg, device=device, resume=resume, quiet=json_out)
    if json_out:
        print_json(card.model_dump())
        return
    m = card.metrics
    err.print(f"[green]trained[/] {card.name} (replicate {card.replicate}): test accuracy {m['test_accuracy']:.3f} "
              f"(majority class {m['test_majority_rate']:.3f}), val {m['val_accuracy']:.3f}, "
              f"{m['seconds']:.0f} s; weights from {card.weights_source}")
