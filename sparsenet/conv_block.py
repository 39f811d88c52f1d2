"""LeNet's convolution block, conv → 2×2 max-pool → ReLU, with a compiled backward for training.

On CPU the block's time under autograd goes mostly to three things, none of them arithmetic:
oneDNN's weight and input gradients for convolutions with 3-16 channels, the max-pool's index
bookkeeping and the zero-filled full-size gradient map its backward scatters into.  Here the
forward keeps oneDNN's convolution and pools in C, recording for each pooled value which of its
four inputs won (or that the ReLU blocked it); the backward then visits only those winners:

    weight gradient  every winner adds  gradient × its input patch  to its filter's sum
    input gradient   every winner adds  gradient × its filter       to its input patch

On channels-last tensors both patches are K contiguous runs of K × channels floats.  Sums run in
a fixed order over fixed blocks of images, so results do not depend on the thread count:
same inputs, same bytes.  On channels-last input (the pipeline's batches) the forward's values
are PyTorch's bit for bit; gradients equal autograd's up to float rounding (exactly where sums
are exact, ties included: the first maximum of a window wins).  A NaN or infinite input or weight
still gives NaN gradients, but not at every place autograd's would: the losers' zero gradients
are never multiplied.

Used when a gradient is needed on CPU float32 tensors outside autocast; otherwise, and where the
C code cannot be built (no compiler: one notice line), the plain PyTorch operations run.  The
source holds no model numbers, only the layer's sizes: one library per layer shape and vector
extension, compiled once and cached by :mod:`sparsenet.cbuild`.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

import torch
import torch.nn.functional as F

from sparsenet import cbuild

NO_GRADIENT = 255  # a window's code when the ReLU passes no gradient (its max is <= 0)
IMAGES_PER_BLOCK = 8  # weight gradients are summed per block of images, then blocks in order
MAX_FILTERS = 4096  # the pooling keeps a window's channels on the thread's stack (~100 KB at most)

# The kernels for one layer shape: the #defines come first (numbers only, see `source`), so
# every loop has a fixed trip count and unrolls into whole vectors.
TEMPLATE = r"""
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define OH (H - K + 1)           /* conv output rows and columns */
#define OW (W - K + 1)
#define PH (OH / 2)              /* pooled rows and columns (floor, as max_pool2d) */
#define PW (OW / 2)
#define RUN (K * CIN)            /* floats in one row of a patch on channels-last input */
#define PATCH (K * RUN)

/* Vectors of VL floats; a run of n floats is whole vectors and one masked one (masked lanes are
   neither read nor written, so a run may end at the end of a tensor). */
