"""An accuracy budget for int8, and the fp32 fallback that meets it.

The budget is a top-1 drop on a labelled folder (`--dataset DIR --max-drop P`), or, without labels,
the held-out gates (`--min-agreement`, `--min-sqnr`). When the full-int8 file misses it, QDQ groups are
reverted to fp32 inside that one quantized graph until it meets it (quantize/fallback.py); the per-group
sensitivities that order them are cached here (SensitivityCache), beside the activation ranges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.judge.compare import OutputMetrics, Tolerance, compare_outputs
from edgekit.core.errors import BadInput
from edgekit.runtimes.runners import run_onnx

RANK_SAMPLES = 300  # the held-out samples where int8 and fp32 disagree most, on which groups are ranked (NNCF's)
MAX_ENTRY_BYTES = 16 * 1024 * 1024  # a sensitivity cache entry is read whole: bounded first


@dataclass
class LabelledSet:
    """Preprocessed images of an ImageFolder tree (one sub-folder per class, sorted names = labels)."""

    folder: Path
    classes: list[str]
    tensors: np.ndarray
    labels: np.ndarray


def load_labelled(folder: Path, preprocessing, num_classes: int | None) -> LabelledSet:
    """Every image of a labelled folder through the model's preprocessing (decoded once, cached)."""
    from edgekit.data.images import load_image_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise BadInput(f"--dataset {folder} is not a folder", hint="one sub-folder of images per class (ImageFolder)")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise BadInput(f"--dataset {folder} has no class sub-folders", hint="one sub-folder of images per class (ImageFolder)")
    if num_classes is not None and len(classes) > num_classes:
        raise BadInput(
            f"--dataset {folder} has {len(classes)} classes but the model has {num_classes} outputs",
            hint="point to a folder with at most as many class sub-folders as the model has classes",
        )
    arrays, labels = [], []
    for label, name in enumerate(classes):
        images = load_image_folder(folder / name, preprocessing)
        arrays.append(images.tensors)
        labels.append(np.full(len(images), label))
    return LabelledSet(folder, classes, np.concatenate(arrays), np.concatenate(labels))


@dataclass
class Budget:
    """What an int8 file must reach against its fp32 parent."""

    max_drop: float | None  # top-1 points on `dataset`
    dataset: LabelledSet | None
    tolerance: Tolerance  # held-out gates (always applied)
    gates: str = ""  # which default gates applied and why (said when the budget is missed)

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None and self.dataset is not None:
            parts.append(f"top-1 drop <= {self.max_drop:g} points on {self.dataset.folder} ({len(self.dataset.labels)} images)")
        if self.tolerance.min_top1_agreement is not None:
            parts.append(f"held-out top-1 agreement >= {self.tolerance.min_top1_agreement:.0%}")
        if self.tolerance.min_sqnr_db is not None:
            parts.append(f"held-out SQNR >= {self.tolerance.min_sqnr_db:g} dB")
        return ", ".join(parts)


@dataclass
class Trial:
    """One int8 file measured against the budget."""

    fp32_nodes: list[str]
    holdout: OutputMetrics
    fp32_top1: float | None = None
    int8_top1: float | None = None
    path: Path | None = None  # the file measured

    @property
    def drop(self) -> float | None:
        return None if self.fp32_top1 is None else self.fp32_top1 - self.int8_top1

    def passed(self, budget: Budget) -> bool:
        if not self.holdout.passed:
            return False
        return budget.max_drop is None or self.drop is None or self.drop <= budget.max_drop + 1e-9

    def describe(self) -> str:
        text = f"held-out SQNR {self.holdout.sqnr_db:.1f} dB, top-1 agreement {self.holdout.top1_agreement:.1%}"
        if self.drop is not None:
            text += f", top-1 {self.int8_top1:.2f} % vs fp32 {self.fp32_top1:.2f} % (drop {self.drop:+.2f} points)"
        return text

    def to_dict(self) -> dict:
        return {"fp32_nodes": self.fp32_nodes, "holdout_sqnr_db": self.holdout.sqnr_db,
                "holdout_top1_agreement": self.holdout.top1_agreement, "fp32_top1": self.fp32_top1,
                "int8_top1": self.int8_top1, "drop_points": self.drop, "holdout_failures": self.holdout.failures}


class Measure:
    """Measures int8 files against the fp32 parent on the held-out images (and the labelled set)."""

    def __init__(self, fp32: Path, holdout: np.ndarray, output_name: str, batch: int | None, budget: Budget,
                 session_config: dict[str, str] | None, excluded: bool = False, device: str | None = None):
        self.holdout, self.output_name, self.batch, self.budget = holdout, output_name, batch, budget
        self.device = device  # the int8 runs' CPU (runtimes.devices); the fp32 reference runs here
        self.session_config = session_config
        self.excluded = excluded
        self.fp32_holdout = run_onnx(fp32, holdout, batch)
        self.fp32_top1 = None
        if budget.dataset is not None:
            self.fp32_top1 = self._top1(run_onnx(fp32, budget.dataset.tensors, batch))

    def _top1(self, logits: np.ndarray) -> float:
        return 100.0 * float(np.mean(logits.reshape(len(logits), -1).argmax(1) == self.budget.dataset.labels))

    def __call__(self, int8: Path, fp32_nodes: list[str], session_config: dict[str, str] | None = ...,
                 dataset: bool = True) -> Trial:
        """The file on the held-out images (and, with `dataset`, its top-1 on the labelled set); `session_config`
        overrides the gated kernels (None: ORT's defaults)."""
        from edgekit.runtimes.factory import session_options

        # the gated kernels, from the runner factory; float nodes stay float only with ORT's re-quantizing pass off
        config = session_options(None, keep_float=bool(fp32_nodes or self.excluded),
                                 extra=self.session_config if session_config is ... else session_config)
        out = run_onnx(int8, self.holdout, self.batch, config or None, device=self.device)
        trial = Trial(list(fp32_nodes), compare_outputs(self.fp32_holdout, out, self.output_name, self.budget.tolerance),
                      path=Path(int8))
        if dataset and self.budget.dataset is not None:
            trial.fp32_top1 = self.fp32_top1
            trial.int8_top1 = self._top1(run_onnx(int8, self.budget.dataset.tensors, self.batch, config, device=self.device))
        return trial


