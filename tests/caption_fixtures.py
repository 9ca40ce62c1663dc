"""Small random-weight captioners built in the test itself: a BLIP saved with its processor, a WD14-style tagger."""

from __future__ import annotations

import inspect
from pathlib import Path

WORDS = ["a", "photo", "of", "red", "blue", "green", "circle", "square", "on", "white", "background", "the", "and"]


def make_blip(folder: Path, seed: int = 0) -> Path:
    """A tiny BlipForConditionalGeneration (2 layers, width 32, 32 px) with a BERT tokenizer on a small vocab."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    try:
        from transformers import BlipImageProcessorPil as ImageProcessor  # transformers 5 without torchvision
    except ImportError:
        from transformers import BlipImageProcessor as ImageProcessor
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *WORDS]
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:  # transformers 5: the vocab itself
        tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, bos_token="[DEC]")
    else:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer(vocab_file=str(folder / "vocab.txt"), bos_token="[DEC]")
    torch.manual_seed(seed)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=5, eos_token_id=3,
                         sep_token_id=3, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16, image_text_hidden_size=32)
    model = BlipForConditionalGeneration(config).eval()
    # Larger random weights than the init's 0.02 std, so the caption depends on the image.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.3)
        model.text_decoder.cls.predictions.bias[:6] = -100.0  # no special tokens: every caption has words
    model.save_pretrained(folder)
    BlipProcessor(image_processor=ImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer
                  ).save_pretrained(folder)
    return folder


TAGS = [("red_hair", "0"), ("blue_sky", "0"), ("^_^", "0"), ("general", "9"), ("green_(color)", "4")]


def make_tagger(folder: Path, size: int = 16) -> Path:
    """A WD14-layout tagger: model.onnx (NHWC BGR 0..255 -> sigmoid per tag) + selected_tags.csv.

    Scores come from the mean colour: `red_hair` fires on red images, `blue_sky` on blue, `green_(color)` on green,
    `^_^` on bright ones; the rating tag `general` always scores high (and must never be written). Channel order
    BGR is part of the contract: a red image read as RGB would score as blue.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True, exist_ok=True)
    # Mean over H and W of BGR/255 -> (N, 3); scores = sigmoid(mean @ W + b).
    weights = np.array([[-8, 12, -8, 0, -8],   # B
                        [-8, -8, -8, 0, 12],   # G
                        [12, -8, -8, 0, -8]],  # R
                       dtype=np.float32)
    weights[:, 2] = 4.0  # ^_^: bright (the sum of the three channels)
    bias = np.array([-4, -4, -10, 5, -4], dtype=np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=0),
        helper.make_node("Div", ["mean", "scale"], ["unit"]),
        helper.make_node("MatMul", ["unit", "W"], ["logits0"]),
        helper.make_node("Add", ["logits0", "b"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(TAGS)])],
        initializer=[numpy_helper.from_array(np.array([1, 2], dtype=np.int64), "axes"),
                     numpy_helper.from_array(np.array(255.0, dtype=np.float32), "scale"),
                     numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, folder / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{cat},100" for i, (name, cat) in enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


def make_git(folder: Path, seed: int = 0) -> Path:
    """A tiny GitForCausalLM (a decoder-only captioner: generate() returns the prompt before the caption)."""
    import torch
    from transformers import BertTokenizer, GitConfig, GitForCausalLM, GitProcessor

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import CLIPImageProcessor as ImageProcessor
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    if "vocab" in inspect.signature(BertTokenizer.__init__).parameters:
        tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)})
    else:
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        tokenizer = BertTokenizer(vocab_file=str(folder / "vocab.txt"))
    torch.manual_seed(seed)
    config = GitConfig(vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                          num_attention_heads=2, image_size=32, patch_size=8),
                       vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, max_position_embeddings=64, bos_token_id=2, eos_token_id=3,
                       pad_token_id=0)
    model = GitForCausalLM(config).eval()
    with torch.no_grad():
        model.output.bias[:5] = -100.0  # no special tokens: every caption has words
    model.save_pretrained(folder)
    GitProcessor(image_processor=ImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                 tokenizer=tokenizer).save_pretrained(folder)
    return folder
