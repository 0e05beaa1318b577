// Fused CPU inference kernels for DGCConv2d's gather execution (dgclab/layers/dgc.py) and for
// self-grouped convs.
//
// dgc_forward: the whole layer in one call, so that a small layer at batch 1 pays one dispatch
// instead of some forty: the eval-mode BN-ReLU folded to relu(x * scale + shift), the global
// pool, every head's saliency MLP, the head-wise top-k selection, and per image and head the
// conv over the kept channels only (their number may differ between image-heads: ties drop
// together). Per image and head the kept channels, normalised and times their saliency gate,
// go into a small zero-padded buffer, and a register-tiled direct conv over them (for wide heads
// over deep inputs: im2col and one sgemm) writes the output rows at their interleaved channels
// (head i, channel j -> j * heads + i). Every buffer holds one image-head's worth, per thread,
// so nothing of the batch's size is gathered, copied or shuffled; image-heads run in parallel on
// ATen's OpenMP threads.
//
// gather_conv2d: the conv part alone, for dgc_gather_conv (dgc_gather.py): the channels and
// gates given by the caller.
//
// cluster_conv2d: a self-grouped conv (SelfGroupedConv2d, dgclab/analysis/self_grouping.py),
// every cluster of the layer in one call: the same per-image conv over a channel list, with
// each cluster's own compact weight and filter count.
//
// NaN and Inf give the numbers of dgc.py's mask execution, the reference: relu keeps NaN, as
// torch.relu does (v < 0 ? 0 : v, never v > 0 ? v : 0), and the gate multiplies the input
// before the zero padding is added, as in the official formulation (gating the filters would
// multiply the padding by the gate: NaN for a NaN gate where the reference has 0).
//
// Forward only, float32, CPU, no autograd: dgc.py uses its PyTorch formulation everywhere
// else, and tests compare the two.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <limits>
#include <tuple>
#include <optional>
#include <vector>

// Fortran BLAS sgemm, exported by libtorch_cpu (checked: the MKL build of torch 2.14.1, x86-64).
// Where it is missing the build fails and dgc.py keeps its PyTorch formulation.
extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);

namespace {

void check_float_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat, "dgclab CPU kernel: ", name,
              " must be a float32 CPU tensor, got ", t.scalar_type(), " on ", t.device());
}

// The vector loops below are compiled for AVX-512, AVX2 with FMA (x86-64-v3; plain AVX2 before gcc
// 12) and the baseline ISA on x86-64 and picked at load time (gcc function multiversioning), so
// the build stays portable.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#if __GNUC__ >= 12
#define DGCLAB_VECTOR_CLONES __attribute__((target_clones("avx512f", "arch=x86-64-v3", "default")))
#else
#define DGCLAB_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#else
#define DGCLAB_VECTOR_CLONES
#endif

// torch.relu: 0 below 0, v otherwise, NaN included (a NaN compares false).
inline float relu(float v) { return v < 0.f ? 0.f : v; }

// Sum over a plane of relu(src[i] * a + b), in 8 independent partial sums (vectorisable).
DGCLAB_VECTOR_CLONES
double bn_relu_sum(const float* __restrict src, int64_t n, float a, float b) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int j = 0; j < 8; ++j) acc[j] += relu(src[i + j] * a + b);
  }
  double total = 0;
  for (; i < n; ++i) total += relu(src[i] * a + b);
  for (float v : acc) total += v;
  return total;
}

// A (rows x cols) block between row strides: dst[r * dst_stride + j] = src[r * src_stride + j].
DGCLAB_VECTOR_CLONES
void copy_block(const float* __restrict src, int64_t src_stride, float* __restrict dst,
                int64_t dst_stride, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r, src += src_stride, dst += dst_stride) {
    for (int64_t j = 0; j < cols; ++j) dst[j] = src[j];
  }
}

// The same block gated: src * g, or relu(src * a + b) * g when normalising (the mask
// execution's relu(BN(x)) * gate, in its order).
DGCLAB_VECTOR_CLONES
void gate_block(const float* __restrict src, int64_t src_stride, float* __restrict dst,
                int64_t dst_stride, int64_t rows, int64_t cols, bool normalise, float a,
                float b, float g) {
  for (int64_t r = 0; r < rows; ++r, src += src_stride, dst += dst_stride) {
    if (normalise) {
      for (int64_t j = 0; j < cols; ++j) dst[j] = relu(src[j] * a + b) * g;
    } else {
      for (int64_t j = 0; j < cols; ++j) dst[j] = src[j] * g;
    }
  }
}

// The geometry of one conv: input planes, padding, kernel, output grid.
struct Geometry {
  int64_t c, h, w, kh, kw, sh, sw, ph, pw, dh, dw, hp, wp, ho, wo, taps, n_out, plane;
  bool direct;  // 1x1, stride 1, no padding: the kept planes are the GEMM's columns as they are

  Geometry(const at::Tensor& x, int64_t kh_, int64_t kw_, at::IntArrayRef stride,
           at::IntArrayRef padding, at::IntArrayRef dilation)
      : c(x.size(1)), h(x.size(2)), w(x.size(3)), kh(kh_), kw(kw_) {
    TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
                "dgclab CPU kernel: stride, padding and dilation must be pairs");
    sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1];
    dh = dilation[0], dw = dilation[1];
    TORCH_CHECK(sh > 0 && sw > 0 && dh > 0 && dw > 0 && ph >= 0 && pw >= 0,
                "dgclab CPU kernel: bad stride, padding or dilation");
    hp = h + 2 * ph, wp = w + 2 * pw;
    ho = (hp - dh * (kh - 1) - 1) / sh + 1, wo = (wp - dw * (kw - 1) - 1) / sw + 1;
    TORCH_CHECK(ho > 0 && wo > 0, "dgclab CPU kernel: the kernel is larger than the padded input");
    taps = kh * kw, n_out = ho * wo, plane = hp * wp;
    direct = taps == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
    TORCH_CHECK(n_out <= INT_MAX && c * taps <= INT_MAX && plane <= INT_MAX,
                "dgclab CPU kernel: too large for BLAS's int dimensions");
  }
};

