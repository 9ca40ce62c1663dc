"""Names vulture cannot see used (read by libraries, not by our code): `vulture sdlora ui tests bench scripts
vulture_whitelist.py` in CI. Each line says who reads it."""
# ruff: noqa
processor.tokenizer.padding_side  # transformers reads it (left padding for decoder-only captioners)
parser.formatter_class  # argparse reads it
__getattr__  # a module-level lazy attribute hook (sdlora/data/__init__.py), called by Python
config.architectures  # transformers writes it into config.json
ring  # a dataclass field (tests/prompt_following.PromptCase), read by the tests' detectors
_  # fp8's fake-tensor kernel, registered with torch.library by its decorator
extra_repr  # nn.Module.__repr__ calls it
optimizer.found_inf  # torch's fused AdamW reads it to skip a non-finite step
added  # a dataclass field of a queue job, written to queue.json
torch.backends.cuda.matmul.allow_tf32  # torch reads these two switches (scripts/pretrain_tiny.py)
torch.backends.cudnn.benchmark
pytest_configure
pytest_collection_modifyitems  # pytest hooks and markers, called by pytest
pytestmark
own_cache  # an autouse fixture
model.ir_version  # onnx reads it (tests/caption_fixtures.py)
module.__class__  # assigning an object's class swaps its methods (sdlora/network.py: peft's LoHa/LoKr forward without the dropout draw), read by Python
graphs_on_the_cpu  # a fixture the step-graph tests name in usefixtures
