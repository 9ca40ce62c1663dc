"""`sdlora models [--json]`: list the built-in models and their diffusers-format folders."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("models", help="list the built-in models")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, path, ...}")
    p.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.models.registry import builtin_models

    rows = []
    for model in builtin_models().values():
        path = model.ensure()  # the contract promises a folder that exists
        rows.append({"name": model.name, "path": str(path), "description": model.description,
                     "resolution": model.resolution})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['name']:<8} {row['resolution']:>5}px  {row['path']}\n         {row['description']}")
    return 0