// One thread's buffers for one image-head, kept from call to call (grown when needed).
struct Scratch {
  std::vector<float> padded, col, wk;
  std::vector<int64_t> channels, iota;
  std::vector<float> gates, order, rows;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

float* sized(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

// Zero the border of one zero-padded plane (its interior is written by gate_block).
void zero_border(float* slot, const Geometry& g) {
  if (g.ph == 0 && g.pw == 0) return;
  std::fill(slot, slot + g.ph * g.wp, 0.f);
  std::fill(slot + (g.ph + g.h) * g.wp, slot + g.plane, 0.f);
  for (int64_t r = g.ph; r < g.ph + g.h; ++r) {
    std::fill(slot + r * g.wp, slot + r * g.wp + g.pw, 0.f);
    std::fill(slot + r * g.wp + g.pw + g.w, slot + (r + 1) * g.wp, 0.f);
  }
}

// The filters of every head for conv_image_head, in one of two layouts. At a small batch they
// are read where nn.Conv2d keeps them, (out, channel, tap) per head: an image-head gathers its
// channels' taps a few floats at a time. Where the batch gathers more than the whole bank
// (B * keep >= C), they are first repacked once per call as (channel, tap, out) per head into
// `owner`, so that a kept channel's filter taps are one contiguous block. Returns each head's
// bank in the layout chosen.
std::vector<const float*> filter_banks(const std::vector<const float*>& heads, int64_t co_h,
                                       int64_t c, int64_t taps, bool pack, at::Tensor& owner) {
  if (!pack) return heads;
  const int64_t n_heads = static_cast<int64_t>(heads.size()), bank = co_h * c * taps;
  owner = at::empty({n_heads, c, taps, co_h}, at::TensorOptions().dtype(at::kFloat));
  std::vector<const float*> packed(n_heads);
  at::parallel_for(0, n_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t h = begin; h < end; ++h) {
      const float* src = heads[h];
      float* dst = owner.data_ptr<float>() + h * bank;
      for (int64_t o = 0; o < co_h; ++o)
        for (int64_t ch = 0; ch < c; ++ch)
          for (int64_t t = 0; t < taps; ++t) dst[(ch * taps + t) * co_h + o] = src[(o * c + ch) * taps + t];
    }
  });
  for (int64_t h = 0; h < n_heads; ++h) packed[h] = owner.data_ptr<float>() + h * bank;
  return packed;
}

// The pixel-lane kernels, for heads and clusters whose filters are not whole blocks of 8 (those
// take direct_filters below). Stride-1 kxk convs over output rows wider than kDirectMinWidth skip
// im2col and GEMM: direct_rows accumulates output rows in vector registers, a tile of kChunk
// pixels of NB filters at a time. (Narrower rows waste too much of a tile: direct_plane below
// takes those maps.) The padded buffer has slack for the tile's overhang.
constexpr int64_t kDirectMinWidth = 16;
// Where im2col + GEMM would run (stride 1, rows of at most kDirectMinWidth), direct_plane runs
// instead for up to kPlaneMaxFilters filters per image-head or cluster, or up to
// kPlaneMaxFiltersSmallMap on maps of at most kSmallMap output pixels: faster than GEMM there
// for DGC layers and SG-CNN clusters on 7x7-16x16 maps, batch 1 and 64 (README, "Speed").
constexpr int64_t kPlaneMaxFilters = 32, kPlaneMaxFiltersSmallMap = 64, kSmallMap = 64;

// Eight float lanes: one AVX2 register (two SSE ones in the baseline clone). Lanes8u loads and
// stores them at any float's address.
typedef float Lanes8 __attribute__((vector_size(32)));
typedef float Lanes8u __attribute__((vector_size(32), aligned(4), may_alias));

// A tile is NB filters x kVectors * 8 output lanes, NB * kVectors <= 12 accumulators, so that
// they, the tile's input vectors and a broadcast weight fit AVX2's 16 registers: per kept
// channel and tap, kVectors loads and NB broadcasts feed NB * kVectors multiply-adds.
constexpr int kVectors = 4;
constexpr int kChunk = 8 * kVectors;
constexpr int kMaxTileFilters = 12 / kVectors;

// One tile: acc[b][v] += w(b, i, tap) * lanes [8v, 8v + 8) of lane0[i * plane + tap offset],
// with w(o, i, t) = w[o * so + sel[i] * sc + t * st], over the kept planes and taps. Inlined into
// the vector clones below.
template <int NB>
inline __attribute__((always_inline)) void accumulate_tile(
    const Geometry& g, const float* lane0, const int64_t* sel, int64_t count, const float* w,
    int64_t so, int64_t sc, int64_t st, Lanes8 (&acc)[NB][kVectors]) {
  for (int64_t i = 0; i < count; ++i) {
    const float* plane = lane0 + i * g.plane;
    const float* wi = w + sel[i] * sc;
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const float* in = plane + ky * g.dh * g.wp + kx * g.dw;
        const float* wt = wi + (ky * g.kw + kx) * st;
        Lanes8 v[kVectors];
        for (int j = 0; j < kVectors; ++j) v[j] = *reinterpret_cast<const Lanes8u*>(in + 8 * j);
        for (int b = 0; b < NB; ++b) {
          const float wb = wt[b * so];
          for (int j = 0; j < kVectors; ++j) acc[b][j] += wb * v[j];
        }
      }
    }
  }
}

