"""White-box attacks on a detector, through its own preprocessing (Adversarial Robustness Toolbox).

The attacks themselves (FGSM, PGD under L-infinity) are the Adversarial Robustness Toolbox's
(ART, LF AI & Data; ``FastGradientMethod`` and ``ProjectedGradientDescent``, which runs in PyTorch
for a ``PyTorchClassifier``). ART was chosen over torchattacks, whose wheels require torchvision
and pin requests to 2.25, and over writing PGD ourselves. What is ours is what makes the result
the one a real attacker gets:

- the perturbation lives in the image the user would upload. :class:`UploadModel` is the detector
  as a function of that image's pixels in [0, 1] at its own size: the checkpoint's preprocessing
  (resize of the short side with antialiased bicubic, centre crop, normalisation; or the crops
  of the ``crop``/``tiles`` views and their aggregation) written in differentiable torch, then
  the model. torch's antialiased bicubic is the same filter as Pillow's (within 1 grey level,
  tests/test_attacks.py);
- every adversarial image is rounded to 8 bits inside the budget (a pixel never moves more than
  ``eps`` grey levels), saved as PNG, reloaded and rescored through the ordinary pipeline
  (:mod:`miragedet.evaluation.adversarial`), so the reported success is measured, not assumed.

``eps`` is in grey levels (1/255 steps): ``pgd:eps=2,steps=10`` moves no pixel by more than 2 of
255. The PGD step defaults to 2.5 * eps / steps (Madry et al. 2018, "Towards Deep Learning
Models Resistant to Adversarial Attacks"). ``target=real`` attacks only images of other classes,
towards the real class: the attacker who wants an AI image to pass as a photograph. Without a
target, every correctly classified image is pushed away from its class.

:class:`Adversary` makes adversarial examples for training (``train --adv-train``): the same
attacks in the model's input space, on the current prompts, for a share of each batch.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("fgsm", "pgd")
#: ``--attack sweep``: FGSM and the targeted (fake to real) 10-step PGD at 1, 2, 4 and 8 grey
#: levels: the curve of robust accuracy against eps for the cheap and the strong attacker.
SWEEP = tuple(
    [f"fgsm:eps={e}" for e in (1, 2, 4, 8)]
    + [f"pgd:eps={e},steps=10,target=real" for e in (1, 2, 4, 8)]
)
INSTALL = "pip install 'miragedet[attacks]'  (the Adversarial Robustness Toolbox)"


@dataclass(frozen=True)
class Attack:
    """One attack: ``kind`` (fgsm | pgd), L-infinity budget ``eps`` in grey levels (1/255),
    ``steps`` and ``step`` (grey levels per step) for PGD, an optional ``target`` class name,
    ``restarts`` random starts (PGD; ART's num_random_init) drawn from ``seed``."""

    kind: str
    eps: float
    steps: int = 10
    step: float | None = None
    target: str | None = None
    restarts: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"attack kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if self.eps < 0 or self.eps > 255:
            raise ValueError(f"eps is in grey levels (0-255), got {self.eps}")
        if self.steps < 1 or self.restarts < 0 or (self.step is not None and self.step <= 0):
            raise ValueError("steps must be >= 1, restarts >= 0 and step > 0")

    @classmethod
    def parse(cls, text: str) -> Attack:
        """``fgsm:eps=2``, ``pgd:eps=4,steps=10``, ``pgd:eps=8,steps=20,target=real``."""
        kind, _, rest = text.strip().partition(":")
        options: dict[str, Any] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, _, value = part.partition("=")
            if key in ("eps", "step"):
                options[key] = float(value)
            elif key in ("steps", "restarts", "seed"):
                options[key] = int(value)
            elif key == "target" and value:
                options[key] = value
            else:
                raise ValueError(
                    f"attack {text!r}: unknown option {part!r} (eps, steps, step, target, "
                    "restarts, seed)"
                )
        if "eps" not in options:
            raise ValueError(f"attack {text!r}: give its budget, e.g. {kind or 'pgd'}:eps=2")
        if kind == "fgsm" and any(k in options for k in ("steps", "step", "restarts")):
            raise ValueError(f"attack {text!r}: FGSM is one step (no steps/step/restarts)")
        return cls(kind=kind, **options)

    @property
    def name(self) -> str:
        return f"{self.kind}:" + ",".join([f"eps={self.eps:g}", *self._options()])

    @property
    def family(self) -> str:
        """The attack without its budget: the line it belongs to in a plot against eps."""
        return ",".join([self.kind.upper(), *self._options()])

    def _options(self) -> list[str]:
        parts = []
        if self.kind == "pgd":
            parts.append(f"steps={self.steps}")
            if self.step is not None:
                parts.append(f"step={self.step:g}")
            if self.restarts:
                parts.append(f"restarts={self.restarts}")
        if self.target:
            parts.append(f"target={self.target}")
        return parts

    @property
    def step_size(self) -> float:
        """Grey levels per PGD step (FGSM: the whole budget at once)."""
        if self.kind == "fgsm":
            return self.eps
        return self.step if self.step is not None else 2.5 * self.eps / self.steps

    def target_index(self, classes: list[str]) -> int | None:
        """The class the attack pushes towards (``real`` is always class 0), or None."""
        if self.target is None:
            return None
        if self.target.lower() == "real":
            return 0
        lowered = [c.lower() for c in classes]
        if self.target.lower() not in lowered:
            raise ValueError(f"attack target {self.target!r} is not a class of {classes}")
        return lowered.index(self.target.lower())


def parse_attacks(specs: list[str] | tuple[str, ...]) -> list[Attack]:
    """Attack specs (repeatable ``--attack``); ``sweep`` expands to :data:`SWEEP`."""
    out: list[Attack] = []
    for spec in specs:
        out += [Attack.parse(s) for s in SWEEP] if spec.strip() == "sweep" else [Attack.parse(spec)]
    return out


def require_art() -> None:
    """Raise a clear error when the attack library is not installed."""
    try:
        import art  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"attacks need the Adversarial Robustness Toolbox: {INSTALL}") from exc


