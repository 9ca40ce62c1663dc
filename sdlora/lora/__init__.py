"""The adapter itself, below everything that makes or uses one: the in-memory layers of every network type
(state.py, kinds.py), their file formats (kohya and diffusers/PEFT keys, SDXL's original block names: formats.py,
sgm.py), reading and writing files (io.py) and the checks every reader applies (check.py).

The network (sdlora.network) and the trainer write adapters through this package; the tools in sdlora.adapters
(blend, merge, inspect, resize, grids) read them through it. It imports nothing of theirs.
"""
