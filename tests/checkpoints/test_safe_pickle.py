"""Restricted unpickling: published heads, legacy whole-module encoders, malicious files."""

import contextlib
import os
import pickle
import subprocess
import sys
import types

import pytest
import torch

from tsvmerge.checkpoints import (
    UnsafeCheckpointError,
    load_legacy_module,
    load_pickled_object,
    open_state_dict,
)
from tsvmerge.models.heads import ClassificationHead, load_classification_head, save_classification_head

# torch.save(module, _use_new_zipfile_serialization=False) wants the source of classes defined in functions.
pytestmark = pytest.mark.filterwarnings("ignore:Couldn't retrieve source code:UserWarning")


@contextlib.contextmanager
def fake_module(name, **classes):
    """Temporarily install module ``name`` (and its parents) holding ``classes``, as the published ``src`` package."""
    added = []
    parts = name.split(".")
    for i in range(1, len(parts) + 1):
        sub = ".".join(parts[:i])
        if sub not in sys.modules:
            sys.modules[sub] = types.ModuleType(sub)
            added.append(sub)
    for cls_name, cls in classes.items():
        cls.__module__, cls.__qualname__ = name, cls_name
        setattr(sys.modules[name], cls_name, cls)
    try:
        yield
    finally:
        for sub in reversed(added):
            del sys.modules[sub]


def _published_head_class():
    class ClassificationHead(torch.nn.Linear):  # verbatim from src/models/modeling.py of the published code
        def __init__(self, normalize, weights, biases=None):
            output_size, input_size = weights.shape
            super().__init__(input_size, output_size)
            self.normalize = normalize
            if weights is not None:
                self.weight = torch.nn.Parameter(weights.clone())
            if biases is not None:
                self.bias = torch.nn.Parameter(biases.clone())
            else:
                self.bias = torch.nn.Parameter(torch.zeros_like(self.bias))

        def forward(self, inputs):
            if self.normalize:
                inputs = inputs / inputs.norm(dim=-1, keepdim=True)
            return super().forward(inputs)

    return ClassificationHead


@pytest.mark.parametrize("module_path", ["src.models.modeling", "src.modeling"])
@pytest.mark.parametrize("writer", ["torch.save", "torch.save(legacy)", "pickle.dump"])
def test_published_head_loads_without_src(tmp_path, module_path, writer):
    torch.manual_seed(0)
    weights, biases = torch.randn(10, 16), torch.randn(10)
    path = tmp_path / "head_MNISTVal.pt"
    cls = _published_head_class()
    with fake_module(module_path, ClassificationHead=cls):
        published = cls(True, weights, biases)
        if writer == "torch.save":
            torch.save(published, path)
        elif writer == "torch.save(legacy)":
            torch.save(published, path, _use_new_zipfile_serialization=False)
        else:
            with open(path, "wb") as fh:
                pickle.dump(published, fh)
    assert module_path not in sys.modules and "src" not in sys.modules

    head = load_classification_head(path)
    assert type(head) is ClassificationHead
    assert head.normalize is True
    assert torch.equal(head.weight, weights) and torch.equal(head.bias, biases)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.allclose(head(x), published(x))
        assert torch.allclose(head(x), (x / x.norm(dim=-1, keepdim=True)) @ weights.T + biases)