// NB output rows of a stride-1 conv, pixels [x0, x0 + kChunk) of each (fewer at the row's end),
// by accumulate_tile; the input may be read up to kChunk floats past a row (the padded buffer
// has that much slack), those lanes are never stored.
template <int NB>
DGCLAB_VECTOR_CLONES void direct_rows(const Geometry& g, const float* padded, const int64_t* sel,
                                      int64_t count, const float* w, int64_t so, int64_t sc,
                                      int64_t st, float* out, int64_t ldc) {
  for (int64_t oy = 0; oy < g.ho; ++oy) {
    for (int64_t x0 = 0; x0 < g.wo; x0 += kChunk) {
      Lanes8 acc[NB][kVectors] = {};
      accumulate_tile<NB>(g, padded + oy * g.wp + x0, sel, count, w, so, sc, st, acc);
      const int64_t n = std::min<int64_t>(kChunk, g.wo - x0);
      for (int b = 0; b < NB; ++b) {
        float* row = out + b * ldc + oy * g.wo + x0;
        if (n == kChunk) {
          for (int j = 0; j < kVectors; ++j) *reinterpret_cast<Lanes8u*>(row + 8 * j) = acc[b][j];
        } else {
          const float* lanes = reinterpret_cast<const float*>(acc[b]);
          for (int64_t j = 0; j < n; ++j) row[j] = lanes[j];
        }
      }
    }
  }
}

// Stride-1 convs over narrow maps, for few filters: the padded plane read as one long row.
// Output pixel (oy, ox) is lane oy * wp + ox of that row (the wp - wo lanes past each output row
// are computed and dropped), so tiles of kChunk lanes cover the whole plane without im2col.
// Lanes past the last plane read into the padded buffer's slack (padded_planes); every lane that
// is stored reads inside its plane.
template <int NB>
DGCLAB_VECTOR_CLONES void direct_plane(const Geometry& g, const float* padded, const int64_t* sel,
                                       int64_t count, const float* w, int64_t so, int64_t sc,
                                       int64_t st, float* out, int64_t ldc) {
  const int64_t lanes = g.ho * g.wp;
  for (int64_t x0 = 0; x0 < lanes; x0 += kChunk) {
    Lanes8 acc[NB][kVectors] = {};
    accumulate_tile<NB>(g, padded + x0, sel, count, w, so, sc, st, acc);
    const int64_t n = std::min<int64_t>(kChunk, lanes - x0);
    // the tile's lanes are runs of output row oy, from column ox, until the row's end
    int64_t oy = x0 / g.wp, ox = x0 % g.wp;
    for (int64_t j = 0; j < n;) {
      const int64_t run = std::min<int64_t>(n - j, g.wp - ox), stored = std::min(run, g.wo - ox);
      for (int b = 0; b < NB; ++b) {
        const float* lanes_b = reinterpret_cast<const float*>(acc[b]) + j;
        float* row = out + b * ldc + oy * g.wo + ox;
        for (int64_t r = 0; r < stored; ++r) row[r] = lanes_b[r];
      }
      j += run, ++oy, ox = 0;
    }
  }
}

// All co_h filters of an image-head by direct_rows (Plane: direct_plane), in tiles of
// kMaxTileFilters filters, then 2 and 1.
template <bool Plane>
void direct_conv(const Geometry& g, const float* padded, const int64_t* sel, int64_t count,
                 const float* w, int64_t so, int64_t sc, int64_t st, int64_t co_h, float* out,
                 int64_t ldc) {
  auto run = [&](auto nb, int64_t o) {
    constexpr int NB = decltype(nb)::value;
    if constexpr (Plane) {
      direct_plane<NB>(g, padded, sel, count, w + o * so, so, sc, st, out + o * ldc, ldc);
    } else {
      direct_rows<NB>(g, padded, sel, count, w + o * so, so, sc, st, out + o * ldc, ldc);
    }
  };
  int64_t o = 0;
  for (; o + kMaxTileFilters <= co_h; o += kMaxTileFilters)
    run(std::integral_constant<int, kMaxTileFilters>{}, o);
  for (; o + 2 <= co_h; o += 2) run(std::integral_constant<int, 2>{}, o);
  for (; o < co_h; ++o) run(std::integral_constant<int, 1>{}, o);
}

// Convs of whole blocks of 8 filters, any stride and dilation, with the filters in the vector
// lanes instead of the pixels: a tile is P output pixels x NF vectors of 8 filters, and per kept
// channel and tap it loads NF weight vectors and broadcasts P input values, so no lane is ever
// wasted on a map's edge (every pixel of the tile is a real output pixel but the last tile's
// repeats, which are not stored). `wt` is (i, tap, filter) with rows `ldw` floats apart: the
// packed bank (kept channel i at row sel[i]) or a compact copy (row i). Output pixel p of the
// tile reads the padded planes at offset off[p] = oy * sh * wp + ox * sw plus the tap's. K = 3
// unrolls a 3x3 kernel's taps at compile time (K = 0: any kernel, its size read from g).
template <int NF, int P, int K>
DGCLAB_VECTOR_CLONES void direct_filters(const Geometry& g, const float* padded,
                                         const int64_t* sel, int64_t count, const float* wt,
                                         int64_t ldw, float* out, int64_t ldc) {
  const int64_t kh = K ? K : g.kh, kw = K ? K : g.kw;
  int64_t oy = 0, ox = 0;  // output pixel p0
  for (int64_t p0 = 0; p0 < g.n_out; p0 += P) {
    int64_t off[P];
    for (int p = 0; p < P; ++p) {  // past the last pixel: the last again, not stored
      off[p] = p0 + p < g.n_out ? oy * g.sh * g.wp + ox * g.sw : off[p - 1];
      if (++ox == g.wo) ox = 0, ++oy;
    }
    Lanes8 acc[P][NF] = {};
    for (int64_t i = 0; i < count; ++i) {
      const float* plane = padded + i * g.plane;
      const float* wi = wt + (sel != nullptr ? sel[i] : i) * g.taps * ldw;
      for (int64_t ky = 0; ky < kh; ++ky) {
        for (int64_t kx = 0; kx < kw; ++kx) {
          const float* in = plane + ky * g.dh * g.wp + kx * g.dw;
          const float* wv = wi + (ky * kw + kx) * ldw;
          Lanes8 w[NF];
          for (int j = 0; j < NF; ++j) w[j] = *reinterpret_cast<const Lanes8u*>(wv + 8 * j);
          for (int p = 0; p < P; ++p) {
            const float v = in[off[p]];
            for (int j = 0; j < NF; ++j) acc[p][j] += v * w[j];
          }
        }
      }
    }
    const int64_t n = std::min<int64_t>(P, g.n_out - p0);
    for (int64_t p = 0; p < n; ++p)
      for (int j = 0; j < NF; ++j)
        for (int l = 0; l < 8; ++l) out[(8 * j + l) * ldc + p0 + p] = acc[p][j][l];
  }
}

