"""A user's own PyTorch model through the real CLI: `edgekit export file.py:factory` (and `module:factory`,
`timm:NAME`), the entry and its source's sha256 in the metadata, and verify, which imports the module only when
the user names it again (--model), refuses an edited source, and checks the architecture before comparing."""

from __future__ import annotations

import shutil
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
import torch

from edgekit.core.files import sha256_file
from edgekit.onnxfile.artifact import read_metadata
from tests.conftest import files_in
from tests.foreign_models import user_module_source

SIZE = "32"


def _one_line_error(res, code: int, *needles: str) -> str:
    assert res.exit_code == code, (res.exit_code, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr + res.stdout
    assert res.stderr.count("\n") == 1, res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)
    return res.stderr


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory):
    """A folder with mynet.py (tests/foreign_models.py: a small ResNet-style net, a grouped conv, a torch.cat) and
    its export mynet.onnx at 32 px, made once for the module by the real CLI."""
    from typer.testing import CliRunner

    from edgekit.cli import app

    folder = tmp_path_factory.mktemp("user")
    user_module_source(folder)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        res = CliRunner().invoke(app, ["export", "mynet.py:build", "--input-size", SIZE, "-o", "mynet.onnx"],
                                 catch_exceptions=False)
    assert res.exit_code == 0, res.stderr
    return folder


def test_export_file_factory_records_the_entry_and_the_source_sha256(user_dir):
    path = user_dir / "mynet.onnx"
    model = onnx.load(str(path))
    meta = read_metadata(model)
    assert meta["model"] == "mynet.py:build" and meta["source"] == "user" and meta["family"] == "mynet"
    entry = meta["entry"]
    assert entry["kind"] == "file" and entry["spec"] == "mynet.py:build" and entry["factory"] == "build"
    assert Path(entry["path"]) == (user_dir / "mynet.py").resolve()
    assert entry["sha256"] == sha256_file(user_dir / "mynet.py")
    assert meta["weights"]["kind"] == "random" and meta["num_classes"] == 10 and meta["input_size"] == 32
    ops = [n.op_type for n in model.graph.node]
    assert "Concat" in ops  # the structure checks ran and passed: the grouped conv stayed grouped
    assert any(n.op_type == "Conv" and any(a.name == "group" and a.i == 4 for a in n.attribute) for n in model.graph.node)


def test_export_module_factory(cli, tmp_path, monkeypatch):
    shutil.copy(user_module_source(tmp_path), tmp_path / "h2_usernet_mod.py")
    monkeypatch.chdir(tmp_path)
    res = cli("export", "h2_usernet_mod:build", "--input-size", SIZE, "--num-classes", "7", "-o", "m.onnx")
    assert res.exit_code == 0, res.stderr
    meta = read_metadata(onnx.load(str(tmp_path / "m.onnx")))
    assert meta["entry"]["kind"] == "module" and meta["entry"]["factory"] == "build"
    assert meta["entry"]["sha256"] == sha256_file(tmp_path / "h2_usernet_mod.py")
    assert meta["num_classes"] == 7  # passed to build(num_classes=7)
    sys.modules.pop("h2_usernet_mod", None)


@pytest.mark.parametrize("spec", ["mynet.py", "./mynet.py"])
def test_a_file_without_factory_names_the_callables_it_has(cli, tmp_path, monkeypatch, spec):
    user_module_source(tmp_path)
    monkeypatch.chdir(tmp_path)
    err = _one_line_error(cli("export", spec, "--input-size", SIZE, "-o", "out/x.onnx"), 2, f"{spec}:build")
    assert "MyNet" in err and not (tmp_path / "out").exists()


BAD = '''
import torch
from torch import nn

def raises():
    raise ValueError("the first line\\nthe second line")

def number():
    return 3

def fixed():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))

def unseeded():
    import random
    net = fixed()
    with torch.no_grad():
        net[0].weight.fill_(random.random())
    return net
'''


@pytest.mark.parametrize(
    "spec, needles",
    [
        ("bad.py:raises", ["bad.py:raises", "ValueError: the first line"]),
        ("bad.py:number", ["bad.py:number", "an int, not a torch.nn.Module"]),
        ("bad.py:missing", ["bad.py has no 'missing'", "raises"]),
        ("broken.py:build", ["broken.py failed to import", "ModuleNotFoundError", "no_such_module_h2"]),
        ("nothere.py:build", ["nothere.py is not a file"]),
        ("bad.py:unseeded", ["different weights on two calls", "--weights"]),
    ],
)
def test_bad_factories_are_one_line_exit_2_and_write_nothing(cli, tmp_path, monkeypatch, spec, needles):
    (tmp_path / "bad.py").write_text(BAD)
    (tmp_path / "broken.py").write_text("import no_such_module_h2\n")
    monkeypatch.chdir(tmp_path)
    _one_line_error(cli("export", spec, "--input-size", SIZE, "-o", "out/x.onnx"), 2, *needles)
    assert files_in(tmp_path / "out") == []


