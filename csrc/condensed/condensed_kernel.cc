// See condensed_kernel.h. Two code paths, chosen per call:
//
// * batch 1 (gather): x [in] stays in L1/L2; each row streams its values and indices once and
//   gathers x. Four rows run together so four gathers are in flight.
// * batch > 1 (transposed): x is transposed to xt [in, batch_pad] so each kept index reads one
//   contiguous run of batch values; a row costs k broadcast-FMAs per 8 batch lanes. The batch is
//   cut into tiles whose slice of xt fits in L2, and each thread walks its rows once per tile.
//
// x86-64 builds carry an AVX2+FMA path (function-level target attributes, so the file compiles
// without -mavx2 and the library still loads on older CPUs) and a portable path that the
// compiler vectorises for the baseline ISA (SSE2, NEON on aarch64).
#include "condensed_kernel.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__x86_64__) || defined(_M_X64)
#define SPARSIFY_X86 1
#include <immintrin.h>
#define SPARSIFY_AVX2 __attribute__((target("avx2,fma")))
#endif

namespace sparsify {
namespace {

constexpr int64_t kLanes = 8;
// Bytes of xt one batch tile may occupy: half of a typical 512 KiB L2, leaving room for the
// chunk's values and indices.
constexpr int64_t kTileBytes = 192 * 1024;
// Bytes of values + indices one row chunk should stream (keeps a chunk's weights in L2 while it
// is reused across batch tiles, and gives the thread pool enough chunks to balance).
constexpr int64_t kChunkBytes = 96 * 1024;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

template <typename Idx>
const Idx* index_data(const Packed& w);
template <>
const int16_t* index_data<int16_t>(const Packed& w) { return w.idx16v.data(); }
template <>
const int32_t* index_data<int32_t>(const Packed& w) { return w.idx32v.data(); }

inline int64_t column(const Packed& w, int64_t r) { return w.cols.empty() ? r : w.cols[r]; }

inline float bias_at(const Packed& w, int64_t col) { return w.bias.empty() ? 0.0f : w.bias[col]; }

// ---------------------------------------------------------------- portable path

template <typename Idx>
void gather_rows_portable(const Packed& w, const float* x, int64_t r0, int64_t r1, float* y) {
  const Idx* idx = index_data<Idx>(w);
  for (int64_t r = r0; r < r1; ++r) {
    const float* v = w.values.data() + r * w.kp;
    const Idx* id = idx + r * w.kp;
    float acc[kLanes] = {0};
    for (int64_t j = 0; j < w.kp; j += kLanes) {
      for (int64_t l = 0; l < kLanes; ++l) acc[l] += v[j + l] * x[id[j + l]];
    }
    float s = 0.0f;
    for (float a : acc) s += a;
    const int64_t col = column(w, r);
    y[col] = s + bias_at(w, col);
  }
}

template <typename Idx>
void tile_rows_portable(const Packed& w, const float* xt, int64_t ldx, int64_t width,
                        int64_t r0, int64_t r1, float* acc) {
  const Idx* idx = index_data<Idx>(w);
  for (int64_t r = r0; r < r1; ++r) {
    const float* v = w.values.data() + r * w.kp;
    const Idx* id = idx + r * w.kp;
    float* a = acc + (r - r0) * width;
    std::fill(a, a + width, 0.0f);
    for (int64_t j = 0; j < w.k; ++j) {
      const float vj = v[j];
      const float* xr = xt + static_cast<int64_t>(id[j]) * ldx;
      for (int64_t b = 0; b < width; ++b) a[b] += vj * xr[b];
    }
  }
}

// ---------------------------------------------------------------- AVX2 + FMA path
#ifdef SPARSIFY_X86

template <typename Idx>
SPARSIFY_AVX2 inline __m256i load_idx8(const Idx* p);
template <>
SPARSIFY_AVX2 inline __m256i load_idx8<int16_t>(const int16_t* p) {
  return _mm256_cvtepi16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
template <>
SPARSIFY_AVX2 inline __m256i load_idx8<int32_t>(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}

SPARSIFY_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

template <typename Idx>
SPARSIFY_AVX2 void gather_rows_avx2(const Packed& w, const float* x, int64_t r0, int64_t r1,
                                    float* y) {
  const Idx* idx = index_data<Idx>(w);
  const int64_t kp = w.kp;
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4) {
    const float* v = w.values.data() + r * kp;
    const Idx* id = idx + r * kp;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t j = 0; j < kp; j += kLanes) {
      const __m256 g0 = _mm256_i32gather_ps(x, load_idx8(id + j), 4);
      const __m256 g1 = _mm256_i32gather_ps(x, load_idx8(id + kp + j), 4);
      const __m256 g2 = _mm256_i32gather_ps(x, load_idx8(id + 2 * kp + j), 4);
      const __m256 g3 = _mm256_i32gather_ps(x, load_idx8(id + 3 * kp + j), 4);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j), g0, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(v + kp + j), g1, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 2 * kp + j), g2, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(v + 3 * kp + j), g3, a3);
    }
    const float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
    for (int64_t q = 0; q < 4; ++q) {
      const int64_t col = column(w, r + q);
      y[col] = s[q] + bias_at(w, col);
    }
  }
  for (; r < r1; ++r) {
    const float* v = w.values.data() + r * kp;
    const Idx* id = idx + r * kp;
    __m256 a0 = _mm256_setzero_ps();
    for (int64_t j = 0; j < kp; j += kLanes) {
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(v + j),
                           _mm256_i32gather_ps(x, load_idx8(id + j), 4), a0);
    }
    const int64_t col = column(w, r);
    y[col] = hsum(a0) + bias_at(w, col);
  }
}

