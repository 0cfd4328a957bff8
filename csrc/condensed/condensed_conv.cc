// See condensed_conv.h. One loop nest serves every ISA and shape:
//
//   for each band of output rows (kBandFloats of the q grid, whole rows):
//     for each stored row r (output channel):
//       for each tile of the band (up to 8 SIMD vectors of output positions, in registers):
//         for each kept weight j of r: acc[t] += values[r, j] * plane[offset[r, j] + q0 + t*V]
//       bias, ReLU, and the valid columns of each output row go to y
//
// A band's slice of the planes (a few rows of every input channel) stays in L2 while every
// output channel walks it, and each kept weight costs one broadcast plus one load-FMA per vector
// of outputs. Tiles of fewer than 6 vectors (small feature maps: a 4x4 output is 3 AVX2 vectors)
// split the kept weights over 2 or 4 accumulator sets so the FMA latency chains stay short.
#include "condensed_conv.h"

#include <algorithm>
#include <cstring>

#include "condensed_kernel.h"

#if defined(__x86_64__) || defined(_M_X64)
#define SPARSIFY_X86 1
#include <immintrin.h>
#define SPARSIFY_AVX2 __attribute__((target("avx2,fma")))
#define SPARSIFY_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

namespace sparsify {
namespace {

// Floats of the output grid per band: with a 3x3 kernel a band reads about band + 2 plane rows
// of every input channel, which should stay in L2 while all output channels walk it.
constexpr int64_t kBandFloats = 64;
// The q grid and planes are padded to this many floats (the widest vector), so the offsets do
// not depend on the ISA.
constexpr int64_t kGridAlign = 16;
constexpr int64_t kMaxTileVectors = 8;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

int level() {
  static const int value = isa_level();
  return value;
}

// ---------------------------------------------------------------- portable path

void tiles_portable(const float* v, const int32_t* off, int64_t k, const float* x, int64_t n,
                    float* out) {
  std::fill(out, out + n, 0.0f);
  for (int64_t j = 0; j < k; ++j) {
    const float w = v[j];
    const float* p = x + off[j];
    for (int64_t q = 0; q < n; ++q) out[q] += w * p[q];
  }
}

#ifdef SPARSIFY_X86
// ---------------------------------------------------------------- AVX2 + FMA path

// T vectors of 8 outputs; the kept weights split round-robin over U accumulator sets.
template <int T, int U>
SPARSIFY_AVX2 void tile_avx2(const float* v, const int32_t* off, int64_t k, const float* x,
                             float* out) {
  __m256 acc[U][T];
  for (int u = 0; u < U; ++u) {
    for (int t = 0; t < T; ++t) acc[u][t] = _mm256_setzero_ps();
  }
  int64_t j = 0;
  for (; j + U <= k; j += U) {
    for (int u = 0; u < U; ++u) {
      const __m256 w = _mm256_broadcast_ss(v + j + u);
      const float* p = x + off[j + u];
      for (int t = 0; t < T; ++t) acc[u][t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * t), acc[u][t]);
    }
  }
  for (; j < k; ++j) {
    const __m256 w = _mm256_broadcast_ss(v + j);
    const float* p = x + off[j];
    for (int t = 0; t < T; ++t) acc[0][t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * t), acc[0][t]);
  }
  for (int t = 0; t < T; ++t) {
    __m256 s = acc[0][t];
    for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[u][t]);
    _mm256_storeu_ps(out + 8 * t, s);
  }
}

SPARSIFY_AVX2 void tiles_avx2(const float* v, const int32_t* off, int64_t k, const float* x,
                              int64_t nv, float* out) {
  int64_t t0 = 0;
  for (; t0 + kMaxTileVectors <= nv; t0 += kMaxTileVectors) {
    tile_avx2<8, 1>(v, off, k, x + 8 * t0, out + 8 * t0);
  }
  const float* xr = x + 8 * t0;
  float* o = out + 8 * t0;
  switch (nv - t0) {
    case 7: return tile_avx2<7, 1>(v, off, k, xr, o);
    case 6: return tile_avx2<6, 1>(v, off, k, xr, o);
    case 5: return tile_avx2<5, 2>(v, off, k, xr, o);
    case 4: return tile_avx2<4, 2>(v, off, k, xr, o);
    case 3: return tile_avx2<3, 2>(v, off, k, xr, o);
    case 2: return tile_avx2<2, 4>(v, off, k, xr, o);
    case 1: return tile_avx2<1, 4>(v, off, k, xr, o);
    default: return;
  }
}

