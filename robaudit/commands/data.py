"""``robaudit data list``, ``robaudit data show`` and ``robaudit data fetch``."""

from __future__ import annotations

from typing import Annotated

import typer

app = typer.Typer(help="Medical tasks and natural-image sources in the data root.", no_args_is_help=True)


@app.command("list")
def list_(
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Show the tasks and sources available, with counts and classes."""
    from rich.table import Table

    from robaudit.core import locations
    from robaudit.core.console import err, print_json
    from robaudit.data import list_tasks
    from robaudit.data.sources import bundled_photos

    # the embedded task needs no data root; a configured root that does not exist is still an error
    root = locations.data_root(required=locations.configured_data_root() is not None)
    tasks = [t.summary() for t in list_tasks(root)]
    imagenet = root / "imagenet" if root is not None else None
    n_imagenet = sum(1 for p in imagenet.rglob("*") if p.is_file() and p.suffix.lower() in
                     {".jpg", ".jpeg", ".png"}) if imagenet is not None and imagenet.is_dir() else 0
    sources = [{"name": "imagenet", "images": n_imagenet, "path": str(imagenet) if imagenet else "(no data root)"},
               {"name": "natural", "images": len(bundled_photos()), "path": "photos inside installed wheels"},
               {"name": "train", "images": None, "path": "the audited task's training split"}]
    if json_out:
        print_json({"data_root": str(root) if root else None, "tasks": tasks, "sources": sources})
        return
    table = Table(title=f"Tasks in {root}" + (" and embedded in robaudit" if any(t["embedded"] for t in tasks) else "")
                  if root else "Tasks embedded in robaudit (no data root)")
    for col in ("task", "file", "modality", "train", "val", "test", "classes", "views"):
        table.add_column(col)
    for t in tasks:
        c = t["counts"]
        classes = ", ".join(t["classes"])
        file = "(embedded)" if t["embedded"] else t["path"].rsplit("/", 1)[-1]
        table.add_row(t["name"], file, t["modality"] or "", str(c.get("train", "")),
                      str(c.get("val", "")), str(c.get("test", "")),
                      f"{len(t['classes'])}: {classes[:60]}{'…' if len(classes) > 60 else ''}",
                      ", ".join(t["views"]))
    err.print(table)
    st = Table(title="Natural-image sources")
    for col in ("source", "images", "from"):
        st.add_column(col)
    for s in sources:
        st.add_row(s["name"], "" if s["images"] is None else str(s["images"]), s["path"])
    err.print(st)


@app.command("fetch")
def fetch(
    name: Annotated[str, typer.Argument(help="MedMNIST flag or task alias (dermamnist, skin, pneumonia, ...).")],
    size: Annotated[int, typer.Option(help="MedMNIST image size: 28, 64, 128 or 224.")] = 28,
) -> None:
    """Download a MedMNIST dataset into the data root (needs internet and the medmnist package)."""
    from robaudit.core.console import info
    from robaudit.data.fetch import fetch_medmnist

    path = fetch_medmnist(name, size)
    info(f"[green]saved[/] {path}")


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="Task name (skin, pneumonia-mini, ...), npz file or image folder.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Classes, counts per split and class, stored size, channels and value range of a task or folder."""
    from rich.table import Table

    import robaudit as ra
    from robaudit.core.console import err, print_json

    d = ra.load_data(name).describe()
    if json_out:
        print_json(d)
        return
    err.print(f"[bold]{d['name']}[/] ({d['kind']}): {len(d['classes'])} classes, "
              f"{'grey (1 channel)' if d['grey'] else 'colour (3 channels)'}")
    t = Table()
    for col in ("split", "images", "stored size", "value range", *d["classes"]):
        t.add_column(col[:20], justify="right")
    for split, s in d["splits"].items():
        t.add_row(split, str(s["n"]), "x".join(map(str, s["size"])) if s["size"] else "",
                  f"{s['min']:.2f}..{s['max']:.2f}", *(str(s["per_class"][c]) for c in d["classes"]))
    err.print(t)
