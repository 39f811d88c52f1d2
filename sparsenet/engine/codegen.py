"""C source for one LeNet's inference, generated from its weights (numbers only).

The convolutions are written out weight by weight: every non-zero conv weight becomes a
constant in a fused multiply-add over a whole output-row vector, and a zero weight is simply not
written, so pruning removes work one weight at a time (Elsen et al. 2020, "Fast Sparse
ConvNets"; SparseDNN 2021).  Each conv layer is fused with its 2x2 max-pool, bias and ReLU: two
conv rows are accumulated in registers, pooled across rows lane by lane and across columns by
one shuffle, and only the pooled map is written.  The fully connected layers run over blocks of
``lanes`` images (one image per vector lane) from CSR arrays the runtime passes in, so a
pruned weight costs nothing there either.

The source depends on the weights, the input size and the vector width only; it is keyed and
compiled by :mod:`sparsenet.cbuild` and called by :mod:`sparsenet.engine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GENERATOR_VERSION = 2  # bump when the generated code changes: it is part of the cache key
KERNEL = 5

@dataclass(frozen=True)
class Isa:
    """A vector extension: its width, how many vectors a pass keeps, and its intrinsics."""

    name: str
    lanes: int           # floats per vector
    pass_vectors: int    # most conv-row vectors one pass computes
    registers: int       # vector registers
    header: str


ISAS: dict[str, Isa] = {
    "avx512": Isa("avx512", 16, 4, 32, """\
typedef __m512 vf;
#define LOAD(p) _mm512_loadu_ps(p)
#define STORE(p, v) _mm512_storeu_ps(p, v)
#define SET1(x) _mm512_set1_ps(x)
#define FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define MAX(a, b) _mm512_max_ps(a, b)
#define ADD(a, b) _mm512_add_ps(a, b)
#define ZERO() _mm512_setzero_ps()
static inline vf pool2(vf a, vf b) {  /* max of adjacent lanes of a:b, in order */
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  return _mm512_max_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b));
}
"""),
    "avx2": Isa("avx2", 8, 2, 16, """\