#ifdef __AVX512F__
#define VL 16
typedef __m512 vf;
static inline __mmask16 lanes(int n) { return (__mmask16)(n >= VL ? 0xFFFF : (1u << n) - 1); }
#define LOAD_N(p, n) _mm512_maskz_loadu_ps(lanes(n), p)
#define STORE_N(p, v, n) _mm512_mask_storeu_ps(p, lanes(n), v)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define SET1(x) _mm512_set1_ps(x)
#else
#define VL 8
typedef __m256 vf;
static inline __m256i lanes(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
#define LOAD_N(p, n) _mm256_maskload_ps(p, lanes(n))
#define STORE_N(p, v, n) _mm256_maskstore_ps(p, lanes(n), v)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define SET1(x) _mm256_set1_ps(x)
#endif
#define VECTORS(n) (((n) + VL - 1) / VL)
#define REST(n, v) ((n) - (v) * VL)  /* floats left from vector v on */
#define CHANNELS_UP (VECTORS(COUT) * VL)

/* Runs the statements that follow `image` for every window of that image whose winner passes a
   gradient, with oc (the filter), gradient (the window's) and corner (the winner's offset in the
   image's N x H x W x CIN input: its patch's first float) set.  Only winners carry a gradient:
   the losers' zeros would add nothing (except NaN times their zero, which is not propagated). */
#define FOR_EACH_WINNER(image, ...)                                                              \
  for (int py = 0; py < PH; py++)                                                                \
    for (int px = 0; px < PW; px++) {                                                            \
      const int64_t at = (((image) * PH + py) * PW + px) * COUT;                                 \
      for (int oc = 0; oc < COUT; oc++) {                                                        \
        const uint8_t which = code[at + oc];                                                     \
        if (which == NO_GRADIENT) continue;                                                      \
        const float gradient = grad[at + oc];                                                    \
        const int64_t corner = ((2 * py + (which >> 1)) * W + 2 * px + (which & 1)) * CIN;       \
        __VA_ARGS__                                                                              \
      }                                                                                          \
    }

/* y: conv output N x OH x OW x COUT (channels last). out: relu(2x2 max-pool(y)), N x PH x PW x
   COUT; code: which element of each window won (0..3, row-major; as PyTorch: the first of ties,
   the last NaN), or NO_GRADIENT where the ReLU blocks the gradient. */
void pool_relu_forward(const float *restrict y, float *restrict out, uint8_t *restrict code, int64_t n,
                       int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t row = 0; row < n * PH; row++) {
    const int64_t image = row / PH, py = row % PH;
    const float *top = y + (image * OH + 2 * py) * OW * COUT, *bottom = top + OW * COUT;
    float *o = out + row * PW * COUT;
    uint8_t *k = code + row * PW * COUT;
    /* A window's four elements go through whole vectors of channels: a fixed-size loop that
       compiles to vector compares and blends for any channel count. */
    float t0[CHANNELS_UP], t1[CHANNELS_UP], b0[CHANNELS_UP], b1[CHANNELS_UP], m[CHANNELS_UP];
    uint8_t which[CHANNELS_UP];
    for (int64_t px = 0; px < PW; px++) {
      for (int v = 0; v < VECTORS(COUT); v++) {
        const int64_t at = 2 * px * COUT + v * VL;
        const int rest = REST(COUT, v);
        STORE_N(t0 + v * VL, LOAD_N(top + at, rest), VL);
        STORE_N(t1 + v * VL, LOAD_N(top + at + COUT, rest), VL);
        STORE_N(b0 + v * VL, LOAD_N(bottom + at, rest), VL);
        STORE_N(b1 + v * VL, LOAD_N(bottom + at + COUT, rest), VL);
      }
      for (int ch = 0; ch < CHANNELS_UP; ch++) {
        float value = t0[ch];
        int w = 0, take;
        take = t1[ch] > value || t1[ch] != t1[ch]; value = take ? t1[ch] : value; w = take ? 1 : w;
        take = b0[ch] > value || b0[ch] != b0[ch]; value = take ? b0[ch] : value; w = take ? 2 : w;
        take = b1[ch] > value || b1[ch] != b1[ch]; value = take ? b1[ch] : value; w = take ? 3 : w;
        const int passes = value > 0.0f || value != value;  /* as autograd: relu's backward passes NaN */
        m[ch] = passes ? value : 0.0f;
        which[ch] = (uint8_t)(passes ? w : NO_GRADIENT);
      }
      for (int v = 0; v < VECTORS(COUT); v++)
        STORE_N(o + px * COUT + v * VL, LOAD_N(m + v * VL, VL), REST(COUT, v));
      memcpy(k + px * COUT, which, COUT);
    }
  }
}

/* Gradients of weight (COUT x CIN x K x K) and bias (COUT) from x (N x H x W x CIN) and the pooled
   output's gradient (N x PH x PW x COUT) with its codes.  Images are summed in blocks of
   IMAGES_PER_BLOCK, then the blocks in order.  Returns 0, or -1 without memory. */
