"""``robaudit attack``: per-sample evasion attacks (torchattacks, foolbox or ART) over a list of epsilons."""

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
    ModelOpt,
    StdOpt,
    TrustOpt,
)


def attack(
    attack_name: Annotated[str, typer.Option("--attack", "-a",
                                             help="fgsm, pgd, cw, deepfool, autoattack or fmn.")],
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
    eval_limit: Annotated[int, typer.Option(help="Attack N images of the split (seeded subset).")] = 256,
    n_old: Annotated[Optional[int], typer.Option("--n", hidden=True, help="Deprecated: --eval-limit.")] = None,
    split: Annotated[str, typer.Option(help="Split to attack.")] = "test",
    batch_size: Annotated[int, typer.Option(help="Images per backend call.")] = 64,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Attack a model that is below chance on the data.")]
    = False,
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
    from robaudit.core.errors import BadInput
    from robaudit.core.provenance import command_line

    # everything checkable without the model, before loading it
    if target is not None and target.strip().lstrip("-").isdigit() and int(target) < 0:
        raise BadInput(f"--target {target} is negative", "pass a class index >= 0 or a class name")
    spec, norm, backend = resolve(attack_name, norm, backend, targeted=target is not None)
    eps_list = check_eps(parse_eps(eps) if eps is not None else None, norm, spec)
    steps = check_steps(steps, spec)
    from robaudit.commands._options import deprecated

    n = deprecated(n_old, "--n", "--eval-limit", eval_limit, default=256)
    for flag, value in (("--eval-limit", n), ("--batch-size", batch_size)):
        if value <= 0:
            raise BadInput(f"{flag} must be >= 1, got {value}")
    if random_start and spec.name != "pgd":
        raise BadInput(f"--random-start is a PGD option, not {spec.name}'s")

    import json

    from robaudit import api
    from robaudit.commands._options import model_ref
    from robaudit.commands._shared import default_out_dir, print_attack_summary, write_reports_best_effort
    from robaudit.core.console import print_json
    from robaudit.core.errors import RuntimeFailure
    from robaudit.core.files import atomic_write_text, keep_somewhere, os_error_text, preflight_dir, stamp
    from robaudit.data import Data
    from robaudit.models import load_model_and_task

    lm, task = load_model_and_task(device=device, data=data, **model_ref(locals()).load_kwargs())
    out_dir = out or default_out_dir(lm.card.name, spec.name, backend)
    preflight_dir(out_dir)  # before the attack: an unwritable --out is bad input now, not lost work later
    result = api.attack(lm, Data._wrap(task), attack=spec.name, eps=eps_list, norm=norm, backend=backend,
                        steps=steps, target=target, eval_limit=n, split=split, batch_size=batch_size, seed=seed,
                        random_start=random_start, progress=not json_out, force=force)
    result.command = command_line() or None
    text = result.model_dump_json(indent=2)
    try:
        atomic_write_text(out_dir / "result.json", text)
    except OSError as exc:  # the numbers are kept elsewhere, and the message says where
        kept = keep_somewhere("rescued", f"{stamp()}-result.json", lambda p: atomic_write_text(p, text))
        raise RuntimeFailure(f"cannot write {out_dir / 'result.json'}: {os_error_text(exc)}; "
                             + (f"the result is kept in {kept}" if kept else "it could not be kept anywhere")) from None
    if not no_report:
        write_reports_best_effort(result, out_dir, out_dir / "result.json")
    if json_out:
        print_json(json.loads(result.model_dump_json()))
    else:
        print_attack_summary(result, out_dir)