# -- the detector as a function of the uploaded pixels ----------------------------------------


class UploadModel(nn.Module):
    """The detector's logits as a differentiable function of uploaded images (B, 3, H, W) in
    [0, 1], all of one size: the checkpoint's preprocessing in torch, then the model. With the
    crop/tiles views the tiles are cut as :mod:`miragedet.data.views` cuts them and their
    log-probabilities aggregated by the view's rule (returned as logits)."""

    def __init__(self, model: nn.Module, preprocess: Any, view: Any, size: tuple[int, int]) -> None:
        from ..data.views import tiled_size, view_boxes

        super().__init__()
        self.model, self.preprocess, self.view = model, preprocess, view
        width, height = size
        dtype = torch.float32
        self.register_buffer("mean", torch.tensor(preprocess.mean, dtype=dtype).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std, dtype=dtype).view(1, 3, 1, 1))
        self.resize_to: tuple[int, int] | None = None  # (width, height), before any cropping
        self.boxes: list[tuple[int, int, int, int]]
        tile = preprocess.image_size
        tiled = tiled_size(width, height, tile) if view.kind != "resize" else None
        if tiled is None:  # the resize view, or a sliver that the tiles view resizes alike
            self.resize_to = preprocess.resized_size(width, height)
            self.boxes = [preprocess.centre_box(*self.resize_to)]
        else:
            self.resize_to = None if tiled == (width, height) else tiled
            self.boxes = view_boxes(*tiled, tile, view)[0]
        self.aggregate = view.aggregate if view.kind != "resize" else None

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised model inputs (B * tiles, 3, S, S) of uploaded images ``x``."""
        if self.resize_to is not None and self.resize_to != (x.shape[-1], x.shape[-2]):
            width, height = self.resize_to
            x = F.interpolate(
                x, size=(height, width), mode="bicubic", antialias=True, align_corners=False
            ).clamp(0.0, 1.0)  # Pillow's bicubic clips to 0..255 too
        crops = [x[:, :, top:bottom, left:right] for left, top, right, bottom in self.boxes]
        pixels = torch.stack(crops, dim=1).flatten(0, 1)
        return (pixels - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(self.inputs(x)).logits.float()
        if self.aggregate is None:
            return logits
        log = F.log_softmax(logits, dim=-1).view(x.shape[0], len(self.boxes), -1)
        if self.aggregate == "max":
            worst = log[:, :, 0].argmin(dim=1)  # the tile least likely real
            return log[torch.arange(len(log)), worst]
        if self.aggregate == "top-k":
            from .tiles import TOP_K_SHARE

            k = max(1, math.ceil(TOP_K_SHARE * len(self.boxes)))
            picked = log[:, :, 0].topk(k, dim=1, largest=False).indices
            log = torch.gather(log, 1, picked[:, :, None].expand(-1, -1, log.shape[-1]))
        return log.mean(dim=1)


class InputModel(nn.Module):
    """The model's logits as a function of its input crops in [0, 1] (training's adversary)."""

    def __init__(self, model: nn.Module, preprocess: Any) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(preprocess.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(preprocess.std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std).logits.float()


@contextlib.contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """Within: no parameter of ``model`` wants a gradient (an attack's backward reaches only the
    input, never the .grad of a training step in progress) and the model is in eval mode."""
    wanted = [p for p in model.parameters() if p.requires_grad]
    training = model.training
    for p in wanted:
        p.requires_grad_(False)
    model.eval()
    try:
        yield
    finally:
        for p in wanted:
            p.requires_grad_(True)
        model.train(training)


@contextlib.contextmanager
def numpy_seed(seed: int) -> Iterator[None]:
    """Within: numpy's global generator seeded with ``seed`` (ART draws its random starts
    there); the caller's state is put back after."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _art_attack(classifier: Any, attack: Attack, batch_size: int) -> Any:
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent

    targeted = attack.target is not None
    if attack.kind == "fgsm":
        return FastGradientMethod(
            classifier, norm=np.inf, eps=attack.eps / 255, targeted=targeted, batch_size=batch_size
        )
    return ProjectedGradientDescent(
        classifier,
        norm=np.inf,
        eps=attack.eps / 255,
        eps_step=attack.step_size / 255,
        max_iter=attack.steps,
        targeted=targeted,
        num_random_init=attack.restarts,
        batch_size=batch_size,
        verbose=False,
    )