@dataclass
class Fallback:
    """What the fallback tried and what it kept in fp32."""

    ranking: list[dict]  # node, its group ("group N"), the ranking subset's SQNR with that group alone in fp32
    trials: list[Trial] = field(default_factory=list)
    chosen: Trial | None = None
    seconds: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # fp32 / full int8 / mixed, interleaved p50
    groups: int = 0  # QDQ groups of the full int8 file
    reverted: int = 0  # of them back in fp32 in the chosen file
    steps: list = field(default_factory=list)  # Step, in order
    notes: list[str] = field(default_factory=list)
    cached: bool = False  # the ranking came from the sensitivity cache
    runs: dict = field(default_factory=dict)  # session runs: ranking ("rank"), the bound ("bound"), steps ("steps")
    bound: Trial | None = None  # the most the fallback can revert (every group but one), measured before the walk
    bound_groups: list[int] = field(default_factory=list)  # the groups in fp32 in that file
    bound_estimate_db: float | None = None  # the ranking's estimate of its SQNR (measured only when near the gate)
    bound_met: bool | None = None  # that file met the budget
    bound_stopped: bool = False  # it missed the SQNR gate: no group was walked

    def to_dict(self) -> dict:
        return {
            "ranking": self.ranking, "trials": [t.to_dict() for t in self.trials],
            "chosen_fp32_nodes": self.chosen.fp32_nodes if self.chosen else None,
            "seconds": round(self.seconds, 2), "latency_ms": self.latency_ms, "groups": self.groups,
            "reverted_groups": self.reverted, "steps": [s.to_dict() for s in self.steps],
            "ranking_cached": self.cached, "runs": self.runs,
            "bound": {"groups": self.bound_groups, "estimate_db": self.bound_estimate_db, "measured": self.bound is not None,
                      "met": self.bound_met, "stopped": self.bound_stopped,
                      **(self.bound.to_dict() if self.bound is not None else {})} if self.bound_groups else None,
        }

@dataclass
class Step:
    """One step of the fallback: a QDQ group reverted to fp32, the held-out metric after it, kept or undone."""

    group: int
    nodes: list[str]  # the group's fp32 node names (quantize's --exclude)
    sqnr_db: float
    trial: Trial
    verdict: str  # "kept", "kept (one worsening step tolerated)", "undone", "met the budget"

    def to_dict(self) -> dict:
        return {"group": self.group, "nodes": self.nodes, "holdout_sqnr_db": self.sqnr_db, "verdict": self.verdict,
                "drop_points": self.trial.drop}


class SensitivityCache:
    """Per-group sensitivities kept beside the activation ranges: `scores`, the ranking subset's SQNR with that group
    alone back in fp32, and `alone`, the SQNR that subset would have with that group alone left in int8 (its error
    taken as the change its revert makes). Kept beside the
    activation ranges (quantize/ranges.py): advisory (a missing or unusable entry is computed again and said in a
    note), validated (a JSON object naming exactly the groups asked for, finite numbers), written atomically.
    The key is the sha256 of everything the scores depend on: the int8 file, its fp32 parent, the ranking samples,
    the device and the session options it runs with, and ONNX Runtime's version."""

    def __init__(self, store: Path | None, parts: list[bytes]):
        import hashlib

        import onnxruntime

        digest = hashlib.sha256()
        for part in [*parts, onnxruntime.__version__.encode()]:
            digest.update(hashlib.sha256(part).digest())
        self.key = digest.hexdigest()
        self.path = Path(store) / f"{self.key}.sensitivity.json" if store is not None else None
        self.note: str | None = None

    TABLES = ("scores", "alone")

    def load(self, groups: list[int]) -> dict[str, dict[int, float]] | None:
        """{table: {group: dB}} for every table of TABLES, or None (nothing stored, or unusable: said in `note`)."""
        import json

        if self.path is None or not self.path.is_file():
            return None
        try:
            if self.path.stat().st_size > MAX_ENTRY_BYTES:
                raise ValueError(f"over {MAX_ENTRY_BYTES >> 20} MiB")
            data = json.loads(self.path.read_text(encoding="utf-8"))
            out = {}
            for table in self.TABLES:
                scores = data[table] if isinstance(data, dict) else None
                if not isinstance(scores, dict) or sorted(scores) != sorted(str(g) for g in groups):
                    raise ValueError(f"not the {table} of this file's groups")
                out[table] = {int(g): float(v) for g, v in scores.items()}
                if any(v != v for v in out[table].values()):
                    raise ValueError("a score is not a number")
            return out
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
            self.note = f"sensitivity cache entry {self.path} is unusable ({exc}); the groups were ranked again"
            return None

    def save(self, tables: dict[str, dict[int, float]]) -> None:
        import json

        from edgekit.onnxfile.artifact import write_atomic

        if self.path is None:
            return
        text = json.dumps({t: {str(g): float(v) for g, v in tables[t].items()} for t in self.TABLES}).encode()
        write_atomic(self.path, lambda f: f.write(text))
