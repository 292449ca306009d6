"""An accuracy budget for int8, and the fp32 fallback that meets it.

The budget is a top-1 drop on a labelled folder (`--dataset DIR --max-drop P`), or, without labels,
the held-out gates (`--min-agreement`, `--min-sqnr`). When the full-int8 file misses it, the nodes
that add the most error (per-layer analysis, edgekit.layer_error) are kept in fp32, the fewest that meet
the budget: all the candidates first (when even that misses, nothing will), then 1, 2, 4, ... of the
ranked nodes until one count passes, then a bisection below it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.judge.compare import OutputMetrics, Tolerance, compare_outputs
from edgekit.core.errors import BadInput
from edgekit.runtimes.runners import run_onnx

MAX_TRIALS = 12  # quantize_static runs the fallback may make (each recalibrates)


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
        from edgekit.judge.targets import KEEP_FLOAT_SESSION, merge_session_configs

        config = merge_session_configs(self.session_config if session_config is ... else session_config)
        if fp32_nodes or self.excluded:  # float nodes stay float only with ORT's re-quantizing optimizer off
            config = merge_session_configs(config, KEEP_FLOAT_SESSION)
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

    ranking: list[dict]  # node, op type, the noise it adds, its SQNR (from the per-layer analysis)
    trials: list[Trial] = field(default_factory=list)
    chosen: Trial | None = None
    seconds: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)  # fp32 / full int8 / mixed, interleaved p50

    def to_dict(self) -> dict:
        return {
            "ranking": self.ranking, "trials": [t.to_dict() for t in self.trials],
            "chosen_fp32_nodes": self.chosen.fp32_nodes if self.chosen else None,
            "seconds": round(self.seconds, 2), "latency_ms": self.latency_ms,
        }


def search(
    ranking: list[str], make: Callable[[list[str]], Path], measure: Callable[[Path, list[str]], Trial],
    budget: Budget, on_stage: Callable[[str], None], max_trials: int = MAX_TRIALS,
) -> tuple[Trial | None, list[Trial]]:
    """The fewest leading nodes of `ranking` kept in fp32 that meet the budget (None when none does)."""
    trials: list[Trial] = []
    tried: dict[int, Trial] = {}

    def attempt(k: int) -> Trial:
        if k not in tried:
            on_stage(f"fp32 fallback: {k} node(s) kept in fp32")
            tried[k] = measure(make(ranking[:k]), ranking[:k])
            trials.append(tried[k])
        return tried[k]

    if not ranking:
        return None, trials
    # the most the fallback may keep in fp32 first: when even that misses, stop after one trial
    if not attempt(len(ranking)).passed(budget):
        return None, trials
    low, high, k = 0, len(ranking), 1
    while k < high and len(tried) < max_trials:
        if attempt(k).passed(budget):
            high = k
            break
        low, k = k, 2 * k
    while high - low > 1 and len(tried) < max_trials:  # the smallest passing count in (low, high]
        mid = (low + high) // 2
        if attempt(mid).passed(budget):
            high = mid
        else:
            low = mid
    return tried[high], trials