int conv_weight_grad(const float *restrict x, const float *restrict grad, const uint8_t *restrict code,
                     float *restrict gw, float *restrict gb, int64_t n, int threads) {
  const int64_t blocks = (n + IMAGES_PER_BLOCK - 1) / IMAGES_PER_BLOCK;
  /* per block and filter: K patch rows of whole vectors, then the bias */
  float (*sums)[COUT][K * VECTORS(RUN) * VL + 1] = calloc((size_t)blocks, sizeof(*sums));
  if (!sums) return -1;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t block = 0; block < blocks; block++) {
    const int64_t last = (block + 1) * IMAGES_PER_BLOCK < n ? (block + 1) * IMAGES_PER_BLOCK : n;
    for (int64_t image = block * IMAGES_PER_BLOCK; image < last; image++)
      FOR_EACH_WINNER(image, {
        const vf g = SET1(gradient);
        const float *src = x + image * H * W * CIN + corner;
        float *acc = sums[block][oc];
        for (int ky = 0; ky < K; ky++)
          for (int v = 0; v < VECTORS(RUN); v++) {
            float *a = acc + (ky * VECTORS(RUN) + v) * VL;
            STORE_N(a, FMA(g, LOAD_N(src + ky * W * CIN + v * VL, REST(RUN, v)), LOAD_N(a, VL)), VL);
          }
        acc[K * VECTORS(RUN) * VL] += gradient;
      })
  }
  for (int oc = 0; oc < COUT; oc++) {
    float total = 0.0f;
    for (int64_t block = 0; block < blocks; block++) total += sums[block][oc][K * VECTORS(RUN) * VL];
    if (gb) gb[oc] = total;
    for (int ky = 0; ky < K; ky++)
      for (int j = 0; j < RUN; j++) {  /* [ky][kx][ci] -> PyTorch's [ci][ky][kx] */
        total = 0.0f;
        for (int64_t block = 0; block < blocks; block++) total += sums[block][oc][ky * VECTORS(RUN) * VL + j];
        gw[((oc * CIN + j % CIN) * K + ky) * K + j / CIN] = total;
      }
  }
  free(sums);
  return 0;
}

/* Gradient of x (N x H x W x CIN, written whole) from the pooled output's gradient and codes and
   the weight (COUT x CIN x K x K).  Returns 0, or -1 without memory. */
int conv_input_grad(const float *restrict grad, const uint8_t *restrict code, const float *restrict weight,
                    float *restrict gx, int64_t n, int threads) {
  /* [oc][ky][kx][ci]: a patch row's layout on channels-last input (on the heap: wide layers) */
  float (*filters)[K][VECTORS(RUN) * VL] = calloc(COUT, sizeof(*filters));
  if (!filters) return -1;
  for (int oc = 0; oc < COUT; oc++)
    for (int ci = 0; ci < CIN; ci++)
      for (int ky = 0; ky < K; ky++)
        for (int kx = 0; kx < K; kx++)
          filters[oc][ky][kx * CIN + ci] = weight[((oc * CIN + ci) * K + ky) * K + kx];
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t image = 0; image < n; image++) {
    float *dst_image = gx + image * H * W * CIN;
    memset(dst_image, 0, sizeof(float) * H * W * CIN);
    FOR_EACH_WINNER(image, {
      const vf g = SET1(gradient);
      float *dst = dst_image + corner;
      for (int ky = 0; ky < K; ky++)
        for (int v = 0; v < VECTORS(RUN); v++) {
          float *d = dst + ky * W * CIN + v * VL;
          const int rest = REST(RUN, v);
          STORE_N(d, FMA(g, LOAD_N(filters[oc][ky] + v * VL, VL), LOAD_N(d, rest)), rest);
        }
    })
  }
  free(filters);
  return 0;
}
"""


def source(in_channels: int, filters: int, kernel: int, height: int, width: int) -> str:
    """The kernels' C source for one layer shape (built from these integers only)."""
    numbers = {"CIN": in_channels, "COUT": filters, "K": kernel, "H": height, "W": width,
               "NO_GRADIENT": NO_GRADIENT, "IMAGES_PER_BLOCK": IMAGES_PER_BLOCK}
    return "".join(f"#define {name} {int(value)}\n" for name, value in numbers.items()) + TEMPLATE

_state_lock = threading.Lock()
_libraries: dict[tuple[int, ...], ctypes.CDLL] = {}
_unavailable: list[str] = []  # why the kernels cannot be built here, once known


def _bind(library: ctypes.CDLL) -> ctypes.CDLL:
    """``library`` with its functions' argument and result types declared."""
    pointer, count, threads = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    library.pool_relu_forward.argtypes = [pointer] * 3 + [count, threads]
    library.pool_relu_forward.restype = None
    library.conv_weight_grad.argtypes = [pointer] * 5 + [count, threads]
    library.conv_weight_grad.restype = ctypes.c_int
    library.conv_input_grad.argtypes = [pointer] * 4 + [count, threads]
    library.conv_input_grad.restype = ctypes.c_int
    return library


