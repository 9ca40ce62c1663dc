"""The demo concept, end to end on the CPU, for another network type: LoKr learns the rings too.

Only LoKr runs here (its Kronecker layers share the least code with LoRA's); LoCon's case (the same test with
`network.conv_rank=4 network.conv_alpha=4`, 116-133 s on the CI machine) was taken out to keep CI inside its time,
and its rates are measured by `python bench/demo_concept.py --types locon --train-seeds 42 7` (docs/NETWORKS.md).

tests/test_concept_end_to_end.py trains presets/demo.yaml (LoRA on attention, the transformer's linear layers and
the ResNet convolutions at one rank) and counts rings; this does the same with each type's settings as `--set`
overrides on top of that preset (bench/demo_concept.py's `TYPES`, where the figures of every type come from):

- LoKr (lr 1.5e-2, 3x the preset's: at 5e-3 it drew 2 of 16) and LoCon (the preset's convolutions at conv_rank 4,
  conv_alpha 4): rings at weight 0 / 1 = 0/8 / 7/16 and 0/8 / 6/16, the untriggered prompt 3/16 for both (train.seed
  42, this test); with train.seed 7 (`python bench/demo_concept.py --types lokr locon --train-seeds 7`): 1/16 and
  1/16, leak 2/16 and 1/16. The preset itself gives 10/16 and 4/16 for the two seeds: seed 7 is hard for all.
  Those figures are of the previous preset (400 steps, a constant rate, uniform timesteps); on the current one
  (300 steps, cosine decay, logit-normal timesteps, docs/models/tiny.md) train.seed 42 gave LoKr 0/8 / 6/16 and
  LoCon 0/8 / 6/16, the untriggered prompt 0/16 for both (282 s of CPU user time beside the other concept test).
- measured on the shared 2-core machine (load 3-8), torch 2.13.0+cpu, diffusers 0.42.1, transformers 5.24.0, peft
  0.21.2, one thread: 277 s of CPU user time for both cases, 7 min 42 s wall (`/usr/bin/time -v python -m pytest
  -q -s tests/test_concept_network_types.py`); the LoKr case takes ~1.5x the LoCon one.

The thresholds sit at or below what both training seeds gave (rings at weight 1 >= 1/16; weight 0 <= 1/8; the
leak <= 5/16): an adapter that learned nothing, did not load or did not apply draws no ring (the base model never
does) and fails; one that draws rings for every prompt fails the leak bound. docs/NETWORKS.md has every type.
"""

from __future__ import annotations

import dataclasses

import pytest

from test_concept_end_to_end import demo_config, ring_rates, versions

from sdlora.config import apply_overrides, config_from_dict
from sdlora.events import EventBus
from sdlora.train.rundir import new_run
from sdlora.train.trainer import Trainer

# Overrides on the demo preset (bench/demo_concept.py's TYPES), the least rings at weight 1 and the most for the
# untriggered prompt at weight 1 (measured, train.seed 42 / 7: see the docstring).
CASES = {
    "lokr": (["network.type=lokr", "train.lr=1.5e-2"], 1 / 16, 5 / 16),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CASES))
def test_each_network_type_learns_the_demo_concept(tmp_path, kind):
    overrides, least_rings, most_leak = CASES[kind]
    config = config_from_dict(apply_overrides(dataclasses.asdict(demo_config(tmp_path)), overrides))
    trainer = Trainer(config, new_run(config), EventBus())
    trainer.setup()
    result = trainer.run()
    assert result.status == "done" and result.adapter_path.is_file()

    rates, leak = ring_rates(result.adapter_path, weights=(0.0, 1.0))
    rates["leak"] = leak[1.0]
    print(f"{kind}: rings by adapter weight and the untriggered prompt's at 1: {rates}; {versions()}")
    assert rates[0.0] <= 1 / 8, (rates, versions())
    assert rates[1.0] >= least_rings, (rates, versions())
    assert rates["leak"] <= most_leak, (rates, versions())