// co_h filters by direct_filters, 16 at a time, then 8; K as there.
template <int K>
void filter_lanes_conv(const Geometry& g, const float* padded, const int64_t* sel, int64_t count,
                       const float* wt, int64_t ldw, int64_t co_h, float* out, int64_t ldc) {
  int64_t o = 0;
  for (; o + 16 <= co_h; o += 16)
    direct_filters<2, 6, K>(g, padded, sel, count, wt + o, ldw, out + o * ldc, ldc);
  for (; o < co_h; o += 8)
    direct_filters<1, 8, K>(g, padded, sel, count, wt + o, ldw, out + o * ldc, ldc);
}
void filter_lanes_conv(const Geometry& g, const float* padded, const int64_t* sel, int64_t count,
                       const float* wt, int64_t ldw, int64_t co_h, float* out, int64_t ldc) {
  if (g.kh == 3 && g.kw == 3)
    filter_lanes_conv<3>(g, padded, sel, count, wt, ldw, co_h, out, ldc);
  else
    filter_lanes_conv<0>(g, padded, sel, count, wt, ldw, co_h, out, ldc);
}

// The `count` input channels of image x_img listed in `sel`, each times its gate (after the
// folded BN-ReLU when scale and shift are given), into zero-padded planes in the thread's
// buffer, with direct_rows' and direct_plane's slack after the last.
const float* padded_planes(const Geometry& g, const float* x_img, const int64_t* sel,
                           const float* gates, int64_t count, const float* scale,
                           const float* shift, Scratch& s) {
  const int64_t slack = kChunk + g.wp;  // what direct_rows and direct_plane read past the end
  float* padded = sized(s.padded, count * g.plane + slack);
  std::fill(padded + count * g.plane, padded + count * g.plane + slack, 0.f);
  const bool normalise = scale != nullptr;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t ch = sel[i];
    float* slot = padded + i * g.plane;
    zero_border(slot, g);
    const bool one_row = g.wp == g.w;  // no side padding: the plane is one long row
    gate_block(x_img + ch * g.h * g.w, g.w, slot + g.ph * g.wp + g.pw, g.wp,
               one_row ? 1 : g.h, one_row ? g.h * g.w : g.w, normalise,
               normalise ? scale[ch] : 1.f, normalise ? shift[ch] : 0.f, gates[i]);
  }
  return padded;
}

// im2col of `count` padded planes: row (i, tap) of `col` holds the tap's window over the output
// grid (n_out floats).
void im2col(const Geometry& g, const float* padded, int64_t count, float* col) {
  for (int64_t i = 0; i < count; ++i) {
    const float* src = padded + i * g.plane;
    for (int64_t ky = 0; ky < g.kh; ++ky) {
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        float* dst = col + (i * g.taps + ky * g.kw + kx) * g.n_out;
        const float* window = src + ky * g.dh * g.wp + kx * g.dw;
        if (g.sw == 1) {
          copy_block(window, g.sh * g.wp, dst, g.wo, g.ho, g.wo);
        } else {
          for (int64_t oy = 0; oy < g.ho; ++oy)
            for (int64_t ox = 0; ox < g.wo; ++ox)
              dst[oy * g.wo + ox] = window[oy * g.sh * g.wp + ox * g.sw];
        }
      }
    }
  }
}

// Which of the register-blocked direct kernels conv_image_head runs for a stride-1 k x k conv
// (a 1x1 stride-1 conv without padding is a GEMM over the planes as they are): direct_rows on
// rows wider than kDirectMinWidth, direct_plane on narrower ones for few enough filters
// (kPlaneMaxFilters); otherwise im2col + GEMM.
bool uses_direct_rows(const Geometry& g) {
  return g.sh == 1 && g.sw == 1 && !g.direct && g.wo > kDirectMinWidth;
}
bool uses_direct_plane(const Geometry& g, int64_t filters) {
  return g.sh == 1 && g.sw == 1 && !g.direct && g.wo <= kDirectMinWidth &&
         (filters <= kPlaneMaxFilters ||
          (filters <= kPlaneMaxFiltersSmallMap && g.n_out <= kSmallMap));
}

// Whether conv_image_head takes direct_filters: whole blocks of 8 filters, not a 1x1 conv over
// the planes as they are (a GEMM, which BLAS runs faster there), and for 64 filters or more only
// where the pixel-lane kernels would run: wider heads over deep inputs are GEMMs too.
bool uses_direct_filters(const Geometry& g, int64_t filters) {
  return filters % 8 == 0 && !g.direct &&
         (filters < 64 || uses_direct_plane(g, filters) || uses_direct_rows(g));
}

