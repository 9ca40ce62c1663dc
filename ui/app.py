"""`sdlora-ui`: the Gradio app with the Dataset, Train and Preview tabs.

    sdlora-ui [--host 127.0.0.1] [--port 7860] [--auth USER:PASS] [--root DIR]...

It listens on the loopback address unless told otherwise, and reads and writes only below the project folder
(the current folder) and each --root. The tabs are thin: data, training and blending are the library's.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from pathlib import Path

from sdlora.errors import SdloraError
from ui.context import AppContext
from ui.paths import Roots
from ui.uploads import Limits

CSS = """
.sdlora-progress { position: relative; height: 28px; border-radius: 6px; background: var(--block-background-fill);
  border: 1px solid var(--border-color-primary); overflow: hidden; }
.sdlora-progress-fill { position: absolute; inset: 0 auto 0 0; background: var(--color-accent-soft);
  transition: width 0.4s; }
.sdlora-progress span { position: relative; padding: 0 10px; line-height: 28px; font-variant-numeric: tabular-nums; }
.sdlora-progress[data-state=error] .sdlora-progress-fill { background: #f8d0d0; }
.sdlora-check .problem { background: #fde8e8; color: #8a1c1c; }
.sdlora-check .warn { background: #fff4d6; color: #7a5500; }
.sdlora-check td, .sdlora-check th { padding: 2px 8px; text-align: left; }
.sdlora-pixelated img { image-rendering: pixelated; }
.sdlora-sheet { max-height: 520px; overflow: auto; }
.sdlora-sheet th { padding: 2px 8px; text-align: left; font-weight: normal; white-space: nowrap; }
.sdlora-sheet td { padding: 2px; }
.sdlora-sheet img { display: block; object-fit: contain; background: #fff; border: 1px solid var(--border-color-primary); }
.sdlora-chart { width: 100%; max-width: 760px; background: var(--block-background-fill); }
"""


def build_app(ctx: AppContext):
    """The Blocks app for `ctx`; launch it with `launch_kwargs(ctx)`."""
    import gradio as gr

    from ui import adapters_tab, dataset_tab, preview_tab, subsets_panel, train_tab

    # Each tab is built by its module's build(ctx) inside its gr.Tab; a new panel is a new module with its own
    # build() placed here (a new tab) or inside a tab's build. dataset_tab and train_tab return their components
    # that others hook into (DatasetTab, TrainTab).
    with gr.Blocks(title="sdlora", analytics_enabled=False) as app:
        gr.Markdown("## sdlora · train and preview Stable Diffusion LoRAs")
        with gr.Tabs():
            with gr.Tab("Dataset", id="dataset", elem_id="tab-dataset"):
                dataset = dataset_tab.build(ctx)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train = train_tab.build(ctx, app)
            with gr.Tab("Preview", id="preview", elem_id="tab-preview"):
                preview_tab.build(ctx)
            with gr.Tab("Adapters", id="adapters", elem_id="tab-adapters"):
                adapters_tab.build(ctx)
        # The data check follows the preset picked for training (its resolution and upscaling).
        train.preset.change(lambda name: name, [train.preset], [dataset.check_preset], show_progress="hidden")
        # The Concepts panel edits the Train tab's data.subsets field.
        subsets_panel.connect(dataset.subsets, ctx, train.form[[f.key for f in train.fields].index("data.subsets")],
                              app)
        from ui import api

        api.register(ctx)  # /gradio_api: generation with any adapter mix, concurrent calls batched together
    return app


def launch_kwargs(ctx: AppContext) -> dict:
    """What `launch()` needs besides host, port and auth: files under the roots may be shown, uploads limited."""
    return dict(allowed_paths=[str(p) for p in ctx.roots.paths], max_file_size=ctx.limits.max_file_bytes,
                css=CSS, ssr_mode=False, footer_links=[])


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, auth) -> str | None:
    """A loud warning when the app listens beyond this machine without a password."""
    if is_loopback(host) or auth:
        return None
    bar = "!" * 78
    return (f"{bar}\nWARNING: sdlora-ui listens on {host} without --auth: anyone who can reach this address\n"
            f"can read and write files under the allowed folders and start training runs.\n"
            f"Add --auth USER:PASS, or use the default --host 127.0.0.1.\n{bar}")


def port_problem(host: str, port: int) -> str | None:
    """Why the app cannot listen on host:port (out of range, in use, not an address here), or None."""
    import socket

    if not 1 <= port <= 65535:
        return f"--port {port}: give a port from 1 to 65535"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"--host {host}: not an address of this machine ({exc.strerror})"
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            return f"--port {port}: cannot listen on {host}:{port} ({exc.strerror}); pick another with --port N"
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="sdlora-ui", description="The sdlora app: Dataset, Train and Preview tabs.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--auth", metavar="USER:PASS", help="ask for this user name and password")
    p.add_argument("--root", action="append", default=[], metavar="DIR",
                   help="another folder the app may read and write (repeatable); the current folder always is")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    auth = None
    if args.auth:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            print("sdlora-ui: error: --auth takes USER:PASS, e.g. --auth me:secret", file=sys.stderr)
            return 2
        auth = (user, password)
    problem = port_problem(args.host, args.port)
    if problem:
        print(f"sdlora-ui: error: {problem}", file=sys.stderr)
        return 2
    warning = exposure_warning(args.host, auth)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    try:
        ctx = AppContext(roots=Roots.of(Path.cwd(), args.root), limits=Limits())
    except SdloraError as exc:
        print(f"sdlora-ui: error: {exc}", file=sys.stderr)
        return 2
    app = build_app(ctx)
    # SIGTERM ends the app through SystemExit, so atexit stops a running training run (which saves) rather than
    # leaving it running unseen.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    print(f"sdlora-ui: allowed folders: {ctx.roots.describe()}", file=sys.stderr, flush=True)
    try:
        app.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, auth=auth,
                                                      **launch_kwargs(ctx))
    except OSError as exc:  # taken between the check above and the launch, or an address not of this machine
        print(f"sdlora-ui: error: cannot listen on {args.host}:{args.port} ({str(exc).splitlines()[0]}); pick "
              f"another with --port N or --host ADDRESS", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
