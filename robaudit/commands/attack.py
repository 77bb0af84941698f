"""``robaudit attack``: per-sample evasion attacks (torchattacks, foolbox or ART) over a list of epsilons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def attack(
    attack_name: Annotated[str, typer.Option("--attack", "-a",
                                             help="fgsm, pgd, cw, deepfool, autoattack or fmn.")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Zoo name (trained), e.g. skin_resnet50.")]
    = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="A user checkpoint (.safetensors/.pt).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="timm architecture of --checkpoint.")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint",
                                                   help="Allow pickled code in a torch checkpoint.")] = False,
    data: Annotated[Optional[str], typer.Option(help="Task or npz/folder to attack (default: the model's).")]
    = None,
    backend: Annotated[Optional[str], typer.Option(help="torchattacks, foolbox or art (default: the first that "
                                                        "implements the attack).")] = None,
    norm: Annotated[Optional[str], typer.Option(help="linf or l2 (default: the attack's usual norm).")] = None,
    eps: Annotated[Optional[str], typer.Option(help="Epsilons in [0,1] pixel units, e.g. 0,0.002,0.008,0.03 "
                                                    "(thresholds for minimal-norm attacks).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Iterations (default: per attack).")] = None,
    random_start: Annotated[bool, typer.Option("--random-start", help="PGD: start from a random point.")] = False,
    target: Annotated[Optional[str], typer.Option(help="Targeted attack: class index or name.")] = None,
    n: Annotated[int, typer.Option("--n", help="Attack N images of the split (seeded subset).")] = 256,
    split: Annotated[str, typer.Option(help="Split to attack.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Images per backend call.")] = 64,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default reports/<run-id>/).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result JSON on stdout, nothing else.")]
    = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML/Markdown reports.")] = False,
) -> None:
    """Attack each image separately (the worst case per image): robust accuracy and success per epsilon.

    Success: the prediction leaves the true label (or hits --target), over images correct when clean.
    """
    from robaudit.attacks.backends import resolve
    from robaudit.attacks.persample import check_eps, check_steps, parse_eps
    from robaudit.errors import BadInput

    # everything checkable without the model, before loading it
    if target is not None and target.strip().lstrip("-").isdigit() and int(target) < 0:
        raise BadInput(f"--target {target} is negative", "pass a class index >= 0 or a class name")
    spec, norm, backend = resolve(attack_name, norm, backend, targeted=target is not None)
    eps_list = check_eps(parse_eps(eps) if eps is not None else None, norm, spec)
    steps = check_steps(steps, spec)
    for flag, value in (("--n", n), ("--batch-size", batch_size)):
        if value <= 0:
            raise BadInput(f"{flag} must be >= 1, got {value}")
    if random_start and spec.name != "pgd":
        raise BadInput(f"--random-start is a PGD option, not {spec.name}'s")

    import json

    from robaudit.attacks.persample import run_attack
    from robaudit.console import print_json
    from robaudit.data import load_task
    from robaudit.eval.runner import command_line, resolve_target
    from robaudit.models import load_model
    from robaudit.models.store import atomic_write_text

    lm = load_model(model, checkpoint=checkpoint, arch=arch, device=device, trust_checkpoint=trust_checkpoint,
                    task=data)
    size = lm.card.input_size
    task = load_task(data or lm.card.task, size=size)
    if task.num_classes != len(lm.classes):
        raise BadInput(f"model {lm.card.name!r} has {len(lm.classes)} classes but task {task.full_name!r} has "
                       f"{task.num_classes}", "pass the --data task the model was trained on")
    target_idx = resolve_target(target, lm.classes)
    x, y = task.tensors(split, size=size, limit=n, seed=seed)
    result = run_attack(lm.module, x, y, attack=spec.name, eps=eps_list, norm=norm, backend=backend, steps=steps,
                        target=target_idx, random_start=random_start, class_names=lm.classes,
                        batch_size=batch_size, seed=seed, model_info=lm.info(),
                        data_info=task.data_info(split, len(x)), quiet=json_out)
    result.command = command_line() or None
    out_dir = out or default_out_dir(lm.card.name, spec.name, backend)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "result.json", result.model_dump_json(indent=2))
    if not no_report:
        _write_reports(result, out_dir)
    if json_out:
        print_json(json.loads(result.model_dump_json()))
    else:
        print_summary(result, out_dir)


def default_out_dir(model: str, attack: str, backend: str) -> Path:
    import os
    from datetime import datetime

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id = f"{stamp}-{model.replace('/', '_')}-{attack}-{backend}"
    return Path(os.environ.get("ROBAUDIT_REPORTS", "reports")) / run_id


def print_summary(result, out_dir: Path | None = None) -> None:
    """A table on stderr: robust accuracy and success per epsilon with intervals, and the minimal norms."""
    from rich.table import Table

    from robaudit.console import err

    a, m = result.attack, result.metrics
    title = (f"{result.model.name} | {a.method} {a.norm} via {a.backend}"
             f"{f' -> {a.target_name}' if a.targeted else ''} | {result.data.name} {result.data.split} "
             f"n={result.data.n} | clean accuracy {m.clean_accuracy:.1%}")
    t = Table(title=title, title_justify="left")
    for col in ("eps", "robust accuracy", "95% CI", "attack success", "95% CI", "attacked"):
        t.add_column(col, justify="right")
    for r in result.per_eps or []:
        ra, sr = r.robust_accuracy, r.success_rate
        t.add_row(f"{r.eps:.4g}", f"{ra.value:.1%}", f"[{ra.ci[0]:.1%}, {ra.ci[1]:.1%}]", f"{sr.value:.1%}",
                  f"[{sr.ci[0]:.1%}, {sr.ci[1]:.1%}]", str(sr.n))
    if result.per_eps:
        err.print(t)
    if result.min_norm is not None:
        mn = result.min_norm
        q = ", ".join(f"q{k}={v:.4g}" for k, v in mn.quantiles.items())
        err.print(f"minimal {a.norm} norm found: median {mn.median:.4g} ({q}); found for {mn.success_rate:.1%} of "
                  "the attacked images")
    elif a.mode == "minimal-norm":
        err.print("minimal-norm attack found no adversarial example")
    err.print(f"[dim]success = prediction {'is the target' if a.targeted else 'differs from the label'}, over images "
              f"correct when clean; {a.seconds:.1f} s on {a.device}[/]")
    if out_dir is not None:
        err.print(f"[green]wrote[/] {out_dir / 'result.json'}")


def _write_reports(result, out_dir: Path) -> None:
    """HTML + Markdown reports beside result.json (a report failure never loses the result)."""
    from robaudit.console import warn
    from robaudit.errors import RobauditError

    try:
        from robaudit.report import write_reports

        write_reports([result], out_dir, formats=("html", "md"))
    except (RobauditError, ImportError, OSError) as exc:
        warn(f"report not written ({exc}); the result is in {out_dir / 'result.json'}")