// ---------------------------------------------------------------- AVX-512 path

template <int T, int U>
SPARSIFY_AVX512 void tile_avx512(const float* v, const int32_t* off, int64_t k, const float* x,
                                 float* out) {
  __m512 acc[U][T];
  for (int u = 0; u < U; ++u) {
    for (int t = 0; t < T; ++t) acc[u][t] = _mm512_setzero_ps();
  }
  int64_t j = 0;
  for (; j + U <= k; j += U) {
    for (int u = 0; u < U; ++u) {
      const __m512 w = _mm512_set1_ps(v[j + u]);
      const float* p = x + off[j + u];
      for (int t = 0; t < T; ++t) {
        acc[u][t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * t), acc[u][t]);
      }
    }
  }
  for (; j < k; ++j) {
    const __m512 w = _mm512_set1_ps(v[j]);
    const float* p = x + off[j];
    for (int t = 0; t < T; ++t) acc[0][t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * t), acc[0][t]);
  }
  for (int t = 0; t < T; ++t) {
    __m512 s = acc[0][t];
    for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u][t]);
    _mm512_storeu_ps(out + 16 * t, s);
  }
}

SPARSIFY_AVX512 void tiles_avx512(const float* v, const int32_t* off, int64_t k, const float* x,
                                  int64_t nv, float* out) {
  int64_t t0 = 0;
  for (; t0 + kMaxTileVectors <= nv; t0 += kMaxTileVectors) {
    tile_avx512<8, 1>(v, off, k, x + 16 * t0, out + 16 * t0);
  }
  const float* xr = x + 16 * t0;
  float* o = out + 16 * t0;
  switch (nv - t0) {
    case 7: return tile_avx512<7, 1>(v, off, k, xr, o);
    case 6: return tile_avx512<6, 1>(v, off, k, xr, o);
    case 5: return tile_avx512<5, 2>(v, off, k, xr, o);
    case 4: return tile_avx512<4, 2>(v, off, k, xr, o);
    case 3: return tile_avx512<3, 2>(v, off, k, xr, o);
    case 2: return tile_avx512<2, 4>(v, off, k, xr, o);
    case 1: return tile_avx512<1, 4>(v, off, k, xr, o);
    default: return;
  }
}
#endif  // SPARSIFY_X86

int64_t vector_floats() { return level() == 2 ? 16 : 8; }

inline int64_t column(const ConvPacked& w, int64_t r) { return w.cols.empty() ? r : w.cols[r]; }

inline float activate(const ConvPacked& w, float v) { return w.g.relu && v < 0.0f ? 0.0f : v; }

}  // namespace

std::string conv_output_size(const ConvGeometry& g, int64_t h, int64_t w, int64_t* out_h,
                             int64_t* out_w) {
  const int64_t span_h = g.dh * (g.kh - 1) + 1, span_w = g.dw * (g.kw - 1) + 1;
  const int64_t hp = h + g.pt + g.pb, wp = w + g.pl + g.pr;
  if (hp < span_h || wp < span_w) return "the padded input is smaller than the kernel";
  *out_h = (hp - span_h) / g.sh + 1;
  *out_w = (wp - span_w) / g.sw + 1;
  return "";
}

std::shared_ptr<const ConvOffsets> ConvPacked::offsets_for(int64_t h, int64_t w) const {
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (cached && cached->h == h && cached->w == w) return cached;
  }
  auto o = std::make_shared<ConvOffsets>();
  o->h = h;
  o->w = w;
  conv_output_size(g, h, w, &o->out_h, &o->out_w);  // checked by the caller
  const int64_t wp = w + g.pl + g.pr;
  o->wq = (wp + g.sw - 1) / g.sw;
  const int64_t max_shift = ((g.kh - 1) * g.dh / g.sh) * o->wq + (g.kw - 1) * g.dw / g.sw;
  o->plane = round_up(round_up(o->out_h * o->wq, kGridAlign) + max_shift, kGridAlign);
  o->planes = (static_cast<int64_t>(max_channel) + 1) * g.sh * g.sw;
  o->offsets.resize(static_cast<size_t>(rows * k));
  for (int64_t e = 0; e < rows * k; ++e) {
    const int64_t a = ky[e] % g.sh, b = kx[e] % g.sw;
    const int64_t plane = (channel[e] * g.sh + a) * g.sw + b;
    o->offsets[e] =
        static_cast<int32_t>(plane * o->plane + (ky[e] / g.sh) * o->wq + kx[e] / g.sw);
  }
  std::lock_guard<std::mutex> lock(mutex);
  cached = o;
  return o;
}