def test_num_classes_a_factory_cannot_take_is_refused(cli, tmp_path, monkeypatch):
    (tmp_path / "bad.py").write_text(BAD)
    monkeypatch.chdir(tmp_path)
    _one_line_error(cli("export", "bad.py:fixed", "--input-size", SIZE, "--num-classes", "3", "-o", "x.onnx"), 2,
                    "gives 5 classes", "--num-classes 3")
    res = cli("export", "bad.py:fixed", "--input-size", SIZE, "-o", "x.onnx")  # inferred from the output
    assert res.exit_code == 0, res.stderr
    assert read_metadata(onnx.load(str(tmp_path / "x.onnx")))["num_classes"] == 5


def test_verify_never_imports_the_recorded_module_by_itself(cli, user_dir):
    _one_line_error(cli("verify", user_dir / "mynet.onnx"), 2, "mynet.py:build", "--model mynet.py:build")


def test_verify_with_the_same_source_passes(cli, user_dir, monkeypatch):
    monkeypatch.chdir(user_dir)
    res = cli("verify", "mynet.onnx", "--model", "mynet.py:build")
    assert res.exit_code == 0, res.stderr
    assert "PASS" in res.stdout


def test_verify_with_an_edited_source_is_refused(cli, user_dir, tmp_path):
    edited = tmp_path / "mynet.py"
    edited.write_text((user_dir / "mynet.py").read_text().replace("groups=4", "groups=2"))
    _one_line_error(cli("verify", user_dir / "mynet.onnx", "--model", f"{edited}:build"), 2, "sha256", "changed")


def test_verify_with_an_unrelated_model_says_so(cli, user_dir):
    _one_line_error(cli("verify", user_dir / "mynet.onnx", "--model", "textbook_resnet18"), 2,
                    "not textbook_resnet18")


def test_a_foreign_file_is_checked_against_the_model_it_is_said_to_be(cli, user_dir, tmp_path, monkeypatch):
    """The same graph without edgekit metadata: --model of another architecture is 'is not', never a numeric
    failure; the module it came from (the same seeded weights) passes."""
    model = onnx.load(str(user_dir / "mynet.onnx"))
    del model.metadata_props[:]
    foreign = tmp_path / "foreign.onnx"
    onnx.save(model, str(foreign))
    _one_line_error(cli("verify", foreign, "--model", "textbook_resnet18"), 2,
                    f"{foreign} is not textbook_resnet18", "convolutions")
    monkeypatch.chdir(user_dir)
    res = cli("verify", foreign, "--model", "mynet.py:build")
    assert res.exit_code == 0, res.stderr


