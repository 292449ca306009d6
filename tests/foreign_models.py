"""Third-party-style ONNX files for tests: what users bring to `edgekit import` (no edgekit metadata).

Plain builder functions (no pytest): each writes into `tmp` and returns the path. Deterministic (seeded
weights) and small (32-64 px inputs, few classes) so a test builds one in a few seconds.
"""

from __future__ import annotations

import io
import textwrap
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

TORCHVISION_NAMES = ("mobilenet_v3_small", "regnet_y_400mf", "shufflenet_v2_x1_0", "efficientnet_b0", "convnext_tiny")


def _legacy_export(*args, **kwargs) -> None:
    """torch.onnx.export with the TorchScript exporter, its deprecation notice silenced."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(*args, dynamo=False, **kwargs)


def _torchvision_model(name: str, num_classes: int = 10):
    import torch
    import torchvision

    if name not in TORCHVISION_NAMES:
        raise ValueError(f"unknown torchvision model {name!r}; use one of {', '.join(TORCHVISION_NAMES)}")
    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=num_classes)
    return model.eval()


def torchvision_torchscript(tmp, name: str = "mobilenet_v3_small", size: int = 64) -> Path:
    """A torchvision classifier outside edgekit's zoo, exported with the TorchScript exporter at opset 17."""
    import torch

    model = _torchvision_model(name)
    path = Path(tmp) / f"{name}_ts.onnx"
    _legacy_export(model, (torch.randn(1, 3, size, size),), str(path), opset_version=17,
                      input_names=["input"], output_names=["logits"])
    return path


def torchvision_dynamo(tmp, name: str = "mobilenet_v3_small", size: int = 64) -> Path:
    """The same with the dynamo exporter, written with external data: the .onnx has a sidecar `<name>.onnx.data`."""
    import onnx
    import torch

    model = _torchvision_model(name)
    path = Path(tmp) / f"{name}_dynamo.onnx"
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # the exporter prints its progress
        program = torch.onnx.export(model, (torch.randn(1, 3, size, size),), dynamo=True, opset_version=18)
    proto = program.model_proto
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data")
    return path


def _onnxsim_net():
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.c3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.fc = nn.Linear(16 * 4 * 4, 5)

        def forward(self, x):
            x = torch.relu(self.c1(x))
            x = torch.relu(self.c2(x))
            x = torch.relu(self.c3(x))
            x = x.view(x.size(0), -1)
            return self.fc(x)

    torch.manual_seed(1)
    return Net().eval()


def onnxsim_file(tmp) -> Path:
    """3 convs, `x.view(x.size(0), -1)`, Linear; TorchScript export, then onnxsim (the Reshape's shape is folded
    into an initializer). Input 1x3x32x32, 5 classes."""
    import onnx
    import onnxsim
    import torch

    raw = Path(tmp) / "viewnet_raw.onnx"
    _legacy_export(_onnxsim_net(), (torch.randn(1, 3, 32, 32),), str(raw), opset_version=13,
                      input_names=["input"], output_names=["output"])
    simplified, ok = onnxsim.simplify(onnx.load(str(raw)))
    assert ok, "onnxsim could not validate its own output"
    path = Path(tmp) / "viewnet_sim.onnx"
    onnx.save(simplified, str(path))
    raw.unlink()
    return path


def view_dynamic_batch(tmp) -> Path:
    """The onnxsim_file net exported with a dynamic batch and no simplification: `x.view(x.size(0), -1)` stays a
    Shape -> Gather -> Unsqueeze -> Concat -> Reshape subgraph, which `edgekit import --input-shape 1,3,32,32`
    folds."""
    import torch

    path = Path(tmp) / "viewnet_dynamic.onnx"
    _legacy_export(_onnxsim_net(), (torch.randn(1, 3, 32, 32),), str(path), opset_version=13,
                      input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    return path


def _paddle_net():
    import torch
    from torch import nn

    class Net(nn.Module):  # OCR-recogniser-like: convs, a BatchNorm, global pooling, a classifier
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2), nn.ReLU(),
                nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(),
            )
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 6)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    torch.manual_seed(2)
    return Net().eval()


def paddle_style_opset11(tmp) -> Path:
    """Like a Paddle2ONNX file: opset 11, every weight a Constant node (no initializers), input [-1, 3, "h", "w"]
    (dynamic batch and H/W); meant for non-square inputs such as 1x3x32x96."""
    import onnx
    import torch
    from onnx import helper

    path = Path(tmp) / "paddle_style.onnx"
    _legacy_export(_paddle_net(), (torch.randn(1, 3, 32, 96),), str(path), opset_version=11,
                      input_names=["x"], output_names=["softmax_out"],
                      dynamic_axes={"x": {0: "-1", 2: "h", 3: "w"}, "softmax_out": {0: "-1"}})
    model = onnx.load(str(path))
    graph = model.graph
    constants = [helper.make_node("Constant", [], [init.name], name=f"const_{i}", value=init)
                 for i, init in enumerate(graph.initializer)]
    del graph.initializer[:]
    nodes = constants + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    # Paddle2ONNX writes -1 for a dynamic batch: a symbolic dim named "-1" is unusual; make it unnamed-dynamic
    dims = graph.input[0].type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "-1"
    model.producer_name, model.producer_version = "PaddlePaddle", "2.6"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _dense_net():
    import torch
    from torch import nn

    class Net(nn.Module):  # a text-detector-like map: down, up, one-channel probability map
        def __init__(self):
            super().__init__()
            self.down = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.head = nn.Conv2d(16, 1, 1)

        def forward(self, x):
            skip = self.down[1](self.down[0](x))
            y = torch.relu(self.up(self.down(x)))
            return torch.sigmoid(self.head(torch.cat([y, skip], 1)))

    torch.manual_seed(3)
    return Net().eval()


def dense_output(tmp) -> Path:
    """A fully convolutional net whose output is a map (N, 1, H, W); input 1x3x64x64, opset 17."""
    import torch

    path = Path(tmp) / "textdet.onnx"
    _legacy_export(_dense_net(), (torch.randn(1, 3, 64, 64),), str(path), opset_version=17,
                      input_names=["image"], output_names=["prob_map"])
    return path


USER_MODULE = '''\
"""A user's own small ResNet-style classifier (one residual block, one grouped conv, one torch.cat)."""

import torch
from torch import nn


class MyNet(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.branch = nn.Conv2d(16, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.grouped(y))
        x = torch.relu(x + y)  # the residual
        x = torch.cat([x, self.branch(x)], 1)  # a feature-map concat
        return self.fc(torch.flatten(self.pool(x), 1))


def build(num_classes=10):
    torch.manual_seed(0)
    return MyNet(num_classes).eval()
'''


def user_module_source(tmp) -> Path:
    """Writes `mynet.py` with a `build(num_classes=10)` factory (for `edgekit export mynet.py:build`)."""
    path = Path(tmp) / "mynet.py"
    path.write_text(textwrap.dedent(USER_MODULE))
    return path