std::string pack_conv(const ConvGeometry& g, const float* values, const void* indices,
                      bool indices_are_int16, int64_t rows, int64_t k, const float* bias,
                      int64_t bias_len, const int32_t* cols, int64_t cols_len,
                      int64_t out_channels, ConvPacked* out) {
  if (g.kh < 1 || g.kw < 1 || g.sh < 1 || g.sw < 1 || g.dh < 1 || g.dw < 1 || g.pt < 0 ||
      g.pl < 0 || g.pb < 0 || g.pr < 0) {
    return "kernel_shape, strides and dilations must be >= 1 and pads >= 0";
  }
  if (rows < 0 || (rows > 0 && k < 1)) return "values must be [rows, k] with k >= 1";
  const bool has_cols = cols_len >= 0;
  if (has_cols && cols_len != rows) return "rows must hold one output channel per row";
  const int64_t width = has_cols ? out_channels : rows;
  if (has_cols && width < rows) {
    return "attribute out_channels must be at least the number of stored rows";
  }
  if (bias != nullptr && bias_len != width) return "bias must have one value per output channel";
  ConvPacked& p = *out;
  p.g = g;
  p.rows = rows;
  p.k = k;
  p.out = width;
  p.values.assign(values, values + rows * k);
  p.channel.resize(static_cast<size_t>(rows * k));
  p.ky.resize(p.channel.size());
  p.kx.resize(p.channel.size());
  const int64_t taps = g.kh * g.kw;
  int32_t max_channel = -1;
  for (int64_t e = 0; e < rows * k; ++e) {
    const int64_t i = indices_are_int16 ? static_cast<const int16_t*>(indices)[e]
                                        : static_cast<const int32_t*>(indices)[e];
    if (i < 0) return "indices must be non-negative";
    const int64_t tap = i % taps;
    p.channel[e] = static_cast<int32_t>(i / taps);
    p.ky[e] = static_cast<int32_t>(tap / g.kw * g.dh);
    p.kx[e] = static_cast<int32_t>(tap % g.kw * g.dw);
    max_channel = std::max(max_channel, p.channel[e]);
  }
  p.max_channel = max_channel;
  p.bias.assign(bias, bias == nullptr ? bias : bias + bias_len);
  p.cols.clear();
  p.empty_cols.clear();
  if (has_cols) {
    std::vector<char> used(static_cast<size_t>(width), 0);
    for (int64_t r = 0; r < rows; ++r) {
      if (cols[r] < 0 || cols[r] >= width) return "rows must lie in [0, out_channels)";
      if (used[cols[r]]) return "rows must not repeat";
      used[cols[r]] = 1;
    }
    p.cols.assign(cols, cols + rows);
    for (int64_t c = 0; c < width; ++c) {
      if (!used[c]) p.empty_cols.push_back(static_cast<int32_t>(c));
    }
  }
  return "";
}

ConvPlan::ConvPlan(const ConvPacked& w, const float* x, int64_t batch, int64_t channels,
                   int64_t h, int64_t wd, float* y)
    : w_(w), x_(x), batch_(batch), channels_(channels), h_(h), wd_(wd), y_(y) {
  off_ = w.offsets_for(h, wd);
  vec_ = vector_floats();
  q_pad_ = round_up(off_->out_h * off_->wq, kGridAlign);
  // Planes of every input channel (the kernel reads only those up to max_channel).
  buffer_ = channels * w.g.sh * w.g.sw * off_->plane;
  work_ = batch * w.rows * w.k * off_->out_h * off_->out_w;
  if (batch == 1) {
    planes_.resize(static_cast<size_t>(buffer_));
    fill_planes(x, planes_.data());
    rows_per_chunk_ = std::max<int64_t>(1, (w.rows + 31) / 32);
    row_chunks_ = (w.rows + rows_per_chunk_ - 1) / rows_per_chunk_;
    chunks_ = row_chunks_;
    const int64_t hw = off_->out_h * off_->out_w;
    for (int32_t c : w.empty_cols) {
      const float b = activate(w, w.bias.empty() ? 0.0f : w.bias[c]);
      std::fill(y + c * hw, y + (c + 1) * hw, b);
    }
  } else {
    chunks_ = batch;
  }
}

