"""A user's own PyTorch model: `path/to/file.py:factory`, `package.module:factory` or `timm:NAME`.

The factory is any callable returning an nn.Module (a function or a class); it gets `num_classes=N` when it
takes that argument. Seeded random weights are drawn by the factory itself under torch.manual_seed(seed), then
settled on the bundled photos as the zoo's are (registry.create_model): every BatchNorm's statistics, and the
last Linear layer's scale, where the model has them. Importing a file executes it: export does so because the
user named it; verify only when the user names it again (--model), after checking its sha256 (reference.py).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from edgekit.core.errors import BadInput, EnvironmentUnavailable, one_line
from edgekit.core.files import sha256_file

USER_DEFAULT_INPUT_SIZE = 224  # a factory says nothing about its input size: --input-size, else 224
TIMM_PIN = "timm==1.0.31"
TIMM_INSTALL = f"pip install '{TIMM_PIN}'  (or: pip install 'edgekit[timm]')"


@dataclass(frozen=True)
class UserModel:
    """What export and verify need of a user's entry point (the zoo's ModelSpec, for a user's module)."""

    kind: str  # file | module | timm
    spec: str  # as the user gave it
    factory: str  # the callable's name (timm: the model name)
    path: Path | None = None  # the imported source file (file, module)
    sha256: str | None = None  # of that file
    family: str = "user"  # the built module's class name, lowercased, once known
    default_input_size: int = USER_DEFAULT_INPUT_SIZE

    @property
    def name(self) -> str:
        return self.spec

    @property
    def source(self) -> str:
        return "timm" if self.kind == "timm" else "user"

    @property
    def stem(self) -> str:
        """exports/<stem>.onnx by default."""
        if self.kind == "timm":
            return f"timm_{self.factory}".replace("/", "_").replace(".", "_")
        base = self.path.stem if self.path is not None and self.kind == "file" else self.spec.split(":")[0].split(".")[-1]
        return f"{base}_{self.factory.replace('.', '_')}"

    def entry(self) -> dict:
        """The metadata's `entry` object (onnxfile/metadata_schema.py EntryPoint)."""
        out = {"kind": self.kind, "spec": self.spec, "factory": self.factory}
        if self.path is not None:
            out["path"] = str(self.path)
            out["sha256"] = self.sha256
        return out


def is_user_spec(text: str) -> bool:
    """A user's entry point rather than a zoo name: it has a ':', names a .py file or a path."""
    return ":" in text or text.endswith(".py") or "/" in text or os.sep in text


def parse_user_spec(text: str) -> UserModel:
    """`file.py:factory`, `pkg.module:factory` or `timm:NAME`, checked (the file exists and is read for its
    sha256; a module is found without importing it); nothing is executed here."""
    text = text.strip()
    if text.startswith("timm:"):
        name = text[len("timm:"):]
        if not name:
            raise BadInput("timm: needs a model name, e.g. timm:resnet50d")
        return UserModel(kind="timm", spec=text, factory=name, family=name.split(".")[0])
    if ":" not in text:
        path = Path(text)
        if text.endswith(".py") and path.is_file():
            found = _callables_in(path)
            listed = ", ".join(f"{text}:{name}" for name in found[:6]) if found else "none at the top level"
            raise BadInput(f"{text} names no factory: add ':' and the function that returns the model ({listed})")
        raise BadInput(f"{text} is not a file", hint="give path/to/file.py:factory")
    where, factory = text.rsplit(":", 1)
    if not factory or not all(part.isidentifier() for part in factory.split(".")):
        raise BadInput(f"{text}: {factory!r} is not a Python name", hint="give file.py:factory or package.module:factory")
    if where.endswith(".py") or "/" in where or os.sep in where:
        path = Path(where)
        if not path.is_file():
            raise BadInput(f"{where} is not a file", hint="give path/to/file.py:factory")
        resolved = path.resolve()
        return UserModel(kind="file", spec=text, factory=factory, path=resolved, sha256=sha256_file(resolved))
    if not all(part.isidentifier() for part in where.split(".")):
        raise BadInput(f"{text}: {where!r} is neither a .py file nor a module name")
    with _cwd_on_path():
        try:
            found = importlib.util.find_spec(where)
        except (ImportError, ValueError) as exc:  # a parent package that fails to import
            raise BadInput(f"{where} cannot be imported: {type(exc).__name__}: {one_line(exc, 300)}") from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise BadInput(f"no module named {where} (looked in the current folder and on sys.path)",
                       hint="give path/to/file.py:factory")
    origin = Path(found.origin).resolve()
    return UserModel(kind="module", spec=text, factory=factory, path=origin, sha256=sha256_file(origin))


