"""Adapter comparison grids: checkpoints x weights x prompts, the cells sampled in batches that mix adapters.

- `plan`: the rows (a run folder stands for its checkpoints and final adapter), weights, prompts and cells
- `render`: sample the cells (`sdlora.adapters.serving.BatchGenerator`), write cell PNGs, the sheet and the index
- `sheet`: the labelled grid image
"""
