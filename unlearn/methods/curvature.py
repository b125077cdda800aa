"""Per-sample gradients and curvature pieces shared by IU (`iu`) and FF (`ff`).

Both methods need gradients of one sample at a time. They come layer by layer: one forward
pass of a batch records each layer's input, one backward pass (for the Fisher one per class
less one, or FF's default three: `fisher_sum`) gives each layer's output gradient per sample,
and a layer's per-sample weight gradient is a small product of the two. The official code
instead runs one backward pass per sample (IU) or per class and batch of 32 (FF). The model
must be in eval mode: BatchNorm then uses its running statistics, so a sample's gradient does
not depend on the rest of its batch.
`torch.func` (functional_call + vmap over the whole model) is the path for models the
layer-wise one cannot follow.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from unlearn.errors import ConfigError
from unlearn.masks import Masks

Parameters = dict[str, Tensor]


def trainable_parameters(model: nn.Module) -> Parameters:
    """Detached copies of the weights that train (the tensors the methods differentiate)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def _buffers(model: nn.Module) -> Parameters:
    return {name: b.detach() for name, b in model.named_buffers()}


def _logits(model: nn.Module, params: Parameters, buffers: Parameters, sample: Tensor) -> Tensor:
    """Logits (C,) of one sample (C, H, W) under `params`."""
    return functional_call(model, (params, buffers), (sample.unsqueeze(0),)).squeeze(0)


def per_sample_gradient_rows(model: nn.Module, inputs: Tensor, labels: Tensor, out: Tensor | None = None) -> Tensor:
    """The gradient of CE(x_i, y_i) for every sample as one (B, d) matrix, tensors in `trainable_parameters` order.

    Written into `out` when given. A Conv2d or Linear module called once writes its per-sample
    weight gradients straight into their columns (no per-layer tensor of every sample's gradient
    to allocate and copy: for a large G that copy cost as much as a third of the products).
    """
    params = trainable_parameters(model)
    width = sum(p.numel() for p in params.values())
    out = inputs.new_empty((len(inputs), width)) if out is None else out
    try:
        logits, calls = _forward_recorded(model, inputs)
    except _Unsupported:
        return flatten_rows(per_sample_loss_gradients_torch_func(model, inputs, labels), list(params), out=out)
    columns, start = {}, 0
    for name, p in params.items():
        columns[name] = out[:, start : start + p.numel()]
        start += p.numel()
    # d CE(x_i, y_i) / d logits_i = p_i - onehot(y_i)
    vector = torch.softmax(logits.detach(), dim=-1) - F.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    once = Counter(call.module for call in calls)
    written: set[str] = set()
    for call, grad_output in zip(calls, _output_gradients(logits, calls, vector), strict=True):
        direct = _write_weight_gradients(call, grad_output[0], columns) if once[call.module] == 1 else set()
        written |= direct
        for name, value in _call_gradients(call, grad_output, skip=direct).items():
            if name in written:  # a module called more than once: its calls' gradients add up
                columns[name] += value[0].flatten(1)
            else:
                columns[name].copy_(value[0].flatten(1))
                written.add(name)
    for name in columns.keys() - written:
        columns[name].zero_()
    return out