// One image-head: convolve `count` input channels of image x_img (C planes of h x w), listed
// in `sel` with their gates, by the head's filters (`filters`, one head's bank in the layout
// `packed` says), optionally through the folded BN-ReLU (scale, shift per channel), into
// co_h output planes `ldc` floats apart. The gate multiplies the input before the zero padding
// is added, as in the official formulation. With `compact`, the filters are instead already
// the kept channels' taps, (co_h, count, taps) row-major (a self-grouped cluster's own conv
// weight), and `wh` and `packed` are not read.
void conv_image_head(const Geometry& g, const float* x_img, const int64_t* sel,
                     const float* gates, int64_t count, const float* scale, const float* shift,
                     const float* wh, bool packed, int64_t co_h, float* out, int64_t ldc,
                     const float* compact = nullptr) {
  if (count == 0) {  // every channel dropped (saliency ties): the head's output is 0
    for (int64_t o = 0; o < co_h; ++o) std::fill(out + o * ldc, out + o * ldc + g.n_out, 0.f);
    return;
  }
  Scratch& s = scratch();
  const int64_t depth = count * g.taps;
  const float* padded = padded_planes(g, x_img, sel, gates, count, scale, shift, s);
  if (uses_direct_filters(g, co_h)) {
    // the kept channels' taps as (i, tap, filter): the packed bank as it is, or copied
    if (packed && compact == nullptr) {
      filter_lanes_conv(g, padded, sel, count, wh, co_h, co_h, out, ldc);
      return;
    }
    float* buf = sized(s.wk, depth * co_h);
    for (int64_t o = 0; o < co_h; ++o) {
      for (int64_t i = 0; i < count; ++i) {
        const float* taps = compact != nullptr ? compact + (o * count + i) * g.taps
                                               : wh + (o * g.c + sel[i]) * g.taps;
        for (int64_t t = 0; t < g.taps; ++t) buf[(i * g.taps + t) * co_h + o] = taps[t];
      }
    }
    filter_lanes_conv(g, padded, nullptr, count, buf, co_h, co_h, out, ldc);
    return;
  }
  const bool plane = uses_direct_plane(g, co_h);
  if (plane || uses_direct_rows(g)) {
    // w(o, i, t) at w[o * so + sel[i] * sc + t * st]: compact (o, i, t) with sel the identity,
    // or the head's bank as nn.Conv2d keeps it, (out, channel, tap), or packed (channel, tap, out)
    const int64_t* wsel = sel;
    int64_t so = packed ? 1 : g.c * g.taps, sc = packed ? g.taps * co_h : g.taps,
            st = packed ? co_h : 1;
    const float* w = wh;
    if (compact != nullptr) {
      s.iota.resize(count);
      for (int64_t i = 0; i < count; ++i) s.iota[i] = i;
      wsel = s.iota.data(), w = compact, so = depth, sc = g.taps, st = 1;
    }
    if (plane)
      direct_conv<true>(g, padded, wsel, count, w, so, sc, st, co_h, out, ldc);
    else
      direct_conv<false>(g, padded, wsel, count, w, so, sc, st, co_h, out, ldc);
    return;
  }
  const float* a_mat = padded;
  if (!g.direct) {
    float* col = sized(s.col, depth * g.n_out);
    im2col(g, padded, count, col);
    a_mat = col;
  }
  // The kept channels' taps of every filter of the head: wk (co_h x depth, row-major) read
  // from nn.Conv2d's layout, or (depth x co_h) from the packed one, a block per channel; a
  // compact bank is the first already.
  const bool transposed = packed && compact == nullptr;
  const float* wk = compact;
  if (compact == nullptr) {
    float* buf = sized(s.wk, co_h * depth);
    if (packed) {
      const int64_t block = g.taps * co_h;
      for (int64_t i = 0; i < count; ++i)
        std::copy(wh + sel[i] * block, wh + (sel[i] + 1) * block, buf + i * block);
    } else {
      for (int64_t o = 0; o < co_h; ++o) {
        const float* filter = wh + o * g.c * g.taps;
        float* row = buf + o * depth;
        for (int64_t i = 0; i < count; ++i) {  // a few taps each: a loop, not a memmove call
          const float* taps = filter + sel[i] * g.taps;
          for (int64_t t = 0; t < g.taps; ++t) row[i * g.taps + t] = taps[t];
        }
      }
    }
    wk = buf;
  }
  // Row-major out (co_h x n_out) = wk (co_h x depth) * A (depth x n_out), rows `ldc` apart. In
  // BLAS's column-major terms: out^T (n_out x co_h) = A^T (n_out x depth) * wk^T (depth x co_h),
  // and a row-major matrix is its transpose column-major: wk as read from nn.Conv2d's layout is
  // wk^T already ("N"); the packed one is wk^T row-major, transposed ("T").
  const int m_ = static_cast<int>(g.n_out), n_ = static_cast<int>(co_h),
            k_ = static_cast<int>(depth), lda = static_cast<int>(g.direct ? g.plane : g.n_out),
            ldb = static_cast<int>(transposed ? co_h : depth), ldc_ = static_cast<int>(ldc);
  const float one = 1.f, zero = 0.f;
  sgemm_("N", transposed ? "T" : "N", &m_, &n_, &k_, &one, a_mat, &lda, wk, &ldb, &zero, out,
         &ldc_);
}

at::Tensor gather_conv2d(const at::Tensor& x_in, const std::optional<at::Tensor>& scale_in,
                         const std::optional<at::Tensor>& shift_in, const at::Tensor& gate_in,
                         const at::Tensor& idx_in, const at::Tensor& weight_in,
                         at::IntArrayRef stride, at::IntArrayRef padding,
                         at::IntArrayRef dilation) {
  check_float_cpu(x_in, "x");
  TORCH_CHECK(x_in.dim() == 4 && weight_in.dim() == 5 && idx_in.dim() == 3 &&
                  gate_in.dim() == 3 && stride.size() == 2 && padding.size() == 2 &&
                  dilation.size() == 2,
              "gather_conv2d: expected x (B,C,H,W), gate and keep_idx (B,heads,keep), weight "
              "(heads,Co_h,C,kh,kw) and pairs for stride, padding, dilation");
  TORCH_CHECK(scale_in.has_value() == shift_in.has_value(),
              "gather_conv2d: give both scale and shift, or neither");
  const bool normalise = scale_in.has_value();
  const at::Tensor x = x_in.contiguous();
  const at::Tensor gate = gate_in.to(at::kFloat).contiguous();
  const at::Tensor idx = idx_in.to(at::kLong).contiguous();
  const at::Tensor weight = weight_in.to(at::kFloat).contiguous();
  const int64_t b = x.size(0), c = x.size(1);
  const int64_t heads = weight.size(0), co_h = weight.size(1), keep = idx.size(2);
  TORCH_CHECK(weight.size(2) == c && idx.size(0) == b && idx.size(1) == heads &&
                  gate.sizes() == idx.sizes(),
              "gather_conv2d: shapes do not match: x ", x.sizes(), ", gate ", gate.sizes(),
              ", keep_idx ", idx.sizes(), ", weight ", weight.sizes());
  const Geometry g(x, weight.size(3), weight.size(4), stride, padding, dilation);
  TORCH_CHECK(heads * g.n_out <= INT_MAX, "gather_conv2d: too large for BLAS's int dimensions");
  at::Tensor scale, shift;
  if (normalise) {
    scale = scale_in->to(at::kFloat).contiguous();
    shift = shift_in->to(at::kFloat).contiguous();
    TORCH_CHECK(scale.numel() == c && shift.numel() == c, "gather_conv2d: scale/shift size");
  }
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < idx.numel(); ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < c, "gather_conv2d: channel index ", ip[i],
                " out of range [0, ", c, ")");

  at::Tensor y = at::empty({b, co_h * heads, g.ho, g.wo}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* gp = gate.data_ptr<float>();
  std::vector<const float*> heads_in(heads);
  for (int64_t i = 0; i < heads; ++i) heads_in[i] = weight.data_ptr<float>() + i * co_h * c * g.taps;
  at::Tensor owner;
  const bool pack = b * keep >= c;
  const std::vector<const float*> banks = filter_banks(heads_in, co_h, c, g.taps, pack, owner);
  const float* sp = normalise ? scale.data_ptr<float>() : nullptr;
  const float* tp = normalise ? shift.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, b * heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t n = bh / heads, head = bh % heads;
      // head i's output channel j is channel j * heads + i: rows heads * n_out apart
      conv_image_head(g, xp + n * c * g.h * g.w, ip + bh * keep, gp + bh * keep, keep, sp, tp,
                      banks[head], pack, co_h, yp + (n * co_h * heads + head) * g.n_out,
                      heads * g.n_out);
    }
  });
  return y;
}