def _callables_in(path: Path) -> list[str]:
    """Public top-level functions and classes of a source file, read with ast (nothing runs)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    return [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")]


@contextlib.contextmanager
def _cwd_on_path(*extra: Path):
    added = [str(p) for p in (*extra, Path.cwd()) if str(p) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for p in added:
            with contextlib.suppress(ValueError):
                sys.path.remove(p)


def _import_source(user: UserModel):
    """The user's module, imported (file: under a private name, its folder on sys.path while it runs)."""
    where = user.spec.rsplit(":", 1)[0]
    try:
        if user.kind == "file":
            name = f"edgekit_user_{user.sha256[:16]}_{user.path.stem}"
            if name in sys.modules:
                return sys.modules[name]
            spec = importlib.util.spec_from_file_location(name, user.path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                with _cwd_on_path(user.path.parent):
                    spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                raise
            return module
        with _cwd_on_path():
            return importlib.import_module(where)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SyntaxError, ImportError, SystemExit, anything its top level raises
        raise BadInput(f"{where} failed to import: {type(exc).__name__}: {one_line(exc, 300)}") from None


def _factory_of(user: UserModel, module):
    target = module
    for part in user.factory.split("."):
        target = getattr(target, part, None)
        if target is None:
            break
    if target is None or not callable(target):
        where = user.spec.rsplit(":", 1)[0]
        found = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
        what = "no" if target is None else "a non-callable"
        raise BadInput(f"{where} has {what} {user.factory!r}; callables defined in it: {', '.join(found) or 'none'}")
    return target


def _takes_num_classes(factory) -> bool:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "num_classes" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def instantiate(user: UserModel, num_classes: int | None, seed: int, size: int = USER_DEFAULT_INPUT_SIZE):
    """(module in eval mode, whether num_classes was passed): the factory called under torch.manual_seed(seed);
    lazy modules are given their shapes by one forward at `size`, under the same seed."""
    import torch
    from torch import nn

    if user.kind == "timm":
        create, passes = _timm_factory(user.factory), True
    else:
        factory = _factory_of(user, _import_source(user))
        passes = num_classes is not None and _takes_num_classes(factory)
        create = (lambda **kw: factory(**kw))
    kwargs = {"num_classes": num_classes} if passes and num_classes is not None else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = create(**kwargs)
            if isinstance(model, nn.Module):
                from edgekit.models.blocks import materialize

                materialize(model, size=size)
        except (BadInput, EnvironmentUnavailable):
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise BadInput(f"{user.spec}: the factory raised {type(exc).__name__}: {one_line(exc, 300)}") from None
    if not isinstance(model, nn.Module):
        raise BadInput(f"{user.spec} returned {_article(type(model).__name__)}, not a torch.nn.Module",
                       hint="the factory must return the model")
    return model.eval(), bool(kwargs)


def _timm_factory(name: str):
    try:
        import timm
    except ImportError:
        raise EnvironmentUnavailable(f"timm:{name} needs timm, which is not installed", hint=TIMM_INSTALL) from None
    if not timm.is_model(name):
        import difflib

        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        raise BadInput(f"timm has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else ""),
                       hint="see timm.list_models()")
    return lambda **kw: timm.create_model(name, pretrained=False, **kw)  # never the network


def timm_input_size(name: str) -> int | None:
    """timm's own input size for a model (its pretrained config), when square."""
    try:
        import timm
    except ImportError:
        return None
    try:
        _c, h, w = timm.get_pretrained_cfg(name).input_size
    except Exception:
        return None
    return int(h) if h == w else None


def with_defaults(user: UserModel) -> UserModel:
    """timm models bring their own input size."""
    if user.kind == "timm":
        size = timm_input_size(user.factory)
        if size:
            from dataclasses import replace

            return replace(user, default_input_size=size)
    return user


def build_user_model(user: UserModel, num_classes: int | None, weights: Path | None, pretrained: bool, seed: int,
                     input_size: int | None, random_init: str, strict_classes: bool = True):
    """(model in eval mode, WeightsSource) for a user's entry point: seeded random weights (drawn twice to be sure
    the factory is reproducible, then settled as the zoo's), or a weights file loaded strictly. `strict_classes`
    False (a reference for verify): a factory that gives other classes than `num_classes` is left to the
    architecture check, which words it as "FILE is not MODEL"."""
    import torch

    from edgekit.models.weights import WeightsSource, apply_state_dict, load_state_dict_file, settle_random_init

    if pretrained:
        raise BadInput(f"--pretrained is for the zoo's torchvision models; {user.spec} has none here (no network)",
                       hint="pass --weights FILE with your trained state_dict")
    if num_classes is not None and num_classes < 1:
        raise BadInput(f"--num-classes must be at least 1, got {num_classes}")
    size = input_size or user.default_input_size
    if weights is not None:
        state = load_state_dict_file(Path(weights))
        model, _ = instantiate(user, num_classes, seed, size)
        inferred = _rows(state, model)
        if num_classes is not None and inferred is not None and num_classes != inferred:
            raise BadInput(f"{weights} has {inferred} classes but --num-classes {num_classes} was given",
                           hint="drop --num-classes to use the file's")
        if num_classes is None and inferred is not None and _rows(model.state_dict(), model) != inferred:
            model, _ = instantiate(user, inferred, seed, size)  # a factory without num_classes: the strict load says why
        apply_state_dict(model, state, str(weights), user.spec)
        probe_forward(user, model, size, num_classes if strict_classes else None)
        source = WeightsSource(kind="file", path=str(Path(weights).resolve()), sha256=sha256_file(Path(weights)))
        return model.eval(), source
    model, _ = instantiate(user, num_classes, seed, size)
    again, _ = instantiate(user, num_classes, seed, size)
    first, second = model.state_dict(), again.state_dict()
    if first.keys() != second.keys() or any(not torch.equal(first[k], second[k]) for k in first):
        raise BadInput(
            f"{user.spec} gives different weights on two calls with seed {seed}: it draws from a random generator "
            "torch.manual_seed does not set, so its reference could not be rebuilt",
            hint="pass --weights FILE (torch.save(model.state_dict(), 'w.pt'))",
        )
    del again
    probe_forward(user, model, size, num_classes if strict_classes else None)
    from edgekit.data.images import DEFAULT_CALIBRATION_DIR, load_image_folder
    from edgekit.data.preprocessing import Preprocessing

    photos = load_image_folder(DEFAULT_CALIBRATION_DIR, Preprocessing.for_input_size(size)).tensors
    try:
        settle_random_init(model, photos)
    except Exception as exc:
        raise BadInput(f"{user.spec} fails on the bundled photos at {size} px: {type(exc).__name__}: "
                       f"{one_line(exc, 300)}") from None
    return model.eval(), WeightsSource(kind="random", seed=seed, init=random_init)


def _rows(state: dict, model) -> int | None:
    """Rows of the classifier (the model's last Linear) in `state`."""
    from edgekit.models.registry import classifier_weight_key

    try:
        key = classifier_weight_key(model)
    except ValueError:
        return None
    tensor = state.get(key)
    return int(tensor.shape[0]) if tensor is not None and tensor.ndim == 2 else None


def probe_forward(user: UserModel, model, size: int, num_classes: int | None, channels: int = 3) -> int:
    """One forward on zeros: the model must take a (1, C, size, size) batch and give one (1, classes) tensor.
    Returns the classes."""
    import torch
    from torch import nn

    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else channels
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, channels, size, size))
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise BadInput(f"{user.spec} fails on a 1x{channels}x{size}x{size} input: {type(exc).__name__}: "
                       f"{one_line(exc, 300)}", hint="is --input-size right?") from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        what = f"a {tuple(out.shape)} tensor" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"
        raise BadInput(f"{user.spec} returns {what}; edgekit exports a classifier with one (batch, classes) output")
    classes = int(out.shape[1])
    if num_classes is not None and classes != num_classes:
        raise BadInput(f"{user.spec} gives {classes} classes, not the --num-classes {num_classes} asked for",
                       hint="its factory takes no num_classes argument: drop --num-classes or add the argument")
    return classes


def user_export_facts(spec, model, source, notes: list[str]) -> dict:
    """For a user's own model: its family (the module's class name, lowercased), the metadata's entry, timm's
    version, and a note saying what the seeded-random settling changed. {} for a zoo model."""
    from torch import nn

    if not isinstance(spec, UserModel):
        return {}
    facts = {"family": type(model).__name__.lower(), "entry": spec.entry()}
    if spec.kind == "timm":
        import timm

        facts["versions"] = {"timm": timm.__version__}
    if source.kind == "random":
        norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        linear = any(isinstance(m, nn.Linear) for m in model.modules())
        layers = "layer's" if norms == 1 else "layers'"
        settled = [f"{norms} BatchNorm {layers} statistics" if norms else "",
                   "the last Linear layer's scale" if linear else ""]
        said = " and ".join(p for p in settled if p)
        notes.append(f"seeded random weights drawn by {spec.spec} under torch.manual_seed({source.seed}); "
                     + (f"{said} settled on the bundled photos" if said else "nothing to settle (no BatchNorm, no Linear)"))
    return facts


def _article(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