def fisher_sum(
    model: nn.Module, inputs: Tensor, generator: torch.Generator | None = None, leading: int | None = None
) -> Parameters:
    """sum_i sum_y p(y|x_i) (d log p(y|x_i) / d theta)^2 over `inputs`: {name: tensor}.

    The sum over y is exact, from one backward pass fewer than there are classes: with g_y the
    logits' gradient of log p(y|x_i), e_y - p_i, the sum is that of (J^T v)^2 over any vectors v
    whose outer products add up to sum_y p(y|x_i) g_y g_y^T = diag(p_i) - p_i p_i^T
    (`_logit_fisher_factor`), and that matrix has rank C - 1.

    With a `generator` and `leading`, each sample's `leading` largest of those directions enter
    exactly and the rest through one of them, drawn in proportion to its eigenvalue and scaled to
    their total (`_leading_and_drawn`): an unbiased estimate from `leading` + 1 backward passes,
    random only in the directions of least weight (`leading` of C - 1 or more: the exact sum).

    With a `generator` alone, one label y_i per sample is drawn from p(.|x_i) instead (on the CPU, so
    seeded alike on every device) and the sum is sum_i (d log p(y_i|x_i) / d theta)^2: an
    unbiased estimate of the same quantity (its expectation over the draws is the exact sum),
    from one backward pass instead of one per class.

    Models the layer-wise path cannot follow get every class's gradient from torch.func; there the
    sum is exact unless labels are drawn.
    """
    params = trainable_parameters(model)
    try:
        logits, calls = _forward_recorded(model, inputs)
    except _Unsupported:
        jacobians, probs = per_sample_log_prob_jacobians(model, inputs)
        if generator is None or leading is not None:
            return {name: torch.einsum("bc,bc...->...", probs, jacobians[name].square()) for name in params}
        drawn = _draw_labels(probs, generator)
        rows = torch.arange(len(inputs), device=inputs.device)
        return {name: jacobians[name][rows, drawn].square().sum(0) for name in params}
    probs = torch.softmax(logits.detach(), dim=-1)
    if generator is None:
        vectors = _logit_fisher_factor(probs)  # (C - 1, B, C)
    elif leading is not None:
        vectors = _leading_and_drawn(_logit_fisher_factor(probs), leading, generator)
    else:
        classes = torch.eye(probs.shape[1], device=probs.device, dtype=probs.dtype)
        vectors = (classes[_draw_labels(probs, generator)] - probs)[None]  # (1, B, C)
    sums = _square_sums(logits, calls, vectors)
    return {name: sums.get(name, torch.zeros_like(p)) for name, p in params.items()}


def _logit_fisher_factor(probs: Tensor) -> Tensor:
    """C - 1 vectors per sample, (C - 1, B, C), whose outer products add up to diag(p_i) - p_i p_i^T.

    That matrix (the softmax's Fisher in logit space) is positive semi-definite with rows summing
    to 0, so rank C - 1: its eigenvectors (float64) but the one of the smallest eigenvalue, 0 up to
    rounding, scaled by the square roots of their eigenvalues. The C vectors sqrt(p_y) (e_y - p_i)
    give the same sum with one backward pass more.
    """
    p = probs.double()
    fisher = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    values, vectors = torch.linalg.eigh(fisher)  # ascending
    factor = vectors[:, :, 1:] * values[:, None, 1:].clamp(min=0).sqrt()  # (B, C, C - 1)
    return factor.permute(2, 0, 1).to(probs.dtype)


def _leading_and_drawn(factor: Tensor, leading: int, generator: torch.Generator) -> Tensor:
    """`leading` + 1 vectors per sample, (leading + 1, B, C), whose outer products add up to those of
    `factor`'s (K, B, C) in expectation: its last `leading` (the largest, as `_logit_fisher_factor`
    orders them) as they are, and one of the others, drawn with probability lambda_j / Lambda
    (lambda_j its squared norm, Lambda theirs summed; on the CPU with `generator`) and scaled by
    sqrt(Lambda / lambda_j), so that its expected outer product is the others' sum."""
    if leading >= len(factor):
        return factor
    rest, top = factor[: len(factor) - leading], factor[len(factor) - leading :]
    values = rest.double().square().sum(2)  # (K - leading, B)
    total = values.sum(0)
    weights = values.T.cpu()
    weights[weights.sum(1) <= 0] = 1.0  # nothing left to draw: any direction, scaled to 0 below
    drawn = torch.multinomial(weights, 1, generator=generator).squeeze(1).to(factor.device)
    samples = torch.arange(factor.shape[1], device=factor.device)
    chosen = values[drawn, samples]
    scale = torch.where(chosen > 0, (total / chosen.clamp(min=torch.finfo(torch.float64).tiny)).sqrt(), 0.0)
    last = rest[drawn, samples] * scale[:, None].to(factor.dtype)
    return torch.cat([top, last[None]])


