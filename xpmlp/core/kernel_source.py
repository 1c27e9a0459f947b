"""The fused kernels' CUDA source (:mod:`xpmlp.core.kernels` runs it, or its NumPy twins), and how
it is compiled.

NVRTC compiles it directly, not through ``cupy.RawModule(code=...)``: CuPy appends ``-ftz=true``
to the options of every kernel it compiles, after the caller's, and NVRTC keeps the last, so float32
kernels would flush subnormal inputs and results to zero (a float32 Adam step with ``g = 1e-39``
from zeros would leave ``p = 0`` where NumPy gives ``-9.99995e-35``). With ``--ftz=false`` and
``--fmad=false`` each operation rounds as NumPy's does. (CuPy's own kernels, and so the portable
path on a GPU, still flush float32 subnormals.)
"""

from __future__ import annotations

from . import ops

FUSED_ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "identity")
THREADS = 256
NVRTC_OPTIONS = ("--fmad=false", "--ftz=false", "--std=c++11")

# ``T`` is float or double; ``z`` the pre-activation, ``h`` the activation, ``g`` a gradient.
_FORWARD = {
    "relu": "x > (T)0 || x != x ? x : (T)0",
    "leaky_relu": "x > (T)0 ? x : x * (T)LEAKY",
    "tanh": "tanh(x)",
    "sigmoid": "(T)0.5 * (tanh((T)0.5 * x) + (T)1)",
}
_BACKWARD = {
    "relu": "d * (T)(z[i] > (T)0)",
    "leaky_relu": "z[i] > (T)0 ? d : d * (T)LEAKY",
    "tanh": "d * ((T)1 - h[i] * h[i])",
    "sigmoid": "d * h[i] * ((T)1 - h[i])",
    "identity": "d",
}
_LOOP = (
    "for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;"
    " i += (long long)blockDim.x * gridDim.x)"
)
# The bias kernels walk the flat array as the others do and carry the column along: one modulo
# per thread, then an addition and a compare per element (not a 64-bit modulo per element).
_BIAS_LOOP = (
    "const long long stride = (long long)blockDim.x * gridDim.x, step = stride % cols;\n"
    "  long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x, c = i % cols;\n"
    "  for (; i < n; i += stride, c = c + step < cols ? c + step : c + step - cols)"
)


def kernel_name(kind: str, act: str, dropout: bool) -> str:
    return f"{kind}_{act}{'_dropout' if dropout else ''}"


def _bias_source(act: str, dropout: bool) -> str:
    body = "T x = z[i] + b[c]; z[i] = x;"
    body += " T y = x;" if act == "identity" else f" T y = {_FORWARD[act]}; h[i] = y;"
    if dropout:
        body += " a[i] = y * mask[i];"
    return (
        f'extern "C" __global__ void {kernel_name("bias", act, dropout)}(T* z, const T* b, '
        "const T* mask, T* h, T* a, long long n, long long cols) {\n"
        f"  {_BIAS_LOOP} {{ {body} }}\n}}\n"
    )


def _grad_source(act: str, dropout: bool) -> str:
    load = "T d = g[i] * mask[i];" if dropout else "T d = g[i];"
    return (
        f'extern "C" __global__ void {kernel_name("grad", act, dropout)}(T* g, const T* mask, '
        "const T* z, const T* h, long long n) {\n"
        f"  {_LOOP} {{ {load} g[i] = {_BACKWARD[act]}; }}\n}}\n"
    )


