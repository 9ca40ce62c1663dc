"""`sdlora resize FILE --rank R --out OUT`: the best rank-R LoRA for each layer (truncated SVD of dW); a DyLoRA
file is truncated instead (its first R rows are the rank-R adapter it was trained to hold)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("resize", help="lower a LoRA's rank by SVD, reporting the energy kept per layer")
    p.add_argument("file", metavar="FILE", help="LoRA .safetensors file")
    p.add_argument("--rank", type=int, required=True, metavar="R", help="the new (maximum) rank")
    p.add_argument("--out", required=True, metavar="OUT", help="where to write the resized file")
    p.set_defaults(handler=run)


def run(args) -> int:
    from sdlora.adapters.analysis import resize_adapter, truncate_adapter
    from sdlora.lora.io import read_adapter_file, save_adapter
    from sdlora.errors import SdloraError

    if args.rank < 1:
        raise SdloraError(f"--rank {args.rank}: the rank must be a positive whole number")
    found = read_adapter_file(args.file)
    if found.adapter.network_type == "dylora":
        truncated = truncate_adapter(found.adapter, args.rank)
        save_adapter(truncated, args.out, fmt=found.format, dtype=None)
        print(f"{args.out}: DyLoRA truncated from rank {max(found.adapter.ranks)} to {args.rank} (first {args.rank} "
              f"rows and columns, scale alpha/{args.rank}; no SVD), {len(truncated.layers)} layers")
        return 0
    resized, kept = resize_adapter(found.adapter, args.rank)
    save_adapter(resized, args.out, fmt=found.format, dtype=None)
    width = max(len(name) for name in kept)
    for name, fraction in kept.items():
        old, new = found.adapter.layers[name].rank, resized.layers[name].rank
        print(f"{name:<{width}}  rank {old:>3} -> {new:<3}  energy kept {fraction:.4f}")
    values = list(kept.values())
    print(f"{args.out}: {len(values)} layers at rank <= {args.rank}; energy kept: min {min(values):.4f}, "
          f"mean {sum(values) / len(values):.4f}")
    return 0