def _draw_labels(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One label per row of `probs` (B, C), drawn on the CPU with `generator`, on probs' device."""
    return torch.multinomial(probs.detach().cpu().double(), 1, generator=generator).squeeze(1).to(probs.device)


def per_sample_loss_gradients_torch_func(model: nn.Module, inputs: Tensor, labels: Tensor) -> Parameters:
    """Per-sample CE gradients {name: (B, *shape)} by torch.func over the whole model (the general path)."""
    params, buffers = trainable_parameters(model), _buffers(model)

    def loss(params: Parameters, sample: Tensor, label: Tensor) -> Tensor:
        return F.cross_entropy(_logits(model, params, buffers, sample), label)

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, inputs, labels)


def per_sample_log_prob_jacobians(model: nn.Module, inputs: Tensor) -> tuple[Parameters, Tensor]:
    """Gradients of log p(y|x_i) for every sample and every class y, and p(y|x_i).

    Returns ({name: (B, C, *shape)}, probabilities (B, C)).
    """
    params, buffers = trainable_parameters(model), _buffers(model)

    def log_probs(params: Parameters, sample: Tensor) -> tuple[Tensor, Tensor]:
        values = torch.log_softmax(_logits(model, params, buffers, sample), dim=-1)
        return values, values.detach()

    jacobians, log_p = vmap(jacrev(log_probs, has_aux=True), in_dims=(None, 0))(params, inputs)
    return jacobians, log_p.exp()


def flatten_rows(per_sample: Parameters, names: Sequence[str], out: Tensor | None = None) -> Tensor:
    """{name: (B, *shape)} as one (B, d) matrix, tensors in `names` order (written into `out` if given)."""
    return torch.cat([per_sample[name].flatten(1) for name in names], dim=1, out=out)


# rows per block of `symmetric_gram`: large enough for an efficient product, small enough to skip
# most of the redundant half
_GRAM_BLOCK = 256


def symmetric_gram(rows: Tensor) -> Tensor:
    """rows @ rows.T with each off-diagonal block computed once (about half of the product's work)."""
    count = len(rows)
    gram = rows.new_empty((count, count))
    for start in range(0, count, _GRAM_BLOCK):
        block = rows[start : start + _GRAM_BLOCK]
        product = block @ rows[start:].T
        gram[start : start + len(block), start:] = product
        gram[start:, start : start + len(block)] = product.T
    return gram


def flat_mask(params: Parameters, masks: Masks | None) -> Tensor | None:
    """A (d,) 0/1 vector over `params` in order: 0 where a mask prunes the weight."""
    if not masks:
        return None
    parts = [
        masks[name].flatten().to(p.device, p.dtype) if name in masks else torch.ones_like(p).flatten()
        for name, p in params.items()
    ]
    return torch.cat(parts)


# With G in one block of at least this many rows, conjugate gradients try first (see below).
_CG_MIN_SAMPLES = 256
_CG_TOLERANCE = 1e-6  # relative residual of the m x m system