// One row against a batch tile of NV * 8 lanes. Up to 4 vectors wide, two accumulator sets
// (even / odd j) give 2 * NV independent FMA chains; wider tiles have enough chains already.
template <int NV, typename Idx>
SPARSIFY_AVX2 void tile_rows_avx2_nv(const Packed& w, const float* xt, int64_t ldx, int64_t r0,
                                     int64_t r1, float* acc) {
  const Idx* idx = index_data<Idx>(w);
  constexpr bool kTwoSets = NV <= 4;
  for (int64_t r = r0; r < r1; ++r) {
    const float* v = w.values.data() + r * w.kp;
    const Idx* id = idx + r * w.kp;
    __m256 a[NV], b[kTwoSets ? NV : 1];
    for (int q = 0; q < NV; ++q) a[q] = _mm256_setzero_ps();
    if (kTwoSets) {
      for (int q = 0; q < NV; ++q) b[q] = _mm256_setzero_ps();
    }
    int64_t j = 0;
    for (; j + 2 <= w.k; j += 2) {
      const float* p0 = xt + static_cast<int64_t>(id[j]) * ldx;
      const float* p1 = xt + static_cast<int64_t>(id[j + 1]) * ldx;
      const __m256 v0 = _mm256_broadcast_ss(v + j);
      const __m256 v1 = _mm256_broadcast_ss(v + j + 1);
      for (int q = 0; q < NV; ++q) a[q] = _mm256_fmadd_ps(v0, _mm256_load_ps(p0 + 8 * q), a[q]);
      if (kTwoSets) {
        for (int q = 0; q < NV; ++q) b[q] = _mm256_fmadd_ps(v1, _mm256_load_ps(p1 + 8 * q), b[q]);
      } else {
        for (int q = 0; q < NV; ++q) a[q] = _mm256_fmadd_ps(v1, _mm256_load_ps(p1 + 8 * q), a[q]);
      }
    }
    if (j < w.k) {
      const float* p0 = xt + static_cast<int64_t>(id[j]) * ldx;
      const __m256 v0 = _mm256_broadcast_ss(v + j);
      for (int q = 0; q < NV; ++q) a[q] = _mm256_fmadd_ps(v0, _mm256_load_ps(p0 + 8 * q), a[q]);
    }
    float* out = acc + (r - r0) * NV * 8;
    for (int q = 0; q < NV; ++q) {
      _mm256_storeu_ps(out + 8 * q, kTwoSets ? _mm256_add_ps(a[q], b[q]) : a[q]);
    }
  }
}

