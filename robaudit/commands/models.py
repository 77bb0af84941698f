"""``robaudit models list``, ``robaudit models check`` and ``robaudit train MODEL``."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from robaudit.commands._options import (
    ArchKwargsOpt,
    ArchOpt,
    ChannelsOpt,
    CheckpointOpt,
    ClassesOpt,
    InputSizeOpt,
    MeanOpt,
    ModelOpt,
    StdOpt,
    TrustOpt,
)

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
        r["trained_under"] = (c.trained_under or None) if c else None
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
    _warn_conditions(trained)


def _warn_conditions(cards: dict) -> None:
    """One line per stored model trained under other conditions than this machine's (threads, CPU ISA, versions):
    retraining it here from the same seed gives other weights."""
    from robaudit.core.console import warn
    from robaudit.core.device import resolve_device
    from robaudit.core.provenance import condition_changes, training_conditions

    now = training_conditions(resolve_device("auto"))
    for name, card in sorted(cards.items()):
        diffs = condition_changes(card.trained_under, now)  # a card without the record has none
        if diffs:
            warn(f"{name}: trained under other conditions ({'; '.join(diffs)}); a retrain here gives other weights")


def train(
    model: Annotated[str, typer.Argument(help="Zoo name, e.g. skin_resnet50, skin_resnet50_random, _linear, _top2.")],
    epochs: Annotated[int, typer.Option(min=1, help="Epochs (with --patience: the most it may take).")] = 3,
    patience: Annotated[Optional[int], typer.Option(
        min=1, help="Early stopping: end after N epochs without a val-accuracy gain (the best val epoch is kept "
        "either way).")] = None,
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
    like: Annotated[Optional[str], typer.Option(help="Train a twin of YOUR model file instead of a zoo model: "
                                                     "MODEL is the name it is stored as.")] = None,
    init: Annotated[Optional[str], typer.Option(help="The twin's initialisation with --like: random (the only one "
                                                     "robaudit can make for an architecture it did not train).")]
    = None,
    data: Annotated[Optional[str], typer.Option(help="With --like: the task or folder to train the twin on "
                                                     "(default: the model's card's).")] = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust_checkpoint: TrustOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
    classes: ClassesOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the model card JSON on stdout.")] = False,
) -> None:
    """Fine-tune (ImageNet init) or train from scratch (random init) a zoo model and store it; with --like
    CHECKPOINT --init random, a random-init twin of your own architecture trained on your data."""
    from robaudit.commands._options import deprecated
    from robaudit.core.console import err, print_json
    from robaudit.core.files import validate
    from robaudit.models.train import TrainConfig, check_trainable, train_model
    from robaudit.models.zoo import with_replicate

    augment = deprecated(augment_old, "--augment", "--train-augment", augment, default=True)
    cfg = validate(TrainConfig, dict(epochs=epochs, batch_size=batch_size, lr=lr, image_size=image_size,
                                     optimizer=optimizer, seed=seed, augment=augment, balanced=balanced,
                                     train_limit=train_limit, weights_file=weights_file, patience=patience),
                   flag=True)
    if like is not None:
        card = _train_like(model, like, init, data, cfg, device, resume, json_out, locals())
    else:
        if init is not None or data is not None:
            from robaudit.core.errors import BadInput

            raise BadInput("--init and --data are for a twin of your model (--like CHECKPOINT)",
                           "a zoo model's name says its init and task: e.g. skin_resnet50_random")
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


def _train_like(name, like, init, data, cfg, device, resume, quiet, values):
    """``train NAME --like CHECKPOINT --init random``: the user's architecture, re-initialised, trained on
    the user's data with the user's preprocessing (read as every command reads a model file)."""
    from robaudit.commands._options import model_ref
    from robaudit.core.errors import BadInput
    from robaudit.models import load_model_and_task
    from robaudit.models.train import train_twin

    if init != "random":
        raise BadInput(f"--init {init!r} for a twin of your model", "pass --init random (ImageNet weights exist "
                       "for zoo architectures: train <task>_<arch> instead)")
    ref = model_ref({**values, "model": None, "checkpoint": like})
    kw = ref.load_kwargs()
    lm, task = load_model_and_task(device="cpu", data=data, **kw)
    return train_twin(lm, task, name, cfg, device=device, resume=resume, quiet=quiet)


@app.command("check")
def check(
    model: ModelOpt = None,
    checkpoint: CheckpointOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust_checkpoint: TrustOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
    classes: ClassesOpt = None,
    data: Annotated[Optional[str], typer.Option(help="Task name or path (default: the model's own task).")] = None,
    split: Annotated[str, typer.Option(help="Split to measure on.")] = "test",
    eval_limit: Annotated[Optional[int], typer.Option(help="Measure on N images (seeded subset).", min=1)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Load a model and its data as an audit would; print what was assumed and how it scores.

    Architecture, format, parameters, preprocessing and where each value came from, class order, then clean
    and balanced accuracy and the confusion matrix. Warns when accuracy is below chance or predictions
    collapse to one class (a wrong class order or normalisation); exit 1 when below chance."""
    from rich.table import Table

    import robaudit as ra
    from robaudit.commands._options import model_ref
    from robaudit.core.console import err, print_json, warn
    from robaudit.core.fmt import pct

    ref = model_ref(locals())
    if not ref.model and not ref.checkpoint:
        from robaudit.core.errors import BadInput

        raise BadInput("no model given", "pass --model NAME or --checkpoint PATH")
    lm = ra.load_model(ref.checkpoint or ref.model, data=data, **ref.model_dump(
        include={"arch", "arch_kwargs", "trust_checkpoint", "mean", "std", "input_size", "channels", "classes"}))
    chk = ra.check(lm, data, split=split, limit=eval_limit)
    if json_out:
        print_json(chk.to_dict())
    else:
        m, src = chk.model, chk.model["provenance"]
        err.print(f"[bold]{m['name']}[/]: {m['arch']} read as {m['format']}, {m['parameters']:,} parameters, sha256 "
                  f"{(m['sha256'] or '')[:12]}" + (f", ONNX parity {m['onnx_parity']:.2g}" if m["onnx_parity"]
                                                   is not None else ""), soft_wrap=True)
        pre = Table(title="preprocessing (what the audit applies)", title_justify="left")
        for col in ("setting", "value", "from"):
            pre.add_column(col)
        for k in ("input_size", "channels", "mean", "std", "classes"):
            v = m[k]
            pre.add_row(k, ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v)
                        if isinstance(v, list) else str(v), src.get(k, "card"))
        pre.add_row("interpolation", "bilinear (antialias)", "robaudit")
        err.print(pre)
        if chk.data.get("mapping"):
            err.print("data labels mapped to the model's outputs by name: "
                      + ", ".join(f"{a} -> {b}" for a, b in chk.data["mapping"].items()))
        t = Table(title=f"{chk.data['name']} {chk.data['split']} (n={chk.n}): accuracy {pct(chk.clean_accuracy)}, "
                  f"balanced {pct(chk.balanced_accuracy)}, chance {pct(chk.chance_accuracy)}; rows true, columns "
                  "predicted", title_justify="left")
        t.add_column("true \\ predicted")
        for c in chk.classes:
            t.add_column(c[:18], justify="right")
        for c, row in zip(chk.classes, chk.confusion, strict=True):
            t.add_row(c[:30], *(str(v) for v in row))
        err.print(t)
    for w in chk.warnings:
        warn(w)
    if chk.below_chance:
        raise typer.Exit(1)