def inverse_fisher_product(vector: Tensor, gradient_blocks: Sequence[Callable[[], Tensor]], damping: float) -> Tensor:
    """(damping I + G^T G / m)^{-1} vector, exactly, by the Woodbury identity.

    G is the (m, d) matrix of per-sample gradients, handed over as row blocks that are
    computed on demand, so at most two blocks are in memory at once (a block is recomputed
    where G does not fit). With F = damping I + G^T G / m:

        F^{-1} v = (v - G^T (damping m I + G G^T)^{-1} G v) / damping.

    Only the m x m system is solved: directly (Cholesky in float64 on G G^T, O(m^2 d) work),
    or, where G is one block of `_CG_MIN_SAMPLES` rows or more, by conjugate gradients to a
    relative residual of `_CG_TOLERANCE` (two products with G per step, O(m d)). The system's
    eigenvalues are damping m + those of G G^T, so with a damping of the Fisher's order it is
    well conditioned and takes a few steps; where m / 32 steps do not reach the tolerance the
    direct solve runs instead, so either way the result is the same solution.
    """
    if damping <= 0:
        raise ConfigError(f"damping must be positive, got {damping}")
    if len(gradient_blocks) == 1:
        rows = gradient_blocks[0]()
        projected = rows @ vector
        if len(rows) >= _CG_MIN_SAMPLES:
            solved = _conjugate_gradients(rows, damping * len(rows), projected, max_steps=len(rows) // 32)
            if solved is not None:
                return (vector - solved[1]) / damping
        gram, only_block = symmetric_gram(rows), rows
    else:
        gram, projected, only_block = _gram_and_projection(vector, gradient_blocks)
    count = gram.shape[0]
    system = gram.double() + damping * count * torch.eye(count, dtype=torch.float64, device=gram.device)
    # symmetric positive definite (damping > 0): a Cholesky solve, half the work of an LU one
    factor = torch.linalg.cholesky(system)
    weights = torch.cholesky_solve(projected.double().unsqueeze(1), factor).squeeze(1).to(vector.dtype)
    correction = torch.zeros_like(vector)
    start = 0
    for block in gradient_blocks:
        rows = only_block if only_block is not None else block()
        correction += rows.T @ weights[start : start + len(rows)]
        start += len(rows)
    return (vector - correction) / damping


def _conjugate_gradients(rows: Tensor, shift: float, target: Tensor, max_steps: int) -> tuple[Tensor, Tensor] | None:
    """w with (shift I + G G^T) w = target (G = rows), and G^T w; None if `max_steps` miss the tolerance.

    G^T w is summed from the G^T x each step computes anyway, which saves a pass over G. The
    m-vectors and scalars are float64; the products with G are in G's precision.
    """
    target = target.double()

    def apply(x: Tensor) -> tuple[Tensor, Tensor]:
        back = rows.T @ x.to(rows.dtype)
        return shift * x + (rows @ back).double(), back

    solution = target / shift  # the solution when G G^T is small against the shift
    product, back_solution = apply(solution)
    residual = target - product
    direction, squared = residual.clone(), residual @ residual
    goal = (_CG_TOLERANCE * target.norm()) ** 2
    for _ in range(max_steps + 1):
        if squared <= goal:
            return solution.to(rows.dtype), back_solution
        product, back = apply(direction)
        step = squared / (direction @ product)
        solution += step * direction
        back_solution += step.to(back.dtype) * back
        residual -= step * product
        squared, previous = residual @ residual, squared
        direction = residual + (squared / previous) * direction
    return None


def _gram_and_projection(
    vector: Tensor,
    gradient_blocks: Sequence[Callable[[], Tensor]],
) -> tuple[Tensor, Tensor, Tensor | None]:
    """G G^T, G v and, when G is a single block, G itself (so it is not recomputed)."""
    count = len(gradient_blocks)
    parts: dict[tuple[int, int], Tensor] = {}
    projected = []
    left = None
    for i, block in enumerate(gradient_blocks):
        left = block()
        projected.append(left @ vector)
        parts[i, i] = symmetric_gram(left)
        for j in range(i + 1, count):
            parts[i, j] = left @ gradient_blocks[j]().T
            parts[j, i] = parts[i, j].T
    gram = torch.cat([torch.cat([parts[i, j] for j in range(count)], dim=1) for i in range(count)])
    return gram, torch.cat(projected), left if count == 1 else None


# Layer-wise per-sample gradients. A trainable tensor belongs to the module that holds it; a
# forward hook records each such module's input and output, and one backward from the logits to
# those outputs gives every sample's output gradient (eval mode: samples do not interact). From
# input and output gradient a layer's per-sample weight gradient is a small product (Linear: an
# outer product; Conv2d: the output gradient times the unfolded input; eval BatchNorm: the output
# gradient times the normalised input), with no samples x classes x parameters Jacobian of the
# whole model. Modules of other kinds get theirs from torch.func on that module alone. Where the
# hooks cannot follow the model (a module returning a tuple), the whole-model torch.func path runs.


class _Unsupported(Exception):
    """The model does something the layer-wise path does not follow."""


@dataclass
class _Call:
    """One forward call of a module that holds trainable tensors."""

    module: nn.Module
    prefix: str
    inputs: tuple
    output: Tensor
    derived: dict = field(default_factory=dict)  # input-side tensors shared by every backward vector

    def once(self, key: str, make: Callable[[], Tensor]) -> Tensor:
        if key not in self.derived:
            self.derived[key] = make()
        return self.derived[key]


def _forward_recorded(model: nn.Module, inputs: Tensor) -> tuple[Tensor, list[_Call]]:
    """The logits of `inputs`, and every call of a module that holds trainable tensors."""
    owners = {
        module: prefix
        for prefix, module in model.named_modules()
        if any(p.requires_grad for p in module.parameters(recurse=False))
    }
    calls: list[_Call] = []

    def record(module: nn.Module, args: tuple, output: object) -> Tensor:
        if not isinstance(output, Tensor):
            raise _Unsupported(f"{type(module).__name__} returns {type(output).__name__}, not a tensor")
        # Copies: a later in-place op (ReLU(inplace=True), out += shortcut) must change neither the
        # recorded input nor the tensor whose gradient is taken.
        saved = tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args)
        calls.append(_Call(module, owners[module], saved, output))
        return output.clone()

    handles = [module.register_forward_hook(record) for module in owners]
    try:
        logits = model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return logits, calls