template <typename Idx>
SPARSIFY_AVX2 void tile_rows_avx2(const Packed& w, const float* xt, int64_t ldx, int64_t width,
                                  int64_t r0, int64_t r1, float* acc) {
  switch (width / 8) {
    case 1: return tile_rows_avx2_nv<1, Idx>(w, xt, ldx, r0, r1, acc);
    case 2: return tile_rows_avx2_nv<2, Idx>(w, xt, ldx, r0, r1, acc);
    case 3: return tile_rows_avx2_nv<3, Idx>(w, xt, ldx, r0, r1, acc);
    case 4: return tile_rows_avx2_nv<4, Idx>(w, xt, ldx, r0, r1, acc);
    case 5: return tile_rows_avx2_nv<5, Idx>(w, xt, ldx, r0, r1, acc);
    case 6: return tile_rows_avx2_nv<6, Idx>(w, xt, ldx, r0, r1, acc);
    case 7: return tile_rows_avx2_nv<7, Idx>(w, xt, ldx, r0, r1, acc);
    default: return tile_rows_avx2_nv<8, Idx>(w, xt, ldx, r0, r1, acc);
  }
}

bool detect_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

#endif  // SPARSIFY_X86

const bool kAvx2 =
#ifdef SPARSIFY_X86
    detect_avx2();
#else
    false;
#endif

constexpr int64_t kMaxTile = 64;  // widest batch tile the SIMD path keeps in registers

template <typename Idx>
void gather_rows(const Packed& w, const float* x, int64_t r0, int64_t r1, float* y) {
#ifdef SPARSIFY_X86
  if (kAvx2) return gather_rows_avx2<Idx>(w, x, r0, r1, y);
#endif
  gather_rows_portable<Idx>(w, x, r0, r1, y);
}

template <typename Idx>
void tile_rows(const Packed& w, const float* xt, int64_t ldx, int64_t width, int64_t r0,
               int64_t r1, float* acc) {
#ifdef SPARSIFY_X86
  if (kAvx2) return tile_rows_avx2<Idx>(w, xt, ldx, width, r0, r1, acc);
#endif
  tile_rows_portable<Idx>(w, xt, ldx, width, r0, r1, acc);
}

template <typename Idx>
void run_rows(const Packed& w, const float* x, const float* xt, int64_t batch, int64_t batch_pad,
              int64_t in, int64_t r0, int64_t r1, float* y) {
  if (xt == nullptr) return gather_rows<Idx>(w, x, r0, r1, y);  // batch 1
  int64_t tile = std::max<int64_t>(kLanes, kTileBytes / (in * 4) / kLanes * kLanes);
  tile = std::min({tile, kMaxTile, batch_pad});
  // Rows per pass: bounded so the accumulator block stays small (16 rows x 64 lanes = 4 KiB).
  constexpr int64_t kRowBlock = 16;
  float acc[kRowBlock * kMaxTile];
  for (int64_t b0 = 0; b0 < batch_pad; b0 += tile) {
    const int64_t width = std::min(tile, batch_pad - b0);
    const int64_t valid = std::min(width, batch - b0);
    for (int64_t rb = r0; rb < r1; rb += kRowBlock) {
      const int64_t re = std::min(rb + kRowBlock, r1);
      tile_rows<Idx>(w, xt + b0, batch_pad, width, rb, re, acc);
      for (int64_t r = rb; r < re; ++r) {
        const int64_t col = column(w, r);
        const float bias = bias_at(w, col);
        const float* a = acc + (r - rb) * width;
        float* yc = y + b0 * w.out + col;
        for (int64_t b = 0; b < valid; ++b) yc[b * w.out] = a[b] + bias;
      }
    }
  }
}

}  // namespace

bool uses_avx2() { return kAvx2; }