def _classifier(module: nn.Module, shape: tuple[int, ...], classes: int, device: Any) -> Any:
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model=module,
        loss=nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if torch.device(device).type == "cuda" else "cpu",
    )


def _goal(attack: Attack, labels: np.ndarray, classes: list[str]) -> np.ndarray:
    """ART's labels: the target class for a targeted attack, else the true class."""
    target = attack.target_index(classes)
    return np.full_like(labels, target) if target is not None else labels


def perturb(
    model: nn.Module,
    images: list[np.ndarray],
    labels: list[int] | np.ndarray,
    attack: Attack,
    preprocess: Any,
    view: Any,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Adversarial versions (HxWx3 uint8) of ``images`` (HxWx3 uint8, as decoded for scoring):
    each pixel within ``attack.eps`` grey levels of the original, after rounding to 8 bits.
    Images of one size are attacked together, ``batch_size`` at a time."""
    require_art()
    labels = np.asarray(labels, dtype=np.int64)
    out: list[np.ndarray | None] = [None] * len(images)
    if attack.eps == 0:
        return [image.copy() for image in images]
    device = next(model.parameters()).device
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        by_size.setdefault((image.shape[1], image.shape[0]), []).append(i)
    classes = list(model.classes)
    with frozen(model):
        for size, members in by_size.items():
            module = UploadModel(model, preprocess, view, size).to(device)
            classifier = _classifier(module, (3, size[1], size[0]), len(classes), device)
            x = np.stack([images[i] for i in members]).transpose(0, 3, 1, 2) / np.float32(255)
            with numpy_seed(attack.seed):
                adversarial = _art_attack(classifier, attack, batch_size).generate(
                    x.astype(np.float32), y=_goal(attack, labels[members], classes)
                )
            for i, array in zip(members, adversarial, strict=True):
                out[i] = quantise(images[i], array.transpose(1, 2, 0), attack.eps)
    return out  # type: ignore[return-value]


def quantise(original: np.ndarray, adversarial: np.ndarray, eps: float) -> np.ndarray:
    """``adversarial`` (HxWx3 in [0, 1]) as 8-bit pixels no further than ``eps`` grey levels
    from ``original`` (HxWx3 uint8): what a PNG of the attacked image holds."""
    budget = math.floor(eps + 1e-6)
    base = original.astype(np.int16)
    rounded = np.round(adversarial.astype(np.float64) * 255.0).astype(np.int16)
    return np.clip(rounded, base - budget, base + budget).clip(0, 255).astype(np.uint8)


class Adversary:
    """Adversarial examples for training (``train --adv-train``): ``fraction`` of each batch
    replaced by ``attack`` on the current model in its input space (the preprocessed crops;
    ``eps`` in grey levels of those crops), the backbone and prompts untouched by the attack."""

    def __init__(self, attack: Attack, fraction: float, preprocess: Any) -> None:
        require_art()
        if not 0 < fraction <= 1:
            raise ValueError(f"the adversarial fraction must be in (0, 1], got {fraction}")
        self.attack, self.fraction, self.preprocess = attack, fraction, preprocess

    def __call__(
        self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, seed: int
    ) -> torch.Tensor:
        """``pixels`` (normalised, B x 3 x S x S) with its first ``fraction`` adversarial (a
        targeted attack: those of them not already of the target class)."""
        n = min(len(pixels), max(1, round(self.fraction * len(pixels))))
        classes = list(model.classes)
        target = self.attack.target_index(classes)
        chosen = torch.arange(n, device=labels.device)
        if target is not None:
            chosen = chosen[labels[:n] != target]
        if not len(chosen) or self.attack.eps == 0:
            return pixels
        module = InputModel(model, self.preprocess).to(pixels.device)
        x = (pixels[chosen].detach().float() * module.std + module.mean).clamp(0, 1)
        with frozen(model):
            classifier = _classifier(module, tuple(x.shape[1:]), len(classes), pixels.device)
            attack = _art_attack(classifier, self.attack, batch_size=len(chosen))
            goal = _goal(self.attack, labels[chosen].cpu().numpy(), classes)
            with numpy_seed(seed):
                adversarial = attack.generate(x.cpu().numpy(), y=goal)
        x_adv = torch.from_numpy(adversarial).to(pixels.device, torch.float32)
        out = pixels.clone()
        out[chosen] = ((x_adv - module.mean) / module.std).to(pixels.dtype)
        return out