def kernels(in_channels: int, filters: int, kernel: int, height: int, width: int) -> ctypes.CDLL | None:
    """The compiled kernels for one layer shape, built on first use; None where they cannot be
    built here (said once, on one line)."""
    shape = (in_channels, filters, kernel, height, width)
    with _state_lock:
        if shape not in _libraries and not _unavailable:
            try:
                _libraries[shape] = _bind(cbuild.load(source(*shape), cbuild.choose_isa()))
            except cbuild.BuildError as exc:
                _unavailable.append(str(exc))
                print(f"sparsenet: {exc}; training uses PyTorch's convolution backward (slower)", file=sys.stderr)
        return _libraries.get(shape)


def available() -> bool:
    """Whether the compiled block runs here (builds a tiny layer's kernels to find out)."""
    return kernels(1, 1, 1, 2, 2) is not None


def runs_on() -> str:
    """What computes the block's gradients here: ``compiled by <compiler's file and version>`` or
    ``pytorch``.  (The version line without its first word, which is the name it was called by.)"""
    if not available():
        return "pytorch"
    path, version = cbuild.compiler()
    return f"compiled by {os.path.realpath(path)} {version.partition(' ')[2]}"


def conv_pool_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``relu(max_pool2d(conv2d(x, weight, bias), 2))`` for a stride-1 unpadded square kernel.

    The compiled path runs when a gradient is needed for CPU float32 tensors; its result is
    channels-last.
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    float32 = x.dtype == weight.dtype == torch.float32 and (bias is None or bias.dtype == torch.float32)
    if (needs_grad and float32 and x.device.type == "cpu" and not torch.is_autocast_enabled("cpu") and x.dim() == 4
            and weight.shape[0] <= MAX_FILTERS and weight.shape[-1] == weight.shape[-2]
            and x.shape[-2] >= weight.shape[-1] + 1
            and x.shape[-1] >= weight.shape[-1] + 1):
        library = kernels(x.shape[1], weight.shape[0], weight.shape[-1], x.shape[-2], x.shape[-1])
        if library is not None:
            return _ConvPoolReLU.apply(x, weight, bias, library)
    return F.relu(F.max_pool2d(F.conv2d(x, weight, bias), 2))


def _pointer(tensor: torch.Tensor | None) -> ctypes.c_void_p:
    return ctypes.c_void_p(None if tensor is None else tensor.data_ptr())


def _nhwc(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.contiguous(memory_format=torch.channels_last)


class _ConvPoolReLU(torch.autograd.Function):
    """The compiled block (see the module's documentation)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                library: ctypes.CDLL) -> torch.Tensor:
        x = _nhwc(x)
        y = _nhwc(F.conv2d(x, weight, bias))
        n, c, h, w = y.shape
        out = torch.empty(n, c, h // 2, w // 2, dtype=torch.float32, memory_format=torch.channels_last)
        code = torch.empty(n, c, h // 2, w // 2, dtype=torch.uint8, memory_format=torch.channels_last)
        library.pool_relu_forward(_pointer(y), _pointer(out), _pointer(code), n, torch.get_num_threads())
        ctx.save_for_backward(x, weight, code)
        ctx.has_bias, ctx.library = bias is not None, library
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight, code = ctx.saved_tensors
        grad = _nhwc(grad.float())
        n, threads = x.shape[0], torch.get_num_threads()
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty_like(x, memory_format=torch.channels_last)
            weight_oihw = weight.contiguous()  # held here: C reads it after _pointer returns
            if ctx.library.conv_input_grad(_pointer(grad), _pointer(code), _pointer(weight_oihw),
                                           _pointer(grad_x), n, threads):
                raise MemoryError("sparsenet.conv_block: no memory for the input gradient's filter copy")
        if ctx.needs_input_grad[1] or (ctx.has_bias and ctx.needs_input_grad[2]):
            grad_weight = torch.empty_like(weight, memory_format=torch.contiguous_format)
            grad_bias = torch.empty(weight.shape[0], dtype=torch.float32) if ctx.has_bias else None
            if ctx.library.conv_weight_grad(_pointer(x), _pointer(grad), _pointer(code), _pointer(grad_weight),
                                            _pointer(grad_bias), n, threads):
                raise MemoryError("sparsenet.conv_block: no memory for the weight gradient's partial sums")
        return grad_x, grad_weight if ctx.needs_input_grad[1] else None, grad_bias, None