def _output_gradients(logits: Tensor, calls: list[_Call], vector: Tensor) -> list[Tensor]:
    """For each call, the gradient (1, B, *output) of <logits, vector> w.r.t. its output."""
    outputs = [call.output for call in calls]
    grads = torch.autograd.grad(logits, outputs, vector, retain_graph=True, allow_unused=True)
    return [(torch.zeros_like(out) if g is None else g).unsqueeze(0) for g, out in zip(grads, outputs, strict=True)]


def _trainable(call: _Call) -> dict[str, Tensor]:
    return {name: p for name, p in call.module.named_parameters(recurse=False) if p.requires_grad}


def _full_name(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_eval_batchnorm(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.training and module.running_var is not None
    )


def _is_plain_conv2d(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv2d
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _write_weight_gradients(call: _Call, grad_output: Tensor, columns: dict[str, Tensor]) -> set[str]:
    """A plain Conv2d's or a 2-D Linear's per-sample weight gradients, written into `columns`.

    `grad_output` is (B, *output), one backward vector per sample; `columns[name]` is the (B, numel)
    view the gradients go to. Returns the full names written (none for other modules).
    """
    module, params = call.module, _trainable(call)
    name = _full_name(call.prefix, "weight")
    if "weight" not in params:
        return set()
    b = grad_output.shape[0]
    if _is_plain_conv2d(module):
        x = call.once("columns", lambda: _unfolded(call).transpose(1, 2))
        g = grad_output.reshape(b, module.out_channels, -1)
        torch.bmm(g, x, out=columns[name].view(b, module.out_channels, -1))
        return {name}
    if type(module) is nn.Linear and call.inputs[0].ndim == 2:
        outer = columns[name].view(b, *module.weight.shape)
        torch.bmm(grad_output.unsqueeze(2), call.inputs[0].unsqueeze(1), out=outer)
        return {name}
    return set()


def _call_gradients(call: _Call, grad_output: Tensor, skip: set[str] = frozenset()) -> dict[str, Tensor]:
    """Per-sample gradients {name: (K, B, *shape)} of one call's own trainable tensors (less full names in `skip`).

    `grad_output` is (K, B, *output): K backward vectors (classes) for each of B samples.
    """
    module = call.module
    params = {name: p for name, p in _trainable(call).items() if _full_name(call.prefix, name) not in skip}
    if not params:
        return {}
    k, b = grad_output.shape[:2]
    grads: dict[str, Tensor] = {}
    if type(module) is nn.Linear:
        x, g = call.inputs[0].reshape(b, -1, module.in_features), grad_output.reshape(k, b, -1, module.out_features)
        if "weight" in params:
            grads["weight"] = torch.einsum("kbto,bti->kboi", g, x)
        if "bias" in params:
            grads["bias"] = g.sum(2)
    elif _is_plain_conv2d(module):
        x = call.once("columns", lambda: _unfolded(call).transpose(1, 2))
        g = grad_output.reshape(k, b, module.out_channels, -1)
        if "weight" in params:
            grads["weight"] = torch.matmul(g, x).reshape(k, b, *module.weight.shape)
        if "bias" in params:
            grads["bias"] = g.sum(3)
    elif _is_eval_batchnorm(module):
        normalised = call.once("normalised", lambda: _normalised(module, call.inputs[0]))
        spatial = tuple(range(3, grad_output.ndim))
        if "weight" in params:
            grads["weight"] = torch.einsum("kbc...,bc...->kbc", grad_output, normalised)
        if "bias" in params:
            grads["bias"] = grad_output.sum(spatial)
    else:
        grads = _module_gradients_torch_func(call, params, grad_output)
    return {_full_name(call.prefix, name): value for name, value in grads.items()}


def _unfolded(call: _Call) -> Tensor:
    """The Conv2d call's input patches, (B, in kh kw, output positions), laid out as F.unfold's.

    Copied from a strided view of the padded input: 2.7 ms against F.unfold's 6.5 ms for digits'
    ResNet layers (256 samples, 32 channels, 8x8, one thread), 0.92x the time of IU there.
    """
    module, inputs = call.module, call.inputs[0]
    (kh, kw), (dh, dw), (ph, pw), (sh, sw) = module.kernel_size, module.dilation, module.padding, module.stride
    padded = F.pad(inputs, (pw, pw, ph, ph))
    windows = padded.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    count, channels, rows, columns = windows.shape[:4]  # then kh, kw
    return windows.permute(0, 1, 4, 5, 2, 3).reshape(count, channels * kh * kw, rows * columns)


def _normalised(module: nn.Module, inputs: Tensor) -> Tensor:
    """(x - running mean) / sqrt(running var + eps): what an eval BatchNorm's weight multiplies."""
    shape = (1, -1) + (1,) * (inputs.ndim - 2)
    return (inputs - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)


def _module_gradients_torch_func(call: _Call, params: Parameters, grad_output: Tensor) -> Parameters:
    """Any other module: vector-Jacobian products of that module alone, vmapped over samples and K."""
    module, detached = call.module, {name: p.detach() for name, p in params.items()}
    tensor_at = [i for i, a in enumerate(call.inputs) if isinstance(a, Tensor)]

    def one(tensors: tuple, g: Tensor) -> Parameters:
        args = list(call.inputs)
        for i, tensor in zip(tensor_at, tensors, strict=True):
            args[i] = tensor.unsqueeze(0)
        _, pull = torch.func.vjp(lambda p: functional_call(module, p, tuple(args)), detached)
        return pull(g.unsqueeze(0))[0]

    tensors = tuple(call.inputs[i] for i in tensor_at)
    return vmap(vmap(one, in_dims=(0, 0)), in_dims=(None, 0))(tensors, grad_output)


def _square_sums(logits: Tensor, calls: list[_Call], vectors: Tensor) -> Parameters:
    """{name: sum over k and i of g_ki^2}, g_ki the gradient of <logits_i, vectors[k, i]>.

    One backward pass per vector k. A module called once gets its sum without every
    per-sample gradient in memory at once; a module called more than once (shared weights)
    sums its calls' gradients first. A wide plain Conv2d called once (`_grouped_calls`) keeps
    every vector's output gradients, sample by sample, and forms its per-sample products once
    for all vectors after the last pass: K x out rows against the same patches are one larger
    product instead of K small ones (0.78x the products' time on digits' ResNet, one thread;
    the exact sum on a small CNN went from 0.71-0.81x the official loop's time to 0.56-0.66x).
    """
    once = Counter(call.module for call in calls)
    grouped = _grouped_calls(calls, once, len(vectors))
    sums: Parameters = {}

    def add(name: str, value: Tensor) -> None:
        sums[name] = sums[name] + value if name in sums else value

    for k, vector in enumerate(vectors):
        shared: Parameters = {}
        for index, (call, grad_output) in enumerate(zip(calls, _output_gradients(logits, calls, vector), strict=True)):
            if index in grouped:
                grouped[index][:, k].copy_(grad_output[0].flatten(2))
            elif once[call.module] == 1:
                for name, value in _call_square_sums(call, grad_output).items():
                    add(name, value)
            else:
                for name, value in _call_gradients(call, grad_output).items():
                    shared[name] = shared[name] + value if name in shared else value
        for name, value in shared.items():
            add(name, value.square().sum((0, 1)))
    for index, rows in grouped.items():
        for name, value in _conv_square_sums(calls[index], rows).items():
            add(name, value)
    return sums


# A plain Conv2d's per-sample products are grouped over the vectors (see `_square_sums`) where its
# patches are at least this long (shorter ones, such as a first layer's 9, ran faster one vector at
# a time), within a budget of this many floats for the kept output gradients of all such layers.
_GROUP_MIN_PATCH = 64
_GROUP_FLOATS = 2**25

# Per-sample products are formed this many floats at a time: a buffer that is reused, where one
# tensor of every sample's gradient would be a fresh allocation (page faults cost more than the maths).
_CHUNK_FLOATS = 2**20


def _grouped_calls(calls: list[_Call], once: Counter, vectors: int) -> dict[int, Tensor]:
    """{index of a call: its (B, K, out, P) buffer} for the calls whose products are grouped."""
    grouped, budget = {}, _GROUP_FLOATS
    if vectors < 2:
        return grouped
    for index, call in enumerate(calls):
        module = call.module
        if not (once[module] == 1 and _is_plain_conv2d(module) and "weight" in _trainable(call)):
            continue
        patch = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
        output = call.output
        size = output.shape[0] * vectors * output[0].numel()
        if patch >= _GROUP_MIN_PATCH and size <= budget:
            grouped[index] = output.new_empty((output.shape[0], vectors, module.out_channels, output[0, 0].numel()))
            budget -= size
    return grouped


def _call_square_sums(call: _Call, grad_output: Tensor) -> Parameters:
    """sum over k and i of the squared per-sample gradients of one call's trainable tensors."""
    module, params = call.module, _trainable(call)
    k, b = grad_output.shape[:2]
    sums: Parameters = {}
    if type(module) is nn.Linear and call.inputs[0].ndim == 2:
        # (g a^T)^2 = g^2 (a^2)^T, summed over k and i: one product, no per-sample outer products
        squared = grad_output.square()
        if "weight" in params:
            sums["weight"] = squared.sum(0).T @ call.inputs[0].square()
        if "bias" in params:
            sums["bias"] = squared.sum((0, 1))
    elif _is_plain_conv2d(module) and "weight" in params:
        g = grad_output.reshape(k, b, module.out_channels, -1)
        return _conv_square_sums(call, g.transpose(0, 1))
    else:
        return {name: value.square().sum((0, 1)) for name, value in _call_gradients(call, grad_output).items()}
    return {_full_name(call.prefix, name): value for name, value in sums.items()}


def _conv_square_sums(call: _Call, grad_output: Tensor) -> Parameters:
    """A plain Conv2d's sums over k and i of squared per-sample gradients, from `grad_output`
    (B, K, out, P): each sample's K x out rows of output gradients times its patches."""
    module, params = call.module, _trainable(call)
    b, k = grad_output.shape[:2]
    columns = call.once("columns", lambda: _unfolded(call).transpose(1, 2))  # (B, P, in kh kw)
    rows = grad_output.reshape(b, k * module.out_channels, -1)  # sample by sample: (K out, P)
    step = max(1, _CHUNK_FLOATS // (k * module.out_channels * columns.shape[2]))
    buffer = rows.new_empty((min(step, b), rows.shape[1], columns.shape[2]))
    total = rows.new_zeros(rows.shape[1], columns.shape[2])
    for start in range(0, b, step):
        part = buffer[: min(step, b - start)]
        torch.bmm(rows[start : start + step], columns[start : start + step], out=part)
        total += part.square_().sum(0)
    sums = {"weight": total.view(k, *module.weight.shape).sum(0)}
    if "bias" in params:
        sums["bias"] = grad_output.sum(3).square().sum((0, 1))
    return {_full_name(call.prefix, name): value for name, value in sums.items()}