typedef __m256 vf;
#define LOAD(p) _mm256_loadu_ps(p)
#define STORE(p, v) _mm256_storeu_ps(p, v)
#define SET1(x) _mm256_set1_ps(x)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define MAX(a, b) _mm256_max_ps(a, b)
#define ADD(a, b) _mm256_add_ps(a, b)
#define ZERO() _mm256_setzero_ps()
static inline vf pool2(vf a, vf b) {  /* max of adjacent lanes of a:b, in order */
  vf m = _mm256_max_ps(_mm256_shuffle_ps(a, b, 0x88), _mm256_shuffle_ps(a, b, 0xDD));
  return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(m), 0xD8));
}
"""),
}


@dataclass(frozen=True)
class ConvPlan:
    """Geometry of one conv + 2x2 max-pool layer on padded row buffers.

    A pooled output row is computed in passes of ``per_pass`` vectors over two conv rows, for a
    group of ``group`` filters at once: every input vector loaded serves all of the group's
    non-zero weights that read it.
    """

    in_channels: int
    filters: int
    in_side: int       # input rows = columns
    isa: Isa
    in_stride: int = 0   # floats between input rows (padded)
    out_stride: int = 0  # floats between pooled output rows (padded)

    @property
    def pooled_side(self) -> int:
        return (self.in_side - KERNEL + 1) // 2

    @property
    def passes(self) -> tuple[int, int]:
        """(vectors per pass, passes per row), vectors in pairs: pooling halves a pair into one."""
        vectors = -(-2 * self.pooled_side // self.isa.lanes)
        vectors += vectors % 2
        count = -(-vectors // self.isa.pass_vectors)
        per_pass = -(-vectors // count)
        return per_pass + per_pass % 2, count

    @property
    def group(self) -> int:
        """Filters per pass: as many as the registers hold, with each filter's two conv rows of
        accumulators and the two weights of each input vector, plus one input vector."""
        return max(1, min(self.filters, (self.isa.registers - 2) // (2 * (self.passes[0] + 1))))

    @property
    def covered_columns(self) -> int:
        per_pass, count = self.passes
        return per_pass * count * self.isa.lanes


def row_stride(columns: int, lanes: int) -> int:
    """A row length of whole vectors holding ``columns`` floats."""
    return -(-columns // lanes) * lanes


def plan(in_channels: int, widths: tuple[int, int], image_size: int, isa: Isa) -> tuple[ConvPlan, ConvPlan]:
    """The two conv layers' geometry; rows are padded so every vector load stays inside them."""
    probe1 = ConvPlan(in_channels, widths[0], image_size, isa)
    probe2 = ConvPlan(widths[0], widths[1], probe1.pooled_side, isa)
    in1 = row_stride(probe1.covered_columns + KERNEL - 1, isa.lanes)
    in2 = row_stride(max(probe2.covered_columns + KERNEL - 1, probe1.covered_columns // 2), isa.lanes)
    out2 = row_stride(probe2.covered_columns // 2, isa.lanes)
    return (ConvPlan(in_channels, widths[0], image_size, isa, in1, in2),
            ConvPlan(widths[0], widths[1], probe1.pooled_side, isa, in2, out2))


def _float(value: float) -> str:
    """An exact C literal of a finite float32 value (hexadecimal: no rounding in print or parse)."""
    value = float(np.float32(value))
    if not np.isfinite(value):  # "nanf" / "inff" would not compile
        raise ValueError(f"{value} has no C literal: the engine compiles finite weights only")
    return value.hex() + "f"


def _conv_group(name: str, layer: ConvPlan, weights: np.ndarray, biases: np.ndarray, table: list[str]) -> str:
    """One pass of one pooled row for a group of filters, written out weight by weight, then
    pooled, biased, ReLU'd and stored.

    Only the non-zero weights appear, each as a fused multiply-add over the pass's vectors; their
    values go to ``table`` and are read as 4-byte broadcasts (as full-vector constants they would
    take 64 bytes of cache each).  A function per row pass, never inlined (the caller loops over
    rows): inside a loop the compiler would hoist the weights out of it, or carry loads from row
    to row, and spill them.  Input row r of the pass feeds conv row 0 through kernel row r and
    conv row 1 through r - 1, so one load serves up to two weights of every filter of the group.
    """
    per_pass, _ = layer.passes
    lanes, plane = layer.isa.lanes, layer.in_side * layer.in_stride
    filters, base = range(len(weights)), len(table)
    lines = [f"static __attribute__((noinline)) void {name}(const float *restrict p, float *restrict out, "
             "const float *restrict w) {"]
    accumulators = [f"a{f}_{dy}_{k}" for f in filters for dy in range(2) for k in range(per_pass)]
    lines.append(f"  vf {', '.join(f'{a} = ZERO()' for a in accumulators)};")
    for channel in range(layer.in_channels):
        for r in range(KERNEL + 1):
            for kx in range(KERNEL):
                uses = [(f, dy, weights[f, channel, r - dy, kx]) for f in filters for dy in range(2)
                        if 0 <= r - dy < KERNEL and weights[f, channel, r - dy, kx] != 0]
                if not uses:
                    continue
                names = []
                for _, _, value in uses:
                    names.append(f"SET1(w[{len(table) - base}])")
                    table.append(_float(value))
                lines.append("  { " + " ".join(f"const vf w{i} = {n};" for i, n in enumerate(names)))
                for k in range(per_pass):
                    offset = channel * plane + r * layer.in_stride + kx + k * lanes
                    lines.append(f"    {{ const vf x = LOAD(p + {offset}); "
                                 + " ".join(f"a{f}_{dy}_{k} = FMA(w{i}, x, a{f}_{dy}_{k});"
                                            for i, (f, dy, _) in enumerate(uses)) + " }")
                lines.append("  }")
    out_plane = layer.pooled_side * layer.out_stride
    for f in filters:
        lines.append(f"  {{ const vf b = SET1(w[{len(table) - base}]);")
        table.append(_float(biases[f]))
        for k in range(0, per_pass, 2):
            pooled = f"pool2(MAX(a{f}_0_{k}, a{f}_1_{k}), MAX(a{f}_0_{k + 1}, a{f}_1_{k + 1}))"
            lines.append(f"    STORE(out + {f * out_plane + k * lanes // 2}, MAX(ZERO(), ADD({pooled}, b)));")
        lines.append("  }")
    return "\n".join([*lines, "}", ""])


def _conv_layer(index: int, layer: ConvPlan, weight: np.ndarray, bias: np.ndarray) -> str:
    """The group functions of one conv layer, its weight table, and conv<index>(in, out, g0,
    step): groups g0, g0 + step, … over one image."""
    per_pass, passes = layer.passes
    lanes = layer.isa.lanes
    out_plane = layer.pooled_side * layer.out_stride
    starts = range(0, layer.filters, layer.group)
    table: list[str] = []
    parts, offsets = [], []
    for g, start in enumerate(starts):
        offsets.append(len(table))
        group = slice(start, start + layer.group)
        parts.append(_conv_group(f"conv{index}_g{g}", layer, weight[group], bias[group], table))
    names = ", ".join(f"conv{index}_g{g}" for g in range(len(starts)))
    parts.append(f"""static const float conv{index}_table[{max(len(table), 1)}] = {{{", ".join(table) or "0"}}};
static const int conv{index}_offsets[{len(starts)}] = {{{", ".join(map(str, offsets))}}};
static void (*const conv{index}_groups[{len(starts)}])(const float *restrict, float *restrict, const float *restrict) = {{{names}}};
static void conv{index}(const float *in, float *out, int g0, int step) {{
  const float *table = conv{index}_table;
  __asm__("" : "+r"(table));  /* read the weights as data: folded into code they would be 64-byte vectors */
  for (int g = g0; g < {len(starts)}; g += step)
    for (int py = 0; py < {layer.pooled_side}; py++)
      for (int pass = 0; pass < {passes}; pass++)
        conv{index}_groups[g](in + 2 * py * {layer.in_stride} + pass * {per_pass * lanes},
                              out + g * {layer.group * out_plane} + py * {layer.out_stride} + pass * {per_pass * lanes // 2},
                              table + conv{index}_offsets[g]);
}}
""")
    return "\n".join(parts)


def generate(conv_weights: list[np.ndarray], conv_biases: list[np.ndarray], image_size: int,
             fc_shapes: list[tuple[int, int]], isa_name: str) -> str:
    """C source of ``sparsenet_forward`` for a LeNet with these conv weights (float32 arrays)."""
    isa = ISAS[isa_name]
    c1, c2 = (w.shape[0] for w in conv_weights)
    in_channels = conv_weights[0].shape[1]
    first, second = plan(in_channels, (c1, c2), image_size, isa)
    side2 = second.pooled_side
    features = c2 * side2 * side2
    if fc_shapes[0][1] != features:
        raise ValueError(f"fc1 reads {fc_shapes[0][1]} features, the convolutions give {features}")
    lanes = isa.lanes
    sizes = {
        "IN_PLANE": image_size * first.in_stride,
        "IN_STRIDE": first.in_stride,
        "IN_FLOATS": in_channels * image_size * first.in_stride + lanes,
        "H1_PLANE": first.pooled_side * first.out_stride,
        "H1_FLOATS": c1 * first.pooled_side * first.out_stride + lanes,
        "H2_PLANE": side2 * second.out_stride,
        "H2_STRIDE": second.out_stride,
        "H2_FLOATS": c2 * side2 * second.out_stride + lanes,
        "SIDE": image_size, "CHANNELS": in_channels, "C1": c1, "C2": c2, "SIDE2": side2,
        "FEATURES": features, "F1": fc_shapes[0][0], "F2": fc_shapes[1][0], "CLASSES": fc_shapes[2][0],
        "LANES": lanes,
    }
    parts = [f"/* SparseNet engine, generator version {GENERATOR_VERSION}: {isa.name}, {image_size}x{image_size} input */",
             "#include <immintrin.h>", "#include <pthread.h>", "#include <stdlib.h>", "#include <string.h>", "#include <omp.h>", "",
             isa.header, "\n".join(f"#define {key} {value}" for key, value in sizes.items()), ""]
    for index, (layer, weight, bias) in enumerate(zip((first, second), conv_weights, conv_biases), start=1):
        parts.append(_conv_layer(index, layer, weight, bias))
    parts.append(RUNTIME_C)
    return "\n".join(parts)


# The part of the source that does not depend on the weights: buffers, input copy, fc layers,
# the block loop and its two ways of using the threads.
RUNTIME_C = r"""
#define FC_FLOATS (LANES * (FEATURES + F1 + F2 + CLASSES))
#define SCRATCH_FLOATS (IN_FLOATS + H1_FLOATS + H2_FLOATS + FC_FLOATS)

typedef struct { float *in, *h1, *h2, *feat, *fc1, *fc2, *fc3; } scratch_t;

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static void make_scratch_key(void) { pthread_key_create(&scratch_key, free); }

/* Per-thread buffers, zeroed once and kept (padding lanes then always hold finite values);
   freed when the thread ends. */
static scratch_t thread_scratch(void) {
  static __thread float *buffer;
  if (!buffer) {
    pthread_once(&scratch_once, make_scratch_key);
    buffer = aligned_alloc(64, ((SCRATCH_FLOATS * sizeof(float) + 63) / 64) * 64);
    if (buffer) {
      memset(buffer, 0, SCRATCH_FLOATS * sizeof(float));
      pthread_setspecific(scratch_key, buffer);
    }
  }
  scratch_t s = {0};
  if (!buffer) return s;
  s.in = buffer; s.h1 = s.in + IN_FLOATS; s.h2 = s.h1 + H1_FLOATS; s.feat = s.h2 + H2_FLOATS;
  s.fc1 = s.feat + LANES * FEATURES; s.fc2 = s.fc1 + LANES * F1; s.fc3 = s.fc2 + LANES * F2;
  return s;
}

/* Copies one image into the padded buffer; returns 1 if it holds a NaN or an infinity (the
   vector max and ReLU would drop a NaN where PyTorch propagates it: such an image gets NaN
   logits instead). */
static int copy_image(const float *x, long sc, long sy, long sx, float *in) {
  int bad = 0;
  if (sc == 1 && sx == CHANNELS) {  /* channels last: one pass over each row, channels split */
    for (int y = 0; y < SIDE; y++) {
      const float *src = x + y * sy;
      float *dst = in + y * IN_STRIDE;
      for (int i = 0; i < SIDE; i++)
        for (int c = 0; c < CHANNELS; c++) {
          float v = src[i * CHANNELS + c];
          dst[c * IN_PLANE + i] = v;
          bad |= (v - v) != 0.0f;
        }
    }
    return bad;
  }
  for (int c = 0; c < CHANNELS; c++)
    for (int y = 0; y < SIDE; y++) {
      const float *src = x + c * sc + y * sy;
      float *dst = in + c * IN_PLANE + y * IN_STRIDE;
      if (sx == 1)
        for (int i = 0; i < SIDE; i++) { float v = src[i]; dst[i] = v; bad |= (v - v) != 0.0f; }
      else
        for (int i = 0; i < SIDE; i++) { float v = src[i * sx]; dst[i] = v; bad |= (v - v) != 0.0f; }
    }
  return bad;
}

/* conv2's pooled rows of filters [f0, f1) → the block's features, lane ``lane``. */
static void scatter_features(const float *h2, float *feat, int lane, int f0, int f1, int step) {
  for (int f = f0; f < f1; f += step)
    for (int y = 0; y < SIDE2; y++)
      for (int x = 0; x < SIDE2; x++)
        feat[((f * SIDE2 + y) * SIDE2 + x) * LANES + lane] = h2[f * H2_PLANE + y * H2_STRIDE + x];
}

typedef struct { const int *ptr, *idx; const float *val, *bias; } csr_t;

/* outputs [o0, o1) step ``step`` of one fully connected layer over a block (lane = image);
   four accumulators, so the multiply-adds do not wait on each other. */
static void fc(csr_t w, const float *restrict in, float *restrict out, int o0, int o1, int step, int relu) {
  for (int o = o0; o < o1; o += step) {
    vf acc = SET1(w.bias[o]);
    /* chunks of 1024 terms summed apart, then added up: the rounding error of a long sum (fc1
       reads 250,000 inputs at 512 px) stays that of a short one */
    for (int chunk = w.ptr[o], end = w.ptr[o + 1]; chunk < end; chunk += 1024) {
      vf acc0 = ZERO(), acc1 = ZERO(), acc2 = ZERO(), acc3 = ZERO();
      int k = chunk, stop = end - chunk < 1024 ? end : chunk + 1024;
      for (; k + 4 <= stop; k += 4) {
        acc0 = FMA(SET1(w.val[k]), LOAD(in + (long)w.idx[k] * LANES), acc0);
        acc1 = FMA(SET1(w.val[k + 1]), LOAD(in + (long)w.idx[k + 1] * LANES), acc1);
        acc2 = FMA(SET1(w.val[k + 2]), LOAD(in + (long)w.idx[k + 2] * LANES), acc2);
        acc3 = FMA(SET1(w.val[k + 3]), LOAD(in + (long)w.idx[k + 3] * LANES), acc3);
      }
      for (; k < stop; k++) acc0 = FMA(SET1(w.val[k]), LOAD(in + (long)w.idx[k] * LANES), acc0);
      acc = ADD(acc, ADD(ADD(acc0, acc1), ADD(acc2, acc3)));
    }
    STORE(out + (long)o * LANES, relu ? MAX(acc, ZERO()) : acc);
  }
}

static void write_logits(const float *fc3, float *logits, long first, long count, const char *bad) {
  for (long lane = 0; lane < count; lane++)
    for (int o = 0; o < CLASSES; o++)
      logits[(first + lane) * CLASSES + o] = bad[lane] ? __builtin_nanf("") : fc3[o * LANES + lane];
}

/* Adds the seconds since *clock to seconds[stage] (when timing) and restarts the clock. */
static void lap(double *seconds, int stage, double *clock) {
  if (!seconds) return;
  double now = omp_get_wtime();
  #pragma omp atomic
  seconds[stage] += now - *clock;
  *clock = now;
}

/* One block of up to LANES images on one thread. */
static void run_block(scratch_t s, const float *x, long first, long count, long sn, long sc, long sy, long sx,
                      const csr_t *fcw, float *logits, double *seconds) {
  double clock = seconds ? omp_get_wtime() : 0;
  char bad[LANES];
  for (long lane = 0; lane < count; lane++) {
    bad[lane] = (char)copy_image(x + (first + lane) * sn, sc, sy, sx, s.in);
    lap(seconds, 0, &clock);
    conv1(s.in, s.h1, 0, 1);
    lap(seconds, 1, &clock);
    conv2(s.h1, s.h2, 0, 1);
    scatter_features(s.h2, s.feat, (int)lane, 0, C2, 1);
    lap(seconds, 2, &clock);
  }
  fc(fcw[0], s.feat, s.fc1, 0, F1, 1, 1);
  lap(seconds, 3, &clock);
  fc(fcw[1], s.fc1, s.fc2, 0, F2, 1, 1);
  lap(seconds, 4, &clock);
  fc(fcw[2], s.fc2, s.fc3, 0, CLASSES, 1, 0);
  write_logits(s.fc3, logits, first, count, bad);
  lap(seconds, 5, &clock);
}

/* Logits of ``n`` images (x: floats at strides sn, sc, sy, sx) on ``threads`` threads.  With
   ``seconds`` (6 doubles), adds each stage's time per thread (input copy, conv1, conv2, fc1,
   fc2, fc3).  Returns 0, or -1 when scratch memory could not be allocated. */
int sparsenet_forward(const float *x, long n, long sn, long sc, long sy, long sx, float *logits,
                      const int *ptr, const int *idx, const float *val, const float *bias,
                      const long *offsets, int threads, double *seconds) {
  csr_t fcw[3];
  for (int l = 0; l < 3; l++) {
    fcw[l].ptr = ptr + offsets[4 * l]; fcw[l].idx = idx + offsets[4 * l + 1];
    fcw[l].val = val + offsets[4 * l + 2]; fcw[l].bias = bias + offsets[4 * l + 3];
  }
  long blocks = (n + LANES - 1) / LANES;
  int failed = 0;
  if (threads < 1) threads = 1;
  if (blocks >= threads || threads == 1) {  /* whole blocks per thread */
    double lapped[6] = {0};
    #pragma omp parallel for num_threads(threads) schedule(static) reduction(|: failed)
    for (long b = 0; b < blocks; b++) {
      scratch_t s = thread_scratch();
      if (!s.in) { failed = 1; continue; }
      long first = b * LANES, count = n - first < LANES ? n - first : LANES;
      run_block(s, x, first, count, sn, sc, sy, sx, fcw, logits, seconds ? lapped : NULL);
    }
    if (seconds) {
      long used = blocks < threads ? blocks : threads;
      for (int i = 0; i < 6; i++) seconds[i] += lapped[i] / used;
    }
    return failed ? -1 : 0;
  }
  /* Fewer blocks than threads (small batches): the threads share each image, split by filter
     group; the first thread's clock times the stages (waits included). */
  scratch_t s = thread_scratch();
  if (!s.in) return -1;
  for (long b = 0; b < blocks; b++) {
    long first = b * LANES, count = n - first < LANES ? n - first : LANES;
    char bad[LANES];
    #pragma omp parallel num_threads(threads)
    {
      int t = omp_get_thread_num(), step = omp_get_num_threads();
      double *timing = t == 0 ? seconds : NULL, clock = timing ? omp_get_wtime() : 0;
      for (long lane = 0; lane < count; lane++) {
        #pragma omp single
        bad[lane] = (char)copy_image(x + (first + lane) * sn, sc, sy, sx, s.in);
        lap(timing, 0, &clock);
        conv1(s.in, s.h1, t, step);
        #pragma omp barrier
        lap(timing, 1, &clock);
        conv2(s.h1, s.h2, t, step);
        #pragma omp barrier
        scatter_features(s.h2, s.feat, (int)lane, t, C2, step);
        #pragma omp barrier
        lap(timing, 2, &clock);
      }
      fc(fcw[0], s.feat, s.fc1, t, F1, step, 1);
      #pragma omp barrier
      lap(timing, 3, &clock);
      fc(fcw[1], s.fc1, s.fc2, t, F2, step, 1);
      #pragma omp barrier
      lap(timing, 4, &clock);
      fc(fcw[2], s.fc2, s.fc3, t, CLASSES, step, 0);
      #pragma omp barrier
      #pragma omp single
      write_logits(s.fc3, logits, first, count, bad);
      lap(timing, 5, &clock);
    }
  }
  return 0;
}
"""