void ConvPlan::fill_planes(const float* x, float* planes) const {
  const ConvGeometry& g = w_.g;
  const int64_t wq = off_->wq, plane = off_->plane;
  const int64_t plane_rows = (plane + wq - 1) / wq;
  for (int64_t c = 0; c < channels_; ++c) {
    const float* xc = x + c * h_ * wd_;
    for (int64_t a = 0; a < g.sh; ++a) {
      for (int64_t b = 0; b < g.sw; ++b) {
        float* dst = planes + ((c * g.sh + a) * g.sw + b) * plane;
        // Columns j of the plane row read x column sw * j + b - pl: the valid j range.
        const int64_t j0 = std::max<int64_t>(0, (g.pl - b + g.sw - 1) / g.sw);
        const int64_t j1 = std::min<int64_t>(wq, (wd_ - 1 + g.pl - b) / g.sw + 1);
        for (int64_t i = 0; i < plane_rows; ++i) {
          float* row = dst + i * wq;
          const int64_t n = std::min(wq, plane - i * wq);
          const int64_t r = g.sh * i + a - g.pt;
          if (r < 0 || r >= h_ || j1 <= j0) {
            std::fill(row, row + n, 0.0f);
            continue;
          }
          const float* src = xc + r * wd_;
          const int64_t lo = std::min(j0, n), hi = std::min(j1, n);
          std::fill(row, row + lo, 0.0f);
          if (g.sw == 1) {
            std::memcpy(row + lo, src + lo + b - g.pl, static_cast<size_t>(hi - lo) * sizeof(float));
          } else {
            for (int64_t j = lo; j < hi; ++j) row[j] = src[g.sw * j + b - g.pl];
          }
          std::fill(row + hi, row + n, 0.0f);
        }
      }
    }
  }
}

void ConvPlan::run_rows(const float* planes, int64_t r0, int64_t r1, float* y) const {
  const int64_t wq = off_->wq, out_h = off_->out_h, out_w = off_->out_w;
  const int64_t hw = out_h * out_w;
  const int64_t band_rows = std::max<int64_t>(1, kBandFloats / wq);
  std::vector<float> scratch(static_cast<size_t>(round_up(band_rows * wq, vec_)));
  const int32_t* offsets = off_->offsets.data();
  for (int64_t oh0 = 0; oh0 < out_h; oh0 += band_rows) {
    const int64_t nrows = std::min(band_rows, out_h - oh0);
    const int64_t nv = (nrows * wq + vec_ - 1) / vec_;
    const float* xb = planes + oh0 * wq;
    for (int64_t r = r0; r < r1; ++r) {
      const float* v = w_.values.data() + r * w_.k;
      const int32_t* off = offsets + r * w_.k;
#ifdef SPARSIFY_X86
      if (level() == 2) {
        tiles_avx512(v, off, w_.k, xb, nv, scratch.data());
      } else if (level() == 1) {
        tiles_avx2(v, off, w_.k, xb, nv, scratch.data());
      } else {
        tiles_portable(v, off, w_.k, xb, nv * vec_, scratch.data());
      }
#else
      tiles_portable(v, off, w_.k, xb, nv * vec_, scratch.data());
#endif
      const int64_t col = column(w_, r);
      const float bias = w_.bias.empty() ? 0.0f : w_.bias[col];
      float* yc = y + col * hw + oh0 * out_w;
      for (int64_t i = 0; i < nrows; ++i) {
        const float* s = scratch.data() + i * wq;
        float* d = yc + i * out_w;
        if (w_.g.relu) {
          for (int64_t j = 0; j < out_w; ++j) d[j] = std::max(s[j] + bias, 0.0f);
        } else {
          for (int64_t j = 0; j < out_w; ++j) d[j] = s[j] + bias;
        }
      }
    }
  }
}

void ConvPlan::run_chunk(int64_t chunk) const {
  if (batch_ == 1) {
    const int64_t r0 = chunk * rows_per_chunk_;
    return run_rows(planes_.data(), r0, std::min(w_.rows, r0 + rows_per_chunk_), y_);
  }
  const int64_t hw = off_->out_h * off_->out_w;
  float* y = y_ + chunk * w_.out * hw;
  for (int32_t c : w_.empty_cols) {
    const float b = activate(w_, w_.bias.empty() ? 0.0f : w_.bias[c]);
    std::fill(y + c * hw, y + (c + 1) * hw, b);
  }
  std::unique_ptr<float[]> planes(new float[static_cast<size_t>(buffer_)]);
  fill_planes(x_ + chunk * channels_ * h_ * wd_, planes.get());
  run_rows(planes.get(), 0, w_.rows, y);
}

}  // namespace sparsify
