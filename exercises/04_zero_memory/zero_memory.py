"""Module 04: ZeRO memory arithmetic. How much GPU memory does training a model take, and how much do
the three ZeRO stages save?

Mixed-precision training with Adam keeps, for every one of the psi parameters of a model:

    the 16-bit parameters              param_bytes     (2)
    the 16-bit gradients               grad_bytes      (2)
    the optimizer states               optimizer_bytes (K = 12: fp32 master copy, momentum, variance)

Plain data parallelism replicates all of it on each of the N GPUs. ZeRO (Rajbhandari et al., 2019)
partitions it instead: stage 1 the optimizer states, stage 2 the gradients too, stage 3 the parameters
too; each partitioned term is divided by N. Everything here is in bytes per GPU, and counts only the
model states (no activations, buffers or fragmentation). Read docs/04_zero_memory.md first.
"""
from grader import NotImplementedYet


def model_state_bytes(num_params, num_gpus, stage, param_bytes=2, grad_bytes=2, optimizer_bytes=12) -> float:
    """Bytes of model states (parameters, gradients, optimizer states) held by *one* GPU.

        stage 0 (plain data parallelism):  (2 + 2 + K) psi
        stage 1 (optimizer states):         2 psi + 2 psi + K psi / N
        stage 2 (+ gradients):              2 psi + (2 + K) psi / N
        stage 3 (+ parameters):             (2 + 2 + K) psi / N

    with psi = `num_params`, N = `num_gpus` (the data-parallel degree), and `param_bytes`,
    `grad_bytes`, `optimizer_bytes` (K) in place of 2, 2 and K. Example: 7.5e9 parameters on 64 GPUs
    need 120e9, 31.4e9, 16.6e9 and 1.9e9 bytes in stages 0 to 3 (the ZeRO paper's Figure 1).

    Errors: `stage` not in 0..3, `num_gpus < 1` or `num_params < 0` -> ValueError.
    """
    raise NotImplementedYet("model_state_bytes")


def max_params(gpu_bytes, num_gpus, stage, param_bytes=2, grad_bytes=2, optimizer_bytes=12) -> int:
    """The largest number of parameters psi whose model states fit in `gpu_bytes` bytes per GPU.

    The inverse of `model_state_bytes`: the returned p satisfies
    `model_state_bytes(p, ...) <= gpu_bytes < model_state_bytes(p + 1, ...)`.
    Example: a 32 GB (32e9 bytes) GPU with N = 64 fits 2e9 parameters without ZeRO, about 7.6e9 with
    stage 1, 14.4e9 with stage 2 and 128e9 with stage 3 (the ZeRO paper's Table 2).

    Errors: `gpu_bytes < 0` -> ValueError, and those of `model_state_bytes`.
    """
    raise NotImplementedYet("max_params")


def communication_bytes(num_params, stage, param_bytes=2) -> float:
    """Bytes each GPU sends (and receives) per training step for data parallelism under ZeRO `stage`.

        stages 0, 1, 2:  2 psi elements   (all-reduce of the gradients = reduce-scatter + all-gather;
                                            stages 1 and 2 do the same two halves in another order)
        stage 3:         3 psi elements   (all-gather of the parameters in the forward pass, again in
                                            the backward pass, and reduce-scatter of the gradients)

    times `param_bytes` bytes per element. Errors: `stage` not in 0..3 or `num_params < 0` -> ValueError.
    """
    raise NotImplementedYet("communication_bytes")
