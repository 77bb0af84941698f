"""``robaudit uap``: build a universal adversarial perturbation and measure it against random controls."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def uap(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Zoo name (trained), e.g. skin_resnet50.")]
    = None,
    source: Annotated[str, typer.Option("--source", "-s",
                                        help="imagenet, natural (photos in wheels), train, or a folder.")]
    = "imagenet",
    data: Annotated[Optional[str], typer.Option(help="Task or npz/folder to evaluate on (default: the model's).")]
    = None,
    checkpoint: Annotated[Optional[Path], typer.Option(help="A user checkpoint (.safetensors/.pt).")] = None,
    arch: Annotated[Optional[str], typer.Option(help="timm architecture of --checkpoint.")] = None,
    trust_checkpoint: Annotated[bool, typer.Option("--trust-checkpoint",
                                                   help="Allow pickled code in a torch checkpoint.")] = False,
    norm: Annotated[str, typer.Option(help="linf or l2.")] = "l2",
    zeta: Annotated[Optional[float], typer.Option(help="eps / mean Lp norm of the task's images (default 0.04).")]
    = None,
    eps: Annotated[Optional[float], typer.Option(help="Absolute eps in [0,1] pixel units.")] = None,
    method: Annotated[str, typer.Option(help="fgsm (published), sgd, deepfool, or best (the strongest of fgsm and "
                                             "sgd, and deepfool when affordable, by the selection split; the "
                                             "default).")] = "best",
    mode: Annotated[str, typer.Option(help="batched (fast) or reference (ART's exact sequential loop).")]
    = "batched",
    target: Annotated[Optional[str], typer.Option(help="Targeted UAP: class index or name.")] = None,
    max_iter: Annotated[Optional[int], typer.Option(help="Passes over the source (plain sources; a stream: 1).")]
    = None,
    budget: Annotated[Optional[int], typer.Option(
        help="Augmented photos the attacker draws (random-resized crops, flips). Default: 2000 on CPU, 50000 "
             "on CUDA.")] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment",
                                          help="Stream photo sources as augmented views up to --budget.")] = True,
    select: Annotated[str, typer.Option(help="Choose v during the build on: val (default; train if the task "
                                             "has no val), train, or none (the blind attacker's last v).")] = "val",
    select_limit: Annotated[int, typer.Option(help="Selection images.")] = 128,
    patience: Annotated[Optional[int], typer.Option(help="Stop after N selection checks without gain.")] = 6,
    restarts: Annotated[int, typer.Option(help="Builds per method (seeds seed, seed+1, ...); the best is kept.")]
    = 1,
    surrogate: Annotated[Optional[str], typer.Option(
        help="Zero-knowledge: build v on 'pretrained' (the public ImageNet model of the audited arch), a zoo "
             "name or a checkpoint; the audited model is first used after v is fixed.")] = None,
    weights_file: Annotated[Optional[Path], typer.Option(
        help="ImageNet weights for --surrogate pretrained when the arch has none offline.")] = None,
    step_size: Annotated[Optional[float], typer.Option(
        help="Step size in [0,1] pixel units (batched fgsm: the first step of the linear schedule; "
             "default twice eps/10 for linf, eps/sqrt(d)/10 for l2).")] = None,
    source_limit: Annotated[Optional[int], typer.Option(help="Use N source images (seeded subset).")] = None,
    eval_limit: Annotated[Optional[int], typer.Option(help="Evaluate on N images of the split (seeded).")] = None,
    split: Annotated[str, typer.Option(help="Split to evaluate on.")] = "test",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    controls: Annotated[int, typer.Option(help="Random-noise control draws at the UAP's norm.")] = 10,
    control_kind: Annotated[str, typer.Option(help="uniform, or art (the published draw).")] = "uniform",
    clip: Annotated[bool, typer.Option("--clip/--no-clip", help="Clip x+v to [0,1] (published: no clip).")]
    = True,
    seed: int = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps.")] = "auto",
    workers: Annotated[int, typer.Option(help="Decoding worker processes for large sources.")] = 0,
    amp: Annotated[bool, typer.Option("--amp", help="Build the UAP under bfloat16 autocast (GPU speed).")] = False,
    init: Annotated[Optional[Path], typer.Option(help="Warm-start from a saved uap.npy.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default reports/<run-id>/).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result JSON on stdout, nothing else.")]
    = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML/Markdown reports.")] = False,
) -> None:
    """Build a UAP from SOURCE and evaluate it on the task's test split against random controls."""
    import json

    from robaudit.attacks.uap.group import is_main
    from robaudit.commands._shared import default_out_dir, print_uap_summary, write_reports_best_effort
    from robaudit.core.console import print_json
    from robaudit.core.specs import make_spec
    from robaudit.eval.artifacts import load_perturbation
    from robaudit.eval.run import run_uap

    spec = make_spec(model=model, checkpoint=str(checkpoint) if checkpoint else None, arch=arch,
                     trust_checkpoint=trust_checkpoint, data=data, split=split, eval_limit=eval_limit, source=source,
                     source_limit=source_limit, norm=norm, zeta=zeta, eps=eps, method=method, mode=mode,
                     target=target, max_iter=max_iter, step_size=step_size, batch_size=batch_size,
                     controls=controls, control_kind=control_kind, clip=clip, seed=seed, device=device,
                     workers=workers, amp=amp, budget=budget, augment=augment, select=select,
                     select_limit=select_limit, patience=patience, restarts=restarts, surrogate=surrogate,
                     weights_file=str(weights_file) if weights_file else None)
    init_v = None
    if init is not None:  # an .npz, a pickle or garbage is one BadInput line (never executed)
        init_v = load_perturbation(init, "--init", "pass the uap.npy a run wrote (or the rescued -uap.npy)")
    name = spec.model or Path(spec.checkpoint or "model").stem
    out_dir = out or default_out_dir(name, spec.source, spec.cache_key()[:6])
    run = run_uap(spec, out_dir=out_dir, quiet=json_out, init=init_v)
    if not is_main():  # under torchrun only rank 0 writes reports and prints
        return
    if not no_report:
        write_reports_best_effort(run.result, out_dir, out_dir / "result.json")
    if json_out:
        print_json(json.loads(run.result.model_dump_json()))
    else:
        print_uap_summary(run.result, out_dir)