_SOFTMAX_XENT = r"""
// NumPy's argmax order: a NaN before any number, then the larger value, then the first column;
// column `none` holds nothing.
__device__ bool comes_first(T a, long long ia, T b, long long ib, long long none) {
  if (ia == none || ib == none) return ib == none && ia != none;
  if (a != a || b != b) return a != a && (b == b || ia < ib);
  return a > b || (a == b && ia < ib);
}

// Softmax cross-entropy, one row per group of `lanes` threads (a power of two up to THREADS): the
// group's threads stride over the row's columns, so adjacent threads read adjacent logits, and
// combine their maxima and sums in shared memory in a fixed tree order. Row r's loss goes to
// part[r] and whether its arg max is its label to part[rows + r]; xent_sums adds them up.
extern "C" __global__ void softmax_xent(const T* logits, const long long* labels, T* grad,
                                        T* part, long long rows, long long cols, int lanes) {
  __shared__ T top_of[THREADS];
  __shared__ long long best_of[THREADS];
  __shared__ T total_of[THREADS];
  const int t = threadIdx.x, lane = t % lanes, first_lane = t - lane;
  const long long per_block = blockDim.x / lanes;
  for (long long first = blockIdx.x * per_block; first < rows; first += gridDim.x * per_block) {
    const long long r = first + t / lanes;
    const bool live = r < rows;
    const T* x = logits + (live ? r : 0) * cols;
    T top = 0;
    long long best = cols;
    if (live)
      for (long long c = lane; c < cols; c += lanes)
        if (comes_first(x[c], c, top, best, cols)) { top = x[c]; best = c; }
    top_of[t] = top;
    best_of[t] = best;
    __syncthreads();
    for (int half = lanes / 2; half > 0; half /= 2) {
      const int u = t + half;
      if (lane < half && comes_first(top_of[u], best_of[u], top_of[t], best_of[t], cols)) {
        top_of[t] = top_of[u];
        best_of[t] = best_of[u];
      }
      __syncthreads();
    }
    top = top_of[first_lane];
    best = best_of[first_lane];
    T total = 0;
    if (live)
      for (long long c = lane; c < cols; c += lanes) total += exp(x[c] - top);
    total_of[t] = total;
    __syncthreads();
    for (int half = lanes / 2; half > 0; half /= 2) {
      if (lane < half) total_of[t] += total_of[t + half];
      __syncthreads();
    }
    if (!live) continue;
    const T lse = log(total_of[first_lane]);
    const long long y = labels[r];
    T* g = grad + r * cols;
    for (long long c = lane; c < cols; c += lanes)
      g[c] = (exp((x[c] - top) - lse) - (c == y ? (T)1 : (T)0)) / (T)rows;
    if (lane == 0) {
      part[r] = -((x[y] - top) - lse);
      part[rows + r] = best == y ? (T)1 : (T)0;
    }
  }
}

// One block adds the rows' losses and correct counts to the epoch's sums: each thread sums a
// strided share left to right, then a fixed tree; the same order on every run.
extern "C" __global__ void xent_sums(const T* part, T* sums, long long rows) {
  __shared__ T loss_of[THREADS];
  __shared__ T correct_of[THREADS];
  T loss = 0, correct = 0;
  for (long long r = threadIdx.x; r < rows; r += blockDim.x) {
    loss += part[r];
    correct += part[rows + r];
  }
  loss_of[threadIdx.x] = loss;
  correct_of[threadIdx.x] = correct;
  __syncthreads();
  for (int half = THREADS / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      loss_of[threadIdx.x] += loss_of[threadIdx.x + half];
      correct_of[threadIdx.x] += correct_of[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) { sums[0] += loss_of[0]; sums[1] += correct_of[0]; }
}
"""

_ADAM = r"""
// Adam/AdamW as torch.optim.Adam computes it (see xpmlp.core.optim.Adam), in the same order.
extern "C" __global__ void adam(T* p, const T* g, T* m, T* v, long long n, T b1, T one_minus_b1,
                                T b2, T one_minus_b2, T decay, T bias2_sqrt, T eps, T step_size) {
  LOOP {
    T gi = g[i];
    T mi = m[i] * b1 + gi * one_minus_b1;
    T vi = v[i] * b2 + (gi * gi) * one_minus_b2;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - (mi / (sqrt(vi) / bias2_sqrt + eps)) * step_size;
  }
}
"""

_DROPOUT_MASK = r"""
// xpmlp.core.rng.dropout_mask: keep element i when hash(hash(i * golden) ^ key) >> 8 >= threshold.
__device__ unsigned int hash32(unsigned int x) {
  x ^= x >> 16; x *= 0x7FEB352Du; x ^= x >> 15; x *= 0x846CA68Bu; return x ^ (x >> 16);
}
extern "C" __global__ void dropout_mask(T* mask, long long n, unsigned int key,
                                        unsigned int threshold, T scale) {
  LOOP {
    unsigned int bits = hash32(hash32((unsigned int)i * 0x9E3779B9u) ^ key);
    mask[i] = (bits >> 8) >= threshold ? scale : (T)0;
  }
}
"""


def cuda_source(dtype: str) -> str:
    """The whole CUDA translation unit for ``float32`` or ``float64``."""
    parts = [
        f"typedef {'float' if dtype == 'float32' else 'double'} T;\n",
        f"#define THREADS {THREADS}\n#define LEAKY {ops.LEAKY_SLOPE!r}\n",
    ]
    for act in FUSED_ACTIVATIONS:
        for dropout in (False, True):
            parts += [_bias_source(act, dropout), _grad_source(act, dropout)]
    parts += [_SOFTMAX_XENT, _ADAM.replace("LOOP", _LOOP), _DROPOUT_MASK.replace("LOOP", _LOOP)]
    return "".join(parts)


def kernel_names() -> list[str]:
    names = [
        kernel_name(kind, act, dropout)
        for act in FUSED_ACTIVATIONS
        for dropout in (False, True)
        for kind in ("bias", "grad")
    ]
    return [*names, "softmax_xent", "xent_sums", "adam", "dropout_mask"]


def compile_module(cupy, dtype: str):
    """The kernels for ``dtype`` compiled for the current device and loaded there: a module whose
    ``get_function(name)`` launches as ``function(grid, block, args)``."""
    binary = cupy.cuda.compiler.compile_using_nvrtc(
        cuda_source(dtype), NVRTC_OPTIONS, cache_in_memory=True
    )
    module = cupy.cuda.function.Module()
    module.load(binary)
    return module
