"""Export the inference graph to ONNX, and score with ONNX Runtime.

Once training ends the text features are constants, so the exported graph is the vision tower
with its prompts, followed by the fixed class embeddings (or linear head) and a softmax:
pixel_values (N, 3, S, S) -> probabilities (N, C). A checkpoint directory with a `model.onnx`
beside `config.json` can then be served without PyTorch weights or the backbone download.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.transforms import Preprocess
from ..model.checkpoint import CONFIG_NAME, read_config
from ..model.config import ModelConfig
from ..model.mirage import MiraGe

ONNX_NAME = "model.onnx"
#: The int8 graph ONNX Runtime's dynamic quantiser makes from ONNX_NAME (``--precision int8``).
#: The int8 graph (7-bit weights: see int8_graph; graphs of the 8-bit quantiser before, named
#: model.int8.onnx, are not read again).
INT8_NAME = "model.int8-w7.onnx"


class InferenceGraph(nn.Module):
    """pixel_values -> class probabilities, with the text features frozen as a buffer."""

    def __init__(self, model: MiraGe) -> None:
        super().__init__()
        self.model = model.eval()
        with torch.no_grad():
            self.register_buffer("text", model.encode_text().detach().clone())
            self.register_buffer("scale", model.clip.logit_scale.exp().detach().clone())

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        image = self.model.encode_image(pixel_values)
        if self.model.head is not None:
            logits = self.model.head(image)
        else:
            logits = self.scale * image @ self.text.t()
        return logits.softmax(dim=-1)


#: Loggers of the exporter's own progress and advice (torch.onnx's steps, torch.export's and
#: onnxscript's notes), kept out of the terminal unless asked for (``export --verbose``).
EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _held_back(logger_names: tuple[str, ...], verbose: bool = False) -> Iterator[None]:
    """A library's prints, warnings and the records of ``logger_names`` ("" is the root)
    below ERROR held back while it runs (``verbose``: let through)."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [logger.level for logger in loggers]
    held = io.StringIO()
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with (
            contextlib.redirect_stdout(held),
            contextlib.redirect_stderr(held),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx(
    model: MiraGe,
    path: str | os.PathLike,
    opset: int = 18,
    dynamo: bool = True,
    verbose: bool = False,
) -> Path:
    """Write the inference graph to ``path`` (a single file, dynamic batch size); the
    exporter's own messages only with ``verbose``."""
    with _held_back(EXPORTER_LOGGERS, verbose):
        return _export(model, Path(path), opset, dynamo)


def _export(model: MiraGe, path: Path, opset: int, dynamo: bool) -> Path:
    graph = InferenceGraph(model).eval()
    size = model.backbone.preprocess.image_size
    example = torch.zeros(2, 3, size, size, dtype=model.clip.logit_scale.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with torch.no_grad():
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=True,
                external_data=False,
                input_names=["pixel_values"],
                output_names=["probs"],
                dynamic_shapes={"pixel_values": {0: batch}},
                opset_version=opset,
            )
        else:
            torch.onnx.export(
                graph,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=["pixel_values"],
                output_names=["probs"],
                dynamic_axes={"pixel_values": {0: "batch"}, "probs": {0: "batch"}},
                opset_version=opset,
            )
    os.replace(tmp, path)
    return path


@dataclass
class GraphBackbone:
    """What a Detector reads of a backbone, from the checkpoint's config.json."""

    preprocess: Preprocess
    source: str
    description: str

    def describe(self) -> str:
        return f"{self.description} (ONNX Runtime)"


@dataclass
class GraphOutput:
    """The graph's class probabilities, as a MiraGe output gives them (``.probs``)."""

    probs: torch.Tensor


class OnnxNetwork:
    """A checkpoint's exported graph on ONNX Runtime, as the network a
    :class:`~miragedet.inference.detector.Detector` runs (``network(pixels).probs``). Needs only
    the checkpoint's config.json (classes, preprocessing, threshold) and model.onnx."""

    engine = "onnx"

    def __init__(
        self,
        onnx_path: str | os.PathLike,
        checkpoint: dict[str, Any],
        precision: str = "auto",
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        if precision not in ("auto", "fp32", "int8"):
            raise ValueError(
                "the ONNX graph runs in fp32 or int8; use --backend torch for bf16/fp16"
            )
        self.precision, self.precision_reason = "fp32", "ONNX Runtime graph (fp32)"
        if precision == "int8":
            onnx_path = int8_graph(Path(onnx_path))
            self.precision = "int8"
            self.precision_reason = (
                "ONNX Runtime's dynamic int8 (int8 weights, activations quantised per batch)"
            )
        from .threads import available_cpus

        options = ort.SessionOptions()
        # ONNX Runtime's default is a thread per host core; a container's quota may be less
        options.intra_op_num_threads = available_cpus().count
        options.log_severity_level = 4  # its errors reach the caller as exceptions, not logs
        self.session = ort.InferenceSession(
            str(onnx_path), options, providers=providers or ["CPUExecutionProvider"]
        )
        #: Where the graph runs: the GPU when ONNX Runtime's CUDA provider took it (a provider
        #: that fails to load falls back to the CPU's), else the CPU. The Detector scores there.
        self.device = torch.device("cpu")
        if self.session.get_providers()[0] == "CUDAExecutionProvider":
            cuda = self.session.get_provider_options()["CUDAExecutionProvider"]
            self.device = torch.device("cuda", int(cuda.get("device_id", 0)))
        self.checkpoint = checkpoint
        self.config = ModelConfig.from_dict(_model_options(checkpoint))
        self.classes = self.config.all_classes
        self.threshold = float(checkpoint.get("threshold", 0.5))
        b = checkpoint["backbone"]
        self.backbone = GraphBackbone(
            Preprocess.from_dict(checkpoint["preprocess"]), b["source"], b["description"]
        )
        self.lineage = (checkpoint.get("metadata") or {}).get("lineage", [])
        digest = hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()[:12]
        #: How its detector names it (``model_id``).
        self.name = f"{Path(onnx_path).parent.name}@onnx-{digest}"

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, precision: str = "auto", providers: list | None = None
    ) -> OnnxNetwork:
        """The checkpoint folder's model.onnx (see `miragedet export`), on ONNX Runtime's
        ``providers`` (None: its CPU provider)."""
        onnx_path = Path(directory) / ONNX_NAME
        if not onnx_path.is_file():
            raise FileNotFoundError(
                f"{directory} has no {ONNX_NAME}; run `miragedet export --model {directory}` first"
            )
        return cls(onnx_path, read_config(Path(directory)), precision, providers)

    def __call__(self, pixels: torch.Tensor) -> GraphOutput:
        array = pixels.detach().to("cpu", torch.float32).numpy()
        return GraphOutput(
            torch.from_numpy(self.session.run(["probs"], {"pixel_values": array})[0])
        )

    def eval(self) -> OnnxNetwork:  # what a Detector asks of a torch module, answered alike
        return self

    def to(self, device: Any) -> OnnxNetwork:
        return self


def int8_graph(onnx_path: Path) -> Path:
    """The int8 graph beside ``onnx_path`` (made once by ONNX Runtime's dynamic quantiser:
    int8 weights for MatMul/Gemm, activations quantised per batch; into the user cache when the
    folder is read-only). Weights use 7 of the 8 bits (``reduce_range``): on x86 CPUs with AVX2
    or AVX-512 but no VNNI, ONNX Runtime's u8s8 kernels (VPMADDUBSW) can saturate with the full
    range (ONNX Runtime docs, "Quantize ONNX models", "When and why do I need to try U8U8?"),
    which moved p(fake) by 0.18 on the int8 test's model on an AMD EPYC (AVX2); with 7-bit
    weights it stays within the int8 tolerance there (docs/performance.md)."""
    target = onnx_path.with_name(INT8_NAME)
    if target.is_file():
        return target
    from .user_cache import cache_dir, ours_to_write

    if not ours_to_write(onnx_path.parent):
        digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()[:16]
        target = cache_dir() / "onnx" / digest / INT8_NAME
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with _held_back(("",)):  # the quantiser's advice goes to the root logger
        quantize_dynamic(str(onnx_path), str(tmp), weight_type=QuantType.QInt8, reduce_range=True)
    os.replace(tmp, target)
    return target


def export_checkpoint(
    directory: str | os.PathLike,
    output: str | os.PathLike | None = None,
    dynamo: bool = True,
    verbose: bool = False,
) -> Path:
    """Export a checkpoint's inference graph to ``output`` (default: DIR/model.onnx)."""
    from ..model.mirage import load_pretrained

    model = load_pretrained(directory)
    target = Path(output) if output else Path(directory) / ONNX_NAME
    export_onnx(model, target, dynamo=dynamo, verbose=verbose)
    if output and Path(output).parent != Path(directory):
        # Keep the settings a scorer needs beside a standalone export.
        config = json.loads((Path(directory) / CONFIG_NAME).read_text())
        (Path(output).parent / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return target


def _model_options(config: dict[str, Any]) -> dict[str, Any]:
    """The model section of a checkpoint's config as ModelConfig options."""
    return {k: v for k, v in config["model"].items() if k != "resolved_depth"}