std::string pack(const float* values, const void* indices, bool indices_are_int16, int64_t rows,
                 int64_t k, const float* bias, int64_t bias_len, const int32_t* cols,
                 int64_t cols_len, int64_t out_features, Packed* out) {
  if (rows < 0 || (rows > 0 && k < 1)) return "values must be [rows, k] with k >= 1";
  if (cols != nullptr && cols_len != rows) return "rows must hold one output column per row";
  const int64_t width = cols != nullptr ? out_features : rows;
  if (cols != nullptr && width < rows) {
    return "attribute out_features must be at least the number of stored rows";
  }
  if (bias != nullptr && bias_len != width) return "bias must have one value per output column";
  Packed& p = *out;
  p.rows = rows;
  p.k = k;
  p.kp = round_up(k, kLanes);
  p.out = width;
  p.idx16 = indices_are_int16;
  p.values.assign(static_cast<size_t>(rows * p.kp), 0.0f);
  if (p.idx16) {
    p.idx16v.assign(static_cast<size_t>(rows * p.kp), 0);
  } else {
    p.idx32v.assign(static_cast<size_t>(rows * p.kp), 0);
  }
  int32_t max_index = -1;
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(&p.values[r * p.kp], values + r * k, static_cast<size_t>(k) * sizeof(float));
    for (int64_t j = 0; j < k; ++j) {
      const int32_t i = indices_are_int16 ? static_cast<const int16_t*>(indices)[r * k + j]
                                          : static_cast<const int32_t*>(indices)[r * k + j];
      if (i < 0) return "indices must be non-negative";
      max_index = std::max(max_index, i);
      if (p.idx16) {
        p.idx16v[r * p.kp + j] = static_cast<int16_t>(i);
      } else {
        p.idx32v[r * p.kp + j] = i;
      }
    }
  }
  p.max_index = max_index;
  p.bias.assign(bias, bias == nullptr ? bias : bias + bias_len);
  p.cols.clear();
  p.empty_cols.clear();
  if (cols != nullptr) {
    std::vector<char> used(static_cast<size_t>(width), 0);
    for (int64_t r = 0; r < rows; ++r) {
      if (cols[r] < 0 || cols[r] >= width) return "rows must lie in [0, out_features)";
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

Plan::Plan(const Packed& w, const float* x, int64_t batch, int64_t in, float* y)
    : w_(w), x_(x), batch_(batch), in_(in), y_(y) {
  for (int64_t b = 0; b < batch; ++b) {
    float* yb = y + b * w.out;
    for (int32_t c : w.empty_cols) yb[c] = bias_at(w, c);
  }
  if (batch > 1) {
    batch_pad_ = round_up(batch, kLanes);
    const size_t bytes = static_cast<size_t>(in * batch_pad_) * sizeof(float);
    xt_ = static_cast<float*>(::operator new(bytes, std::align_val_t(64)));
    for (int64_t i = 0; i < in; ++i) {
      float* row = xt_ + i * batch_pad_;
      for (int64_t b = 0; b < batch; ++b) row[b] = x[b * in + i];
      std::fill(row + batch, row + batch_pad_, 0.0f);
    }
  }
  const int64_t row_bytes = std::max<int64_t>(1, w.kp * (sizeof(float) + (w.idx16 ? 2 : 4)));
  rows_per_chunk_ = std::max<int64_t>(4, kChunkBytes / row_bytes / 4 * 4);
  chunks_ = w.rows == 0 ? 0 : (w.rows + rows_per_chunk_ - 1) / rows_per_chunk_;
}

Plan::~Plan() {
  if (xt_ != nullptr) ::operator delete(xt_, std::align_val_t(64));
}

void Plan::run_chunk(int64_t chunk) const {
  const int64_t r0 = chunk * rows_per_chunk_;
  const int64_t r1 = std::min(w_.rows, r0 + rows_per_chunk_);
  if (w_.idx16) {
    run_rows<int16_t>(w_, x_, xt_, batch_, batch_pad_, in_, r0, r1, y_);
  } else {
    run_rows<int32_t>(w_, x_, xt_, batch_, batch_pad_, in_, r0, r1, y_);
  }
}

}  // namespace sparsify
