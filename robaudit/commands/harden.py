"""``robaudit harden``: after a failed gate, fine-tune against UAPs, then re-audit beside the original."""

from __future__ import annotations

from pathlib import Path
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
    StdOpt,
    TrustOpt,
)


def harden(
    model: Annotated[Optional[str], typer.Argument(help="Trained zoo name (a bare name hardens every trained "
                                                        "replicate; NAME@R one).")] = None,
    checkpoint: CheckpointOpt = None,
    arch: ArchOpt = None,
    arch_kwargs: ArchKwargsOpt = None,
    trust_checkpoint: TrustOpt = False,
    mean: MeanOpt = None,
    std: StdOpt = None,
    input_size: InputSizeOpt = None,
    channels: ChannelsOpt = None,
    classes: ClassesOpt = None,
    data: Annotated[Optional[str], typer.Option(help="Task of --checkpoint (default: its card's).")] = None,
    epochs: Annotated[int, typer.Option(help="Hardening epochs.")] = 4,
    lr: Annotated[float, typer.Option(help="Peak learning rate (one-cycle).")] = 3e-4,
    batch_size: Annotated[int, typer.Option(help="Training minibatch (the inner UAP steps on each).")] = 64,
    norm: Annotated[str, typer.Option(help="linf or l2 (as uap).")] = "l2",
    zeta: Annotated[float, typer.Option(help="eps / mean Lp norm of the task's images (as uap).")] = 0.04,
    source: Annotated[str, typer.Option(help="Inner UAP source: train, imagenet or both.")] = "train",
    method: Annotated[str, typer.Option(help="Inner UAP method (the engine's batched step): fgsm or sgd.")] = "fgsm",
    attacker_old: Annotated[Optional[str], typer.Option("--attacker", hidden=True, help="Deprecated: --method.")]
    = None,
    adv_weight: Annotated[float, typer.Option(help="Share of the loss on x + v (1 = train on x + v only).")] = 1.0,
    train_limit: Annotated[Optional[int], typer.Option(help="Training images (seeded subset).")] = None,
    source_limit: Annotated[Optional[int], typer.Option(help="Hardening photos (seeded subset).")] = None,
    photo_limit_old: Annotated[Optional[int], typer.Option("--photo-limit", hidden=True,
                                                           help="Deprecated: --source-limit.")] = None,
    seed: Annotated[int, typer.Option(help="Hardening seed (must differ from --audit-seed).")] = 1,
    audit_seed: Annotated[int, typer.Option(help="Re-audit seed; its photos and selection images are set apart "
                                                 "from hardening.")] = 0,
    audit_source_limit: Annotated[int, typer.Option(help="Photos kept for the re-audit's attacker.")] = 200,
    audit_photos_old: Annotated[Optional[int], typer.Option("--audit-photos", hidden=True,
                                                            help="Deprecated: --audit-source-limit.")] = None,
    select_limit: Annotated[int, typer.Option(help="Re-audit selection images (kept out of hardening's "
                                                   "validation).")] = 128,
    max_accuracy_drop: Annotated[float, typer.Option(help="Tolerated balanced accuracy drop (reported against).")]
    = 0.03,
    threats: Annotated[str, typer.Option(help="Re-audit cells: photos,train,surrogate,targeted.")]
    = "photos,train,surrogate,targeted",
    target: Annotated[Optional[str], typer.Option(help="Targeted cell's class (default: the last).")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Augmented photos per photo UAP (default: by device).")]
    = None,
    eval_limit: Annotated[Optional[int], typer.Option(help="Evaluate on N test images (seeded).")] = None,
    train_source_limit: Annotated[Optional[int], typer.Option(help="Training images the re-audit UAPs use.")]
    = None,
    controls: Annotated[int, typer.Option(help="Random-noise control draws per cell.")] = 10,
    pgd_eval_limit: Annotated[int, typer.Option(help="Test images for per-sample PGD (0: skip).")] = 128,
    pgd_n_old: Annotated[Optional[int], typer.Option("--pgd-n", hidden=True, help="Deprecated: --pgd-eval-limit.")]
    = None,
    reaudit: Annotated[bool, typer.Option("--reaudit/--no-reaudit", help="Re-audit after hardening.")] = True,
    resume: Annotated[bool, typer.Option("--resume/--restart", help="Resume an interrupted hardening and reuse "
                                                                      "finished re-audit cells.")] = True,
    weights_file: Annotated[Optional[Path], typer.Option(help="ImageNet weights of the arch for the re-audit's "
                                                            "zero-knowledge cell when it has none offline.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Re-audit folder (default reports/<stamp>-harden-NAME).")]
    = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the document(s) as JSON on stdout.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML/Markdown reports.")] = False,
) -> None:
    """Fine-tune against UAPs (universal adversarial training), store MODEL_hardened, and re-audit both models
    with UAPs rebuilt from scratch, paired tests and the accuracy cost."""
    from robaudit.core.errors import BadInput
    from robaudit.core.files import validate

    if (model is None) == (checkpoint is None):
        raise BadInput("give a zoo MODEL or --checkpoint PATH (with --arch), not both or neither",
                       "e.g. robaudit harden pneumonia_tf_efficientnet_lite0")
    from robaudit.auditing.mitigation import ReauditConfig, compare_hardened
    from robaudit.commands._options import deprecated
    from robaudit.training.harden import HardenConfig, harden_model, replicates_of

    attacker = deprecated(attacker_old, "--attacker", "--method", method, default="fgsm")
    photo_limit = deprecated(photo_limit_old, "--photo-limit", "--source-limit", source_limit)
    audit_photos = deprecated(audit_photos_old, "--audit-photos", "--audit-source-limit", audit_source_limit,
                              default=200)
    pgd_n = deprecated(pgd_n_old, "--pgd-n", "--pgd-eval-limit", pgd_eval_limit, default=128)
    cfg = validate(HardenConfig, dict(epochs=epochs, lr=lr, batch_size=batch_size, norm=norm.lower(), zeta=zeta,
                                      source=source, attacker=attacker, adv_weight=adv_weight,
                                      train_limit=train_limit, photo_limit=photo_limit, seed=seed,
                                      audit_seeds=[audit_seed], audit_photos=audit_photos,
                                      select_limit=select_limit), flag=True)
    rcfg = validate(ReauditConfig, dict(threats=[t.strip() for t in threats.split(",") if t.strip()],
                                        target=target, budget=budget, eval_limit=eval_limit,
                                        train_source_limit=train_source_limit, controls=controls, pgd_n=pgd_n,
                                        max_accuracy_drop=max_accuracy_drop, device=device,
                                        weights_file=str(weights_file) if weights_file else None), flag=True)
    from robaudit.commands._options import model_ref

    ref = model_ref({**locals(), "model": None})
    model_args = ref.load_kwargs()
    for k in ("model", "checkpoint", "arch"):
        model_args.pop(k)
    names = replicates_of(model) if model is not None else [None]
    from robaudit.commands._shared import default_out_dir, write_reports_best_effort
    from robaudit.core.console import err, print_json
    from robaudit.grading import load_input

    docs = []
    for name in names:
        card = harden_model(name, cfg, checkpoint=str(checkpoint) if checkpoint else None, arch=arch, data=data,
                            device=device, resume=resume, quiet=json_out, model_args=model_args)
        if not json_out:
            m = card.metrics
            err.print(f"[green]hardened[/] {card.name}: test accuracy {m['test_accuracy']:.1%}, balanced "
                      f"{m['test_balanced_accuracy']:.1%} ({m['seconds']:.0f} s)")
        if not reaudit:
            continue
        base = out or default_out_dir("harden", card.name)
        out_dir = base / card.name if out is not None and len(names) > 1 else base
        doc = compare_hardened(name, out_dir, rcfg, checkpoint=str(checkpoint) if checkpoint else None, arch=arch,
                               hardened=card.name, resume=resume, quiet=json_out, model_args=model_args, data=data)
        docs.append(doc)
        if not no_report:
            write_reports_best_effort(load_input(out_dir / "harden.json"), out_dir, out_dir / "harden.json")
        if not json_out:
            print_mitigation(doc["mitigation"], out_dir)
    if json_out:
        print_json(docs[0] if len(docs) == 1 else docs)


def print_mitigation(section: dict, out_dir: Path) -> None:
    """Before/after per cell, the accuracy change and the verdict (stderr)."""
    from rich.table import Table

    from robaudit.core.console import err

    for pair in section["pairs"]:
        t = Table(title=f"{pair['original']} -> {pair['hardened']}: {pair['verdict']}")
        for col in ("cell", "before", "after", "reduction", "p (Holm)"):
            t.add_column(col, justify="left" if col == "cell" else "right")
        for r in pair["cells"]:
            if "reduction" not in r:
                t.add_row(r["threat"], "", "", "", r.get("error", ""))
                continue
            t.add_row(r["threat"] + (f" -> {r['target']}" if r["target"] else ""), f"{r['before']['value']:.1%}",
                      f"{r['after']['value']:.1%}", f"{r['reduction']:+.1%}", f"{r['p_adjusted']:.2g}")
        a = pair["accuracy"]
        for key in ("clean", "balanced"):
            x = a[key]
            t.add_row(f"{key} accuracy", f"{x['before']:.1%}", f"{x['after']:.1%}", f"{-x['change']:+.1%}",
                      f"CI [{x['ci'][0]:+.1%}, {x['ci'][1]:+.1%}]")
        err.print(t)
    for ps in section.get("per_sample") or []:
        err.print(f"per-sample PGD {ps['norm']} eps {ps['eps']:.4g}: robust accuracy {ps['before']:.1%} -> "
                  f"{ps['after']:.1%} (n={ps['n']}; UAP robustness is not per-image robustness)")
    err.print(f"[green]wrote[/] {out_dir / 'harden.json'}")