// A self-grouped conv (SelfGroupedConv2d, dgclab/analysis/self_grouping.py) in one call:
// cluster k convolves its own input channels, the same for every image (`channels`, the
// clusters' lists one after another), by its own small conv's weight (F_k, S_k, kh, kw), and
// its F_k outputs are output channels `filters` (the clusters' filter lists one after another,
// a permutation of 0 .. O - 1). Per image and cluster one conv_image_head over the compact
// weight into a per-thread buffer, then each row to its output channel, plus its bias. Clusters
// of any sizes, one dispatch, nothing of the batch's size gathered: what the layer's loop of
// small nn.Conv2d calls computes, the clusters' MACs only.
at::Tensor cluster_conv2d(const at::Tensor& x_in, const at::Tensor& channels_in,
                          const at::Tensor& filters_in, at::TensorList weights,
                          const std::optional<at::Tensor>& bias_in, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation) {
  check_float_cpu(x_in, "x");
  TORCH_CHECK(x_in.dim() == 4, "cluster_conv2d: x must be (B, C, H, W), got ", x_in.sizes());
  const int64_t clusters = static_cast<int64_t>(weights.size());
  TORCH_CHECK(clusters >= 1, "cluster_conv2d: give at least one cluster's weight");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor channels = channels_in.to(at::kLong).contiguous();
  const at::Tensor filters = filters_in.to(at::kLong).contiguous();
  const int64_t b = x.size(0), c = x.size(1);
  std::vector<at::Tensor> w(clusters);
  std::vector<int64_t> ch_off(clusters + 1, 0), f_off(clusters + 1, 0);
  for (int64_t k = 0; k < clusters; ++k) {
    check_float_cpu(weights[k], "weights");
    TORCH_CHECK(weights[k].dim() == 4 && weights[k].size(2) == weights[0].size(2) &&
                    weights[k].size(3) == weights[0].size(3) && weights[k].size(1) <= c,
                "cluster_conv2d: cluster ", k, "'s weight ", weights[k].sizes(),
                " is not (F_k, S_k <= C=", c, ", kh, kw) with the first cluster's kernel");
    w[k] = weights[k].contiguous();
    ch_off[k + 1] = ch_off[k] + w[k].size(1);
    f_off[k + 1] = f_off[k] + w[k].size(0);
  }
  const int64_t out_c = f_off[clusters];
  TORCH_CHECK(channels.dim() == 1 && channels.numel() == ch_off[clusters] && filters.dim() == 1 &&
                  filters.numel() == out_c,
              "cluster_conv2d: channels ", channels.sizes(), " and filters ", filters.sizes(),
              " must list every cluster's ", ch_off[clusters], " channels and ", out_c,
              " filters");
  const int64_t* cp = channels.data_ptr<int64_t>();
  const int64_t* fp = filters.data_ptr<int64_t>();
  for (int64_t i = 0; i < channels.numel(); ++i)
    TORCH_CHECK(cp[i] >= 0 && cp[i] < c, "cluster_conv2d: channel index ", cp[i],
                " out of range [0, ", c, ")");
  std::vector<bool> seen(out_c, false);
  for (int64_t i = 0; i < out_c; ++i) {
    TORCH_CHECK(fp[i] >= 0 && fp[i] < out_c && !seen[fp[i]], "cluster_conv2d: filters must be a "
                "permutation of 0 .. ", out_c - 1, ", got ", fp[i], " at ", i);
    seen[fp[i]] = true;
  }
  at::Tensor bias;
  if (bias_in.has_value()) {
    bias = bias_in->to(at::kFloat).contiguous();
    TORCH_CHECK(bias.dim() == 1 && bias.numel() == out_c, "cluster_conv2d: bias must be (",
                out_c, ",), got ", bias.sizes());
  }
  const float* bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
  const Geometry g(x, w[0].size(2), w[0].size(3), stride, padding, dilation);
  at::Tensor y = at::empty({b, out_c, g.ho, g.wo}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  int64_t widest = 0;
  for (int64_t k = 0; k < clusters; ++k) widest = std::max(widest, ch_off[k + 1] - ch_off[k]);
  const std::vector<float> ones(widest, 1.f);  // every channel's gate: no gating here
  at::parallel_for(0, clusters * b, 1, [&](int64_t begin, int64_t end) {
    Scratch& s = scratch();
    for (int64_t item = begin; item < end; ++item) {  // cluster-major: its weight stays cached
      const int64_t k = item / b, n = item % b;
      const int64_t count = ch_off[k + 1] - ch_off[k], co = f_off[k + 1] - f_off[k];
      if (co == 0) continue;
      float* rows = sized(s.rows, co * g.n_out);
      conv_image_head(g, xp + n * c * g.h * g.w, cp + ch_off[k], ones.data(), count, nullptr,
                      nullptr, nullptr, false, co, rows, g.n_out, w[k].data_ptr<float>());
      for (int64_t f = 0; f < co; ++f) {
        const int64_t o = fp[f_off[k] + f];
        const float add = bp != nullptr ? bp[o] : 0.f;
        const float* src = rows + f * g.n_out;
        float* dst = yp + (n * out_c + o) * g.n_out;
        for (int64_t p = 0; p < g.n_out; ++p) dst[p] = src[p] + add;
      }
    }
  });
  return y;
}

// The k-th smallest of row[0..n) (k >= 1), NaN sorting above every number as in torch's
// kthvalue; NaN when the k-th smallest is a NaN. `work` is scratch of n floats.
float kth_smallest(const float* row, int64_t n, int64_t k, float* work) {
  float* end = std::copy(row, row + n, work);
  float* numbers = std::partition(work, end, [](float v) { return !std::isnan(v); });
  if (k > numbers - work) return std::numeric_limits<float>::quiet_NaN();
  std::nth_element(work, work + k - 1, numbers);
  return work[k - 1];
}

// torch.argmax of row[0..n): the first NaN, else the first largest value.
int64_t first_argmax(const float* row, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(row[i])) return i;
    if (row[i] > row[best]) best = i;
  }
  return best;
}