def test_save_and_load_our_head(tmp_path):
    head = ClassificationHead(False, torch.randn(3, 8))
    path = tmp_path / "heads" / "head_DTDVal.pt"
    save_classification_head(head, path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    loaded = load_classification_head(path)
    assert loaded.normalize is False and torch.equal(loaded.bias, torch.zeros(3))
    assert torch.equal(loaded.weight, head.weight)


class _Evil:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _payloads(marker):
    return {
        "os.system": (_Evil(os.system, (f"touch {marker}",)), {"posix.system", "nt.system"}),
        "builtins.exec": (_Evil(exec, (f"open({str(marker)!r}, 'w').close()",)), {"builtins.exec"}),
        # protocol 2 writes subprocess.call under its Python 2 name
        "subprocess.call": (_Evil(subprocess.call, (["touch", str(marker)],)), {"subprocess.call", "commands.call"}),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.exec", "subprocess.call"])
@pytest.mark.parametrize("writer", ["torch.save", "torch.save(legacy)", "pickle.dump"])
def test_malicious_pickles_are_refused(tmp_path, payload, writer):
    marker = tmp_path / "pwned"
    obj, expected_globals = _payloads(marker)[payload]
    path = tmp_path / "head_MNISTVal.pt"
    content = {"weight": torch.zeros(2), "boom": obj}
    if writer == "torch.save":
        torch.save(content, path)
    elif writer == "torch.save(legacy)":
        torch.save(content, path, _use_new_zipfile_serialization=False)
    else:
        with open(path, "wb") as fh:
            pickle.dump(content, fh)
    for load in (load_classification_head, open_state_dict, load_legacy_module, lambda p: load_pickled_object(p, {})):
        with pytest.raises(UnsafeCheckpointError) as info:
            load(path)
        assert info.value.global_name in expected_globals, str(info.value)
        assert str(path) in str(info.value)
        assert "weights_only=False" not in str(info.value)  # never advise the unsafe way out
        assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_the_malicious_payload_is_real(tmp_path):
    """Control for the test above: full pickle does run the payload."""
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_payloads(marker)["os.system"][0]))
    assert marker.exists()


# ------------------------------------------------------------------------------------------ legacy modules
def _tiny_clip():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    return open_clip, open_clip.CLIP(
        embed_dim=32,
        vision_cfg={"layers": 2, "width": 64, "patch_size": 16, "image_size": 32, "head_width": 32},
        text_cfg={"context_length": 8, "vocab_size": 100, "width": 64, "heads": 2, "layers": 1},
    )


def _task_vectors_image_encoder_class():
    class ImageEncoder(torch.nn.Module):  # as in task_vectors' src/modeling.py, minus the model download
        def __init__(self, open_clip, model, keep_lang=False):
            super().__init__()
            self.model = model
            self.train_preprocess = open_clip.image_transform(32, is_train=True)
            self.val_preprocess = open_clip.image_transform(32, is_train=False)
            self.cache_dir = "/nonexistent/cache"
            if not keep_lang and hasattr(self.model, "transformer"):
                delattr(self.model, "transformer")

    return ImageEncoder


@pytest.mark.parametrize(
    ("module_path", "writer"),
    [("src.modeling", "torch.save"), ("src.models.modeling", "torch.save(legacy)"), ("src.modeling", "pickle.dump")],
)
def test_legacy_whole_module_file(tmp_path, module_path, writer):
    open_clip, clip = _tiny_clip()
    cls = _task_vectors_image_encoder_class()
    path = tmp_path / "finetuned.pt"
    with fake_module(module_path, ImageEncoder=cls):
        encoder = cls(open_clip, clip)
        expected = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        if writer == "torch.save":
            torch.save(encoder, path)
        elif writer == "torch.save(legacy)":
            torch.save(encoder, path, _use_new_zipfile_serialization=False)
        else:
            with open(path, "wb") as fh:
                pickle.dump(encoder, fh)
    assert "model.visual.conv1.weight" in expected and "model.token_embedding.weight" in expected
    assert not any(k.startswith("model.transformer.") for k in expected)

    state = load_legacy_module(path)
    assert list(state) == list(expected)
    assert all(torch.equal(state[k], v) for k, v in expected.items())

    with pytest.warns(UserWarning, match="ImageEncoder"):
        lazy = open_state_dict(path)
    assert all(torch.equal(lazy[k], v) for k, v in expected.items())


def test_legacy_module_with_unknown_class_is_refused(tmp_path):
    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

    class ImageEncoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Custom()

    path = tmp_path / "finetuned.pt"
    with fake_module("src.modeling", ImageEncoder=ImageEncoder), fake_module("mylib.nets", Custom=Custom):
        torch.save(ImageEncoder(), path)
    with pytest.raises(UnsafeCheckpointError, match="mylib.nets.Custom") as info:
        load_legacy_module(path)
    assert info.value.global_name == "mylib.nets.Custom"
