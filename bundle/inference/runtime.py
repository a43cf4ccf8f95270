"""Where the network runs when it predicts: eager PyTorch, or an OpenVINO copy of it on the CPU.

On a 2-core AVX2 CPU the width-16 U-Net runs at about a quarter of the cores' matmul rate in eager PyTorch: its
3x3 convolutions have 16-32 channels, and instance normalisation, concatenation and pooling are separate passes
over memory. OpenVINO compiles the same graph into fused kernels and runs a 512² window 3x faster (a 4096² slice
2.4x), with the same numbers to float rounding (docs/results.md, "Speed"; `python -m bundle.speed` measures both
side by side).

`prediction_network(network, runtime)` (`--runtime` in the configs; `VolumePredictor` and the pseudo-label rounds
call it):
  eager     the torch module itself (any device, gradients possible);
  openvino  `OpenVINONetwork`, a frozen copy of the weights as they are when it is made, on the CPU;
  auto      openvino on a CPU when the package is installed, else eager (a CUDA device: eager).
The pseudo-label rounds of a fine-tune take a new copy each round (the weights change between rounds).
"""

from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import torch

from bundle.errors import input_error

RUNTIMES = ("auto", "eager", "openvino")
logger = logging.getLogger("mitoda.runtime")


def openvino_available() -> bool:
    """Whether the `openvino` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


class OpenVINONetwork(torch.nn.Module):
    """A torch-callable OpenVINO copy of `network` for inference on the CPU, with the weights it has now.

    The graph is converted and compiled for each input shape it meets, about 2 s each on 2 cores (a sliding
    window meets one or two: the window, and the slice when it is smaller). The weights are copied when it is made:
    after they change (a pseudo-label round), make a new one. Calls take and return float32 CPU tensors,
    (B, C, H, W), like the network's; there are no gradients.

    Args:
        network: the torch module to copy (left unchanged).
        threads: OpenVINO's inference threads; None: torch's current intra-op threads (`bundle.threads`).
    """

    def __init__(self, network: torch.nn.Module, threads: int | None = None) -> None:
        super().__init__()
        import openvino as ov

        self.threads = int(threads or torch.get_num_threads())
        self.network = copy.deepcopy(network).eval().requires_grad_(False)  # the weights as they are now
        self._core = ov.Core()
        self._requests: dict[tuple[int, ...], object] = {}

    def _request(self, shape: tuple[int, ...]):
        """The infer request for inputs of `shape`, converted and compiled on first use. The graph is traced at
        each shape: the U-Net pads its skip connections only where a size is not a multiple of 16, and a trace
        keeps the branch it took."""
        if shape not in self._requests:
            import openvino as ov

            with torch.no_grad(), warnings.catch_warnings():  # the trace's notes on the shape branches it took
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                model = ov.convert_model(self.network, example_input=torch.zeros(shape), input=[shape])
            config = {"INFERENCE_NUM_THREADS": self.threads, "INFERENCE_PRECISION_HINT": "f32",  # not bf16 on AMX
                      "PERFORMANCE_HINT": "LATENCY"}  # fmt: skip
            self._requests[shape] = self._core.compile_model(model, "CPU", config).create_infer_request()
        return self._requests[shape]

    def train(self, mode: bool = True) -> OpenVINONetwork:
        """A no-op: the copy predicts only (VolumePredictor and the rounds set eval/train modes)."""
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for `x` (B, C, H, W), as a float32 CPU tensor."""
        if x.device.type != "cpu":
            raise ValueError(f"OpenVINONetwork runs on the CPU; got a tensor on {x.device}")
        array = np.ascontiguousarray(x.detach().numpy(), dtype=np.float32)
        request = self._request(tuple(array.shape))
        request.infer({0: array})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())


def resolve_runtime(runtime: str, device: str | torch.device = "cpu") -> str:
    """`runtime` as it will run on `device`: "eager" or "openvino" ("auto": openvino on a CPU when installed).
    An unknown name, or openvino asked for where it cannot run, is a one-line InputError."""
    if runtime not in RUNTIMES:
        raise input_error("--runtime", f"{runtime!r} is not a runtime", f"use one of {', '.join(RUNTIMES)}")
    on_cpu = torch.device(device).type == "cpu"
    if runtime == "auto":
        return "openvino" if on_cpu and openvino_available() else "eager"
    if runtime == "openvino" and not on_cpu:
        raise input_error("--runtime", f"openvino runs on the CPU, but the device is {device}",
                          "pass --runtime eager (or auto) on a GPU, or --device cpu")  # fmt: skip
    if runtime == "openvino" and not openvino_available():
        raise input_error("--runtime", "openvino is not installed", "run `bash scripts/setup.sh` "
                          "(requirements/runtime.txt has it), or pass --runtime eager")  # fmt: skip
    return runtime


def prediction_network(network: torch.nn.Module, runtime: str = "auto", device: str | torch.device = "cpu",
                       ) -> torch.nn.Module:  # fmt: skip
    """The module that predicts for `network` on `device` with `runtime` (see the module docstring); logged."""
    chosen = resolve_runtime(runtime, device)
    logger.info("prediction runtime: %s%s", chosen, f" (from {runtime})" if runtime != chosen else "")
    return OpenVINONetwork(network) if chosen == "openvino" else network