def test_weights_round_trip(cli, tmp_path, monkeypatch):
    user_module_source(tmp_path)
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import importlib.util

        spec = importlib.util.spec_from_file_location("h2_weights_src", tmp_path / "mynet.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(tmp_path))
    net = module.build(num_classes=5)
    torch.manual_seed(7)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    res = cli("export", "mynet.py:build", "--weights", "w.pt", "--input-size", SIZE, "-o", "w.onnx")
    assert res.exit_code == 0, res.stderr
    meta = read_metadata(onnx.load(str(tmp_path / "w.onnx")))
    assert meta["num_classes"] == 5 and meta["weights"]["kind"] == "file"  # the classes came from the file
    assert meta["weights"]["sha256"] == sha256_file(tmp_path / "w.pt")
    _one_line_error(cli("verify", "w.onnx"), 2, "--model mynet.py:build --weights")
    res = cli("verify", "w.onnx", "--model", "mynet.py:build")
    assert res.exit_code == 0, res.stderr
    _one_line_error(cli("export", "mynet.py:build", "--weights", "w.pt", "--num-classes", "3", "--input-size", SIZE,
                        "-o", "x.onnx"), 2, "5 classes", "--num-classes 3")


def test_the_int8_file_of_a_user_model_verifies_against_the_same_module(cli, user_dir, tmp_path, monkeypatch):
    int8 = tmp_path / "mynet.int8.onnx"
    res = cli("quantize", user_dir / "mynet.onnx", "-o", int8)
    assert res.exit_code == 0, res.stderr
    assert read_metadata(onnx.load(str(int8)))["entry"]["spec"] == "mynet.py:build"
    _one_line_error(cli("verify", int8), 2, "--model mynet.py:build")
    monkeypatch.chdir(user_dir)
    res = cli("verify", int8, "--model", "mynet.py:build")
    assert res.exit_code == 0, res.stderr


def test_conv_signatures_survive_what_quantize_does_to_a_graph(user_dir):
    """Grouped convs merged to wider groups keep (out, in, kh, kw, grouped); a lone BatchNorm rewritten as a 1x1
    depthwise Conv is the one extra Conv the architecture check allows."""
    from edgekit.models.architecture import onnx_conv_signatures
    from edgekit.quantize.rewrites import merge_conv_groups

    model = onnx.load(str(user_dir / "mynet.onnx"))
    before, unknown = onnx_conv_signatures(model)
    assert merge_conv_groups(model, min_group_channels=8)  # 4 groups of 4 channels -> 2 groups of 8
    after, _ = onnx_conv_signatures(model)
    assert after == before and unknown == 0


def test_timm_model(cli, tmp_path):
    pytest.importorskip("timm", reason="timm is an optional extra: pip install 'edgekit[timm]'")
    out = tmp_path / "r.onnx"
    res = cli("export", "timm:resnet18", "--input-size", SIZE, "--num-classes", "4", "-o", out)
    assert res.exit_code == 0, res.stderr
    meta = read_metadata(onnx.load(str(out)))
    assert meta["source"] == "timm" and meta["entry"] == {"kind": "timm", "spec": "timm:resnet18", "factory": "resnet18"}
    assert "timm" in meta["versions"]
    res = cli("verify", out, "--model", "timm:resnet18")
    assert res.exit_code == 0, res.stderr
    _one_line_error(cli("verify", out, "--model", "timm:resnet34"), 2, "timm:resnet18")


def test_without_timm_it_is_exit_3_with_the_install_line(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm -> ImportError
    err = _one_line_error(cli("export", "timm:resnet50d", "--input-size", SIZE, "-o", tmp_path / "x.onnx"), 3)
    assert "pip install 'timm==1.0.31'" in err and files_in(tmp_path) == []


def test_a_torchvision_regnet_is_not_resnet18(cli, tmp_path):
    """The issue's case: a regnet file verified with --model resnet18 was exit 1 with max abs 5.1 and no hint."""
    from tests.foreign_models import torchvision_torchscript

    regnet = torchvision_torchscript(tmp_path, "regnet_y_400mf", size=64)
    _one_line_error(cli("verify", regnet, "--model", "resnet18"), 2, f"{regnet} is not resnet18", "convolutions")


def test_a_zoo_file_refuses_a_user_module_as_its_model(cli, exported, user_dir):
    zoo = exported("textbook_resnet18", 32).path
    _one_line_error(cli("verify", zoo, "--model", f"{user_dir / 'mynet.py'}:build"), 2, "textbook_resnet18", "not")


def test_verify_runs_no_code_of_the_module_it_does_not_trust(cli, tmp_path, monkeypatch):
    """The module leaves a marker when imported: verify without --model, or with a source whose sha256 differs,
    must not import it."""
    source = tmp_path / "marked.py"
    source.write_text(BAD + "\nfrom pathlib import Path\nPath(__file__).with_suffix('.imported').touch()\n")
    marker = tmp_path / "marked.imported"
    monkeypatch.chdir(tmp_path)
    assert cli("export", "marked.py:fixed", "--input-size", SIZE, "-o", "m.onnx").exit_code == 0
    assert marker.exists()
    marker.unlink()
    _one_line_error(cli("verify", "m.onnx"), 2, "marked.py:fixed")
    source.write_text(source.read_text() + "# edited\n")
    _one_line_error(cli("verify", "m.onnx", "--model", "marked.py:fixed"), 2, "sha256")
    assert not marker.exists()


def test_lazy_modules_get_their_shapes_under_the_seed(cli, tmp_path, monkeypatch):
    (tmp_path / "lazy.py").write_text(textwrap.dedent('''
        from torch import nn

        def build(num_classes=10):
            return nn.Sequential(nn.LazyConv2d(8, 3, padding=1), nn.LazyBatchNorm2d(), nn.ReLU(), nn.Flatten(),
                                 nn.LazyLinear(num_classes))
    '''))
    monkeypatch.chdir(tmp_path)
    res = cli("export", "lazy.py:build", "--input-size", SIZE, "--num-classes", "3", "-o", "lazy.onnx")
    assert res.exit_code == 0, res.stderr
    assert "1 BatchNorm layer's statistics and the last Linear layer's scale settled" in " ".join(res.stdout.split())
    res = cli("verify", "lazy.onnx", "--model", "lazy.py:build")
    assert res.exit_code == 0, res.stderr


def test_without_input_size_a_user_model_is_exported_at_224_and_says_so(cli, tmp_path, monkeypatch):
    (tmp_path / "bad.py").write_text(BAD)
    monkeypatch.chdir(tmp_path)
    res = cli("export", "bad.py:fixed", "-o", "x.onnx")
    assert res.exit_code == 0, res.stderr
    assert "no --input-size: exported at 224 px" in " ".join(res.stdout.split())
    assert read_metadata(onnx.load(str(tmp_path / "x.onnx")))["input_size"] == 224
