// Fused CPU inference kernels for DGCConv2d's gather execution (dgclab/layers/dgc.py).
//
// gather_conv2d: per image and head, copy the kept input channels (optionally through the
// layer's eval-mode BN-ReLU, folded to relu(x * scale + shift)) times their saliency gate into
// a small zero-padded buffer, lay them out as GEMM columns, gather the matching filter columns,
// and run one sgemm whose rows land at the interleaved output channels (head i, channel j ->
// j * heads + i). Every buffer holds one image-head's worth, per thread, so nothing of the
// batch's size is gathered, copied or shuffled; images-heads run in parallel on ATen's
// OpenMP threads.
//
// bn_relu_pool: the saliency generators' input, mean over H x W of relu(x * scale + shift), in
// one read of x (the normalised activations are never written out).
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

// The element-wise loops below are compiled for AVX2 as well as the baseline ISA on x86-64 and
// picked at load time (gcc function multiversioning), so the build stays portable.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define DGCLAB_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
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

at::Tensor bn_relu_pool(const at::Tensor& x_in, const at::Tensor& scale_in,
                        const at::Tensor& shift_in) {
  check_float_cpu(x_in, "x");
  TORCH_CHECK(x_in.dim() == 4, "bn_relu_pool: x must be (B, C, H, W)");
  const at::Tensor x = x_in.contiguous();
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous();
  const at::Tensor shift = shift_in.to(at::kFloat).contiguous();
  const int64_t b = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  TORCH_CHECK(scale.numel() == c && shift.numel() == c, "bn_relu_pool: scale/shift size");
  at::Tensor pooled = at::empty({b, c}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* sp = scale.data_ptr<float>();
  const float* tp = shift.data_ptr<float>();
  float* pp = pooled.data_ptr<float>();
  at::parallel_for(0, b * c, 16, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      pp[plane] = static_cast<float>(bn_relu_sum(xp + plane * hw, hw, sp[plane % c], tp[plane % c]) / hw);
    }
  });
  return pooled;
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
  const at::Tensor& weight = weight_in;
  const int64_t b = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  const int64_t heads = weight.size(0), co_h = weight.size(1), kh = weight.size(3),
                kw = weight.size(4), keep = idx.size(2);
  TORCH_CHECK(weight.size(2) == c && idx.size(0) == b && idx.size(1) == heads &&
                  gate.sizes() == idx.sizes(),
              "gather_conv2d: shapes do not match: x ", x.sizes(), ", gate ", gate.sizes(),
              ", keep_idx ", idx.sizes(), ", weight ", weight.sizes());
  // Filter bank as (head, input channel, tap, output): a kept channel's filter columns are one
  // contiguous block of taps x co_h floats.
  const at::Tensor w_rows = weight.to(at::kFloat)
                                .reshape({heads, co_h, c, kh * kw})
                                .permute({0, 2, 3, 1})
                                .contiguous();
  at::Tensor scale, shift;
  if (normalise) {
    scale = scale_in->to(at::kFloat).contiguous();
    shift = shift_in->to(at::kFloat).contiguous();
    TORCH_CHECK(scale.numel() == c && shift.numel() == c, "gather_conv2d: scale/shift size");
  }
  const int64_t sh = stride[0], sw = stride[1], ph = padding[0], pw = padding[1],
                dh = dilation[0], dw = dilation[1];
  TORCH_CHECK(sh > 0 && sw > 0 && dh > 0 && dw > 0 && ph >= 0 && pw >= 0,
              "gather_conv2d: bad stride, padding or dilation");
  const int64_t hp = h + 2 * ph, wp = w + 2 * pw;
  const int64_t ho = (hp - dh * (kh - 1) - 1) / sh + 1, wo = (wp - dw * (kw - 1) - 1) / sw + 1;
  TORCH_CHECK(ho > 0 && wo > 0, "gather_conv2d: the kernel is larger than the padded input");
  const int64_t taps = kh * kw, n_out = ho * wo, depth = keep * taps, plane = hp * wp;
  TORCH_CHECK(heads * n_out <= INT_MAX && depth <= INT_MAX && plane <= INT_MAX,
              "gather_conv2d: too large for BLAS's int dimensions");
  const int64_t* ip = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < idx.numel(); ++i)
    TORCH_CHECK(ip[i] >= 0 && ip[i] < c, "gather_conv2d: channel index ", ip[i],
                " out of range [0, ", c, ")");

  // 1x1, stride 1, no padding: the kept planes are the GEMM's columns as they are.
  const bool direct = taps == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;

  at::Tensor y = at::empty({b, co_h * heads, ho, wo}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* gp = gate.data_ptr<float>();
  const float* wpp = w_rows.data_ptr<float>();
  const float* sp = normalise ? scale.data_ptr<float>() : nullptr;
  const float* tp = normalise ? shift.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();

  at::parallel_for(0, b * heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> padded(keep * plane, 0.f);  // the borders stay 0
    std::vector<float> col(direct ? 0 : depth * n_out), wk(co_h * depth);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t n = bh / heads, head = bh % heads;
      const int64_t* sel = ip + bh * keep;
      const float* g = gp + bh * keep;
      for (int64_t i = 0; i < keep; ++i) {
        const int64_t ch = sel[i];
        const float* src = xp + (n * c + ch) * h * w;
        float* dst = padded.data() + i * plane + ph * wp + pw;
        const bool one_row = wp == w;  // no side padding: the plane is one long row
        gate_block(src, w, dst, wp, one_row ? 1 : h, one_row ? h * w : w, normalise,
                   normalise ? sp[ch] : 1.f, normalise ? tp[ch] : 0.f, g[i]);
      }
      const float* a_mat = padded.data();
      if (!direct) {  // im2col: row (i, tap) holds the tap's window over the output grid
        for (int64_t i = 0; i < keep; ++i) {
          const float* src = padded.data() + i * plane;
          for (int64_t ky = 0; ky < kh; ++ky) {
            for (int64_t kx = 0; kx < kw; ++kx) {
              float* dst = col.data() + (i * taps + ky * kw + kx) * n_out;
              const float* window = src + ky * dh * wp + kx * dw;
              if (sw == 1) {
                copy_block(window, sh * wp, dst, wo, ho, wo);
              } else {
                for (int64_t oy = 0; oy < ho; ++oy)
                  for (int64_t ox = 0; ox < wo; ++ox)
                    dst[oy * wo + ox] = window[oy * sh * wp + ox * sw];
              }
            }
          }
        }
        a_mat = col.data();
      }
      // wk (depth x co_h): the kept filter columns (the gate is in the input already).
      const float* wh = wpp + head * c * taps * co_h;
      for (int64_t i = 0; i < keep; ++i) {
        const float* column = wh + sel[i] * taps * co_h;
        std::copy(column, column + taps * co_h, wk.data() + i * taps * co_h);
      }
      // Row-major out (co_h x n_out) = wk^T (co_h x depth) * A (depth x n_out), written at
      // output channels j * heads + head (row stride heads * n_out). In BLAS's column-major
      // terms: out^T (n_out x co_h) = A^T (n_out x depth) * wk (depth x co_h), wk transposed.
      const int m_ = static_cast<int>(n_out), n_ = static_cast<int>(co_h),
                k_ = static_cast<int>(depth), lda = static_cast<int>(direct ? plane : n_out),
                ldb = static_cast<int>(co_h), ldc = static_cast<int>(heads * n_out);
      const float one = 1.f, zero = 0.f;
      sgemm_("N", "T", &m_, &n_, &k_, &one, a_mat, &lda, wk.data(), &ldb, &zero,
             yp + (n * co_h * heads + head) * n_out, &ldc);
    }
  });
  return y;
}

}  // namespace

TORCH_LIBRARY(dgclab, m) {
  m.def("bn_relu_pool(Tensor x, Tensor scale, Tensor shift) -> Tensor");
  m.def(
      "gather_conv2d(Tensor x, Tensor? scale, Tensor? shift, Tensor gate, Tensor keep_idx, "
      "Tensor weight, int[] stride, int[] padding, int[] dilation) -> Tensor");
}

TORCH_LIBRARY_IMPL(dgclab, CPU, m) {
  m.impl("bn_relu_pool", &bn_relu_pool);
  m.impl("gather_conv2d", &gather_conv2d);
}