// The whole DGC layer in inference (dgc.py, DGCConv2d.forward), one call per layer:
// (folded eval BN-ReLU,) global average pool, every head's saliency MLP
// g = relu(fc2(relu(fc1(pool)))), the head-wise selection (drop everything <= the k-th
// smallest saliency, ties together; or, given a threshold, DGC-G's: keep what is above it, at
// least the first most salient channel), and the gathered conv over the kept channels only, with
// its output interleaved. An image whose pooled input, or an image-head whose saliencies, hold
// a NaN or Inf reads every channel with its gate g * keep (0 * Inf is NaN in the reference),
// so that the numbers are the mask execution's. Returns (y, saliency, keep, lasso), lasso the
// paper's term: the sum over heads of the mean saliency (0 for an empty batch).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> dgc_forward(
    const at::Tensor& x_in, const std::optional<at::Tensor>& running_mean,
    const std::optional<at::Tensor>& running_var, const std::optional<at::Tensor>& bn_weight,
    const std::optional<at::Tensor>& bn_bias, double eps, at::TensorList fc1,
    at::TensorList fc2, at::TensorList fc2_bias, at::TensorList conv, int64_t k,
    std::optional<double> threshold, at::IntArrayRef stride, at::IntArrayRef padding,
    at::IntArrayRef dilation) {
  check_float_cpu(x_in, "x");
  TORCH_CHECK(x_in.dim() == 4, "dgc_forward: x must be (B, C, H, W), got ", x_in.sizes());
  const int64_t heads = static_cast<int64_t>(conv.size());
  TORCH_CHECK(heads >= 1 && static_cast<int64_t>(fc1.size()) == heads &&
                  static_cast<int64_t>(fc2.size()) == heads &&
                  static_cast<int64_t>(fc2_bias.size()) == heads,
              "dgc_forward: give fc1, fc2, fc2_bias and conv for every head");
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(),
              "dgc_forward: give both running_mean and running_var, or neither");
  const at::Tensor x = x_in.contiguous();
  const int64_t b = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  TORCH_CHECK(k >= 0 && k < c, "dgc_forward: k=", k, " outside [0, ", c, ")");
  const int64_t hidden = fc1[0].size(0), co_h = conv[0].size(0);
  TORCH_CHECK(conv[0].dim() == 4, "dgc_forward: conv weights must be (Co_h, C, kh, kw)");
  std::vector<at::Tensor> w1(heads), w2(heads), b2(heads), wc(heads);
  for (int64_t i = 0; i < heads; ++i) {
    for (const at::Tensor* t : {&fc1[i], &fc2[i], &fc2_bias[i], &conv[i]}) check_float_cpu(*t, "weights");
    TORCH_CHECK(fc1[i].sizes() == at::IntArrayRef({hidden, c}) &&
                    fc2[i].sizes() == at::IntArrayRef({c, hidden}) &&
                    fc2_bias[i].sizes() == at::IntArrayRef({c}) &&
                    conv[i].sizes() == conv[0].sizes() && conv[i].size(1) == c,
                "dgc_forward: head ", i, "'s weights do not match C=", c, ", hidden=", hidden);
    w1[i] = fc1[i].contiguous(), w2[i] = fc2[i].contiguous();
    b2[i] = fc2_bias[i].contiguous(), wc[i] = conv[i].contiguous();
  }
  const Geometry g(x, conv[0].size(2), conv[0].size(3), stride, padding, dilation);
  TORCH_CHECK(heads * g.n_out <= INT_MAX && heads * c <= INT_MAX,
              "dgc_forward: too large for BLAS's int dimensions");

  // The eval BN folded to relu(x * scale + shift) per channel.
  const bool normalise = running_mean.has_value();
  std::vector<float> scale, shift;
  if (normalise) {
    const at::Tensor mean = running_mean->to(at::kFloat).contiguous();
    const at::Tensor var = running_var->to(at::kFloat).contiguous();
    TORCH_CHECK(mean.numel() == c && var.numel() == c, "dgc_forward: BN statistics size");
    at::Tensor gamma, beta;
    if (bn_weight.has_value()) gamma = bn_weight->to(at::kFloat).contiguous();
    if (bn_bias.has_value()) beta = bn_bias->to(at::kFloat).contiguous();
    scale.resize(c), shift.resize(c);
    for (int64_t ch = 0; ch < c; ++ch) {
      float a = 1.f / std::sqrt(var.data_ptr<float>()[ch] + static_cast<float>(eps));
      if (gamma.defined()) a *= gamma.data_ptr<float>()[ch];
      scale[ch] = a;
      shift[ch] = -mean.data_ptr<float>()[ch] * a + (beta.defined() ? beta.data_ptr<float>()[ch] : 0.f);
    }
  }
  const float* sp = normalise ? scale.data() : nullptr;
  const float* tp = normalise ? shift.data() : nullptr;

  std::vector<const float*> heads_in(heads);
  for (int64_t i = 0; i < heads; ++i) heads_in[i] = wc[i].data_ptr<float>();
  at::Tensor owner;
  const bool pack = b * (c - k) >= c;
  const std::vector<const float*> banks = filter_banks(heads_in, co_h, c, g.taps, pack, owner);

  const float* xp = x.data_ptr<float>();
  at::Tensor pooled = at::empty({b, c}, x.options());
  float* pp = pooled.data_ptr<float>();
  at::parallel_for(0, b * c, 16, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t ch = p % c;
      pp[p] = static_cast<float>(
          bn_relu_sum(xp + p * hw, hw, normalise ? sp[ch] : 1.f, normalise ? tp[ch] : 0.f) / hw);
    }
  });

  at::Tensor saliency = at::empty({b, heads, c}, x.options());
  at::Tensor keep = at::empty({b, heads, c}, x.options().dtype(at::kBool));
  at::Tensor y = at::empty({b, co_h * heads, g.ho, g.wo}, x.options());
  float* salp = saliency.data_ptr<float>();
  bool* keepp = keep.data_ptr<bool>();
  float* yp = y.data_ptr<float>();
  // The saliency generators, head by head over the whole batch, two GEMMs each (column-major,
  // as BLAS sees row-major matrices): hidden^T (hid x B) = fc1 (hid x C) p^T, then
  // g^T (C x B) = fc2 (C x hid) hidden^T + bias, written at g[n, head, :] (rows heads*C apart).
  if (b > 0) {
    std::vector<float> hid(b * hidden);
    const int m1 = static_cast<int>(hidden), nb = static_cast<int>(b), kc = static_cast<int>(c),
              ldg = static_cast<int>(heads * c);
    const float one = 1.f, zero = 0.f;
    for (int64_t head = 0; head < heads; ++head) {
      sgemm_("T", "N", &m1, &nb, &kc, &one, w1[head].data_ptr<float>(), &kc, pp, &kc, &zero,
             hid.data(), &m1);
      for (float& v : hid) v = relu(v);
      const float* bias = b2[head].data_ptr<float>();
      for (int64_t n = 0; n < b; ++n) std::copy(bias, bias + c, salp + (n * heads + head) * c);
      sgemm_("T", "N", &kc, &nb, &m1, &one, w2[head].data_ptr<float>(), &m1, hid.data(), &m1,
             &one, salp + head * c, &ldg);
    }
  }
  const bool global = threshold.has_value();
  const float tau = global ? static_cast<float>(*threshold) : 0.f;
  TORCH_CHECK(!global || tau >= 0.f, "dgc_forward: threshold=", tau, " is negative");
  at::parallel_for(0, b * heads, 1, [&](int64_t begin, int64_t end) {
    Scratch& s = scratch();
    float* order = sized(s.order, c);
    s.channels.resize(c);
    float* gates = sized(s.gates, c);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t n = bh / heads, head = bh % heads;
      const float* p = pp + n * c;
      float* sal = salp + bh * c;  // g = relu(fc2(relu(fc1(p)))), its last relu here
      bool finite = true;
      for (int64_t ch = 0; ch < c; ++ch) {
        sal[ch] = relu(sal[ch]);
        finite = finite && std::isfinite(sal[ch]) && std::isfinite(p[ch]);
      }
      // the selection: keep what is above the k-th smallest saliency (select_channels), or
      // above the global threshold, at least one channel (select_above_threshold)
      const bool all = !global && k == 0;
      const float cut = global ? tau : (all ? 0.f : kth_smallest(sal, c, k, order));
      bool* kept = keepp + bh * c;
      bool any = all || !global;  // only the threshold rule keeps at least one channel
      for (int64_t ch = 0; ch < c && !any; ++ch) any = sal[ch] > cut;
      const int64_t best = any ? -1 : first_argmax(sal, c);
      int64_t count = 0;
      for (int64_t ch = 0; ch < c; ++ch) {
        kept[ch] = all || sal[ch] > cut || ch == best;
        if (kept[ch] || !finite) {  // not finite: every channel, with its gate g * keep
          s.channels[count] = ch;
          gates[count++] = kept[ch] ? sal[ch] : sal[ch] * 0.f;
        }
      }
      conv_image_head(g, xp + n * c * hw, s.channels.data(), gates, count, sp, tp,
                      banks[head], pack, co_h, yp + (n * co_h * heads + head) * g.n_out,
                      heads * g.n_out);
    }
  });
  double lasso = 0;
  for (int64_t i = 0; i < b * heads * c; ++i) lasso += salp[i];
  if (b > 0) lasso /= static_cast<double>(b * c);
  return {y, saliency, keep, at::scalar_tensor(lasso, x.options())};
}

}  // namespace

TORCH_LIBRARY(dgclab, m) {
  m.def(
      "dgc_forward(Tensor x, Tensor? running_mean, Tensor? running_var, Tensor? weight, "
      "Tensor? bias, float eps, Tensor[] fc1, Tensor[] fc2, Tensor[] fc2_bias, Tensor[] conv, "
      "int k, float? threshold, int[] stride, int[] padding, int[] dilation) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "gather_conv2d(Tensor x, Tensor? scale, Tensor? shift, Tensor gate, Tensor keep_idx, "
      "Tensor weight, int[] stride, int[] padding, int[] dilation) -> Tensor");
  m.def(
      "cluster_conv2d(Tensor x, Tensor channels, Tensor filters, Tensor[] weights, Tensor? bias, "
      "int[] stride, int[] padding, int[] dilation) -> Tensor");
}

TORCH_LIBRARY_IMPL(dgclab, CPU, m) {
  m.impl("dgc_forward", &dgc_forward);
  m.impl("gather_conv2d", &gather_conv2d);
  m.impl("cluster_conv2d", &cluster_conv2d);
}
