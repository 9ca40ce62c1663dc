"""`sdlora inspect FILE [--json]`: format, family, ranks, targets, training metadata and per-layer dW numbers."""

from __future__ import annotations

import json

from sdlora.text import printable


def register(sub) -> None:
    p = sub.add_parser("inspect", help="show what a LoRA file holds and what each layer does")
    p.add_argument("file", metavar="FILE", help="LoRA .safetensors file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.adapters.analysis import describe
    from sdlora.lora.io import read_adapter_file

    found = read_adapter_file(args.file)
    report = {"path": str(found.path), "format": found.format, "dtypes": sorted(found.dtypes),
              "file_size": found.path.stat().st_size, "skipped_keys": found.skipped_keys,
              **describe(found.adapter)}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return 0


def _listing(values) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def render(report: dict) -> str:
    lines = [
        f"file        {report['path']} ({report['file_size']:,} bytes)",
        f"format      {report['format']} ({', '.join(report['dtypes'])})",
        f"type        {report['network_type']}",
        f"family      {report['family']} (from {report['family_source']})"
        + (f", base model {report['base_model']}" if report["base_model"] else ""),
        f"layers      {report['num_layers']} ("
        + ", ".join(f"{c} {n}" for c, n in report["components"].items()) + ")",
        f"rank        {_listing(report['ranks'])}    alpha {_listing(report['alphas'])}",
        f"parameters  {report['num_parameters']:,}",
        "targets     " + ", ".join(f"{kind} x{n}" for kind, n in report["targets"].items()),
    ]
    if report["skipped_keys"]:
        lines.append(f"skipped     {len(report['skipped_keys'])} unknown key(s), e.g. {report['skipped_keys'][0]}")
    if report["training"]:
        lines.append("training")
        lines += [f"  {key:<26} {value}" for key, value in report["training"].items()]
    share = int(report["effective_rank_energy"] * 100)
    width = max(len(layer["name"]) for layer in report["layers"])
    lines.append(f"{'layer':<{width}}  rank  alpha   |dW|_F     eff.rank({share}% energy)")
    for layer in report["layers"]:
        lines.append(f"{layer['name']:<{width}}  {layer['rank']:>4}  {layer['alpha']:>5g}  {layer['norm']:>9.4g}  "
                     f"{layer['effective_rank']:>4}")
    # Metadata values and layer names come from the file: escaped, so they cannot drive the terminal.
    return "\n".join(printable(line) for line in lines)
