"""``robaudit uap``: build a universal adversarial perturbation and measure it against random controls.

Every option is a field of :class:`~robaudit.core.specs.UAPSpec` (help and default read from there); the
command resolves names and paths and calls :func:`robaudit.api.run_spec`, the same path as ``ra.uap``."""

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
from robaudit.commands._options import field_default as _d
from robaudit.commands._options import option as _o
from robaudit.core.specs import UAPSpec as S


def uap(
    model: ModelOpt = _d(S, "model"),
    source: Annotated[str, _o(S, "source", "--source", "-s")] = _d(S, "source"),
    data: Annotated[Optional[str], _o(S, "data")] = _d(S, "data"),
    critical_class: Annotated[Optional[str], _o(S, "critical_class")] = _d(S, "critical_class"),
    checkpoint: CheckpointOpt = _d(S, "checkpoint"),
    arch: ArchOpt = _d(S, "arch"),
    arch_kwargs: ArchKwargsOpt = _d(S, "arch_kwargs"),
    trust_checkpoint: TrustOpt = _d(S, "trust_checkpoint"),
    mean: MeanOpt = _d(S, "mean"),
    std: StdOpt = _d(S, "std"),
    input_size: InputSizeOpt = _d(S, "input_size"),
    channels: ChannelsOpt = _d(S, "channels"),
    classes: ClassesOpt = _d(S, "classes"),
    force: Annotated[bool, _o(S, "force", "--force")] = _d(S, "force"),
    norm: Annotated[str, _o(S, "norm")] = _d(S, "norm"),
    zeta: Annotated[Optional[float], _o(S, "zeta")] = _d(S, "zeta"),
    eps: Annotated[Optional[float], _o(S, "eps")] = _d(S, "eps"),
    method: Annotated[str, _o(S, "method")] = _d(S, "method"),
    mode: Annotated[str, _o(S, "mode")] = _d(S, "mode"),
    target: Annotated[Optional[str], _o(S, "target")] = _d(S, "target"),
    max_iter: Annotated[Optional[int], _o(S, "max_iter")] = _d(S, "max_iter"),
    budget: Annotated[Optional[int], _o(S, "budget")] = _d(S, "budget"),
    augment: Annotated[bool, _o(S, "augment", "--augment/--no-augment")] = _d(S, "augment"),
    select: Annotated[str, _o(S, "select")] = _d(S, "select"),
    select_limit: Annotated[int, _o(S, "select_limit")] = _d(S, "select_limit"),
    select_every: Annotated[Optional[int], _o(S, "select_every")] = _d(S, "select_every"),
    patience: Annotated[Optional[int], _o(S, "patience")] = _d(S, "patience"),
    stop_delta: Annotated[float, _o(S, "stop_delta")] = _d(S, "stop_delta"),
    stop_after: Annotated[int, _o(S, "stop_after")] = _d(S, "stop_after"),
    stop_window: Annotated[int, _o(S, "stop_window")] = _d(S, "stop_window"),
    stop_confidence: Annotated[float, _o(S, "stop_confidence")] = _d(S, "stop_confidence"),
    race_rung: Annotated[Optional[int], _o(S, "race_rung")] = _d(S, "race_rung"),
    toward_classes: Annotated[Optional[bool], _o(S, "toward_classes", "--toward-classes/--no-toward-classes")]
    = _d(S, "toward_classes"),
    restarts: Annotated[int, _o(S, "restarts")] = _d(S, "restarts"),
    surrogate: Annotated[Optional[str], _o(S, "surrogate")] = _d(S, "surrogate"),
    weights_file: Annotated[Optional[Path], _o(S, "weights_file")] = _d(S, "weights_file"),
    access: Annotated[str, _o(S, "access")] = _d(S, "access"),
    query_output: Annotated[str, _o(S, "query_output")] = _d(S, "query_output"),
    query_budget: Annotated[Optional[int], _o(S, "query_budget")] = _d(S, "query_budget"),
    delivery: Annotated[str, _o(S, "delivery", "--delivery", "--deliver")] = _d(S, "delivery"),
    eot: Annotated[bool, _o(S, "eot", "--eot/--no-eot")] = _d(S, "eot"),
    step_size: Annotated[Optional[float], _o(S, "step_size")] = _d(S, "step_size"),
    source_limit: Annotated[Optional[int], _o(S, "source_limit")] = _d(S, "source_limit"),
    eval_limit: Annotated[Optional[int], _o(S, "eval_limit")] = _d(S, "eval_limit"),
    split: Annotated[str, _o(S, "split")] = _d(S, "split"),
    batch_size: Annotated[int, _o(S, "batch_size", min=1)] = _d(S, "batch_size"),
    chunk_size: Annotated[int, _o(S, "chunk_size", min=1)] = _d(S, "chunk_size"),
    controls: Annotated[int, _o(S, "controls")] = _d(S, "controls"),
    control_kind: Annotated[str, _o(S, "control_kind")] = _d(S, "control_kind"),
    clip: Annotated[bool, _o(S, "clip", "--clip/--no-clip")] = _d(S, "clip"),
    grayscale_source: Annotated[Optional[bool], _o(S, "grayscale_source", "--grayscale-source/--color-source")]
    = _d(S, "grayscale_source"),
    seed: Annotated[int, _o(S, "seed")] = _d(S, "seed"),
    device: Annotated[str, _o(S, "device")] = _d(S, "device"),
    workers: Annotated[int, _o(S, "workers")] = _d(S, "workers"),
    amp: Annotated[bool, _o(S, "amp", "--amp")] = _d(S, "amp"),
    init: Annotated[Optional[Path], typer.Option(help="Warm-start from a saved uap.npy.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (default reports/<run-id>/).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result JSON on stdout, nothing else.")]
    = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Skip the HTML/Markdown reports.")] = False,
) -> None:
    """Build a UAP from SOURCE and evaluate it on the task's test split against random controls."""
    import json

    from robaudit.api import run_spec
    from robaudit.attacks.uap.group import is_main
    from robaudit.commands._shared import default_out_dir, print_uap_summary, write_reports_best_effort
    from robaudit.core.console import print_json
    from robaudit.core.specs import make_spec
    from robaudit.eval.artifacts import load_perturbation

    fields = {k: v for k, v in locals().items() if k in S.model_fields}
    for k in ("checkpoint", "weights_file"):
        fields[k] = str(fields[k]) if fields[k] is not None else None
    spec = make_spec(**fields)
    init_v = None
    if init is not None:  # an .npz, a pickle or garbage is one BadInput line (never executed)
        init_v = load_perturbation(init, "--init", "pass the uap.npy a run wrote (or the rescued -uap.npy)")
    name = spec.model or Path(spec.checkpoint or "model").stem
    out_dir = out or default_out_dir(name, spec.source, spec.cache_key()[:6])
    run = run_spec(spec, out=out_dir, quiet=json_out, init=init_v)
    if not is_main():  # under torchrun only rank 0 writes reports and prints
        return
    written = {} if no_report else write_reports_best_effort(run.result, out_dir, out_dir / "result.json")
    if json_out:
        print_json(json.loads(run.result.model_dump_json()))
    else:
        print_uap_summary(run.result, out_dir, reports=list(written.values()))
