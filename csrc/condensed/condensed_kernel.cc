// See condensed_kernel.h. Code paths, chosen per call:
//
// * batch 1: x [in] stays in L1 and the weights stream once, in the row-lane layout (see Lanes):
//   each SIMD lane is one output row, and one in-register permute of a window of x serves a
//   whole vector of rows. AVX-512: 64 rows per group, 32-input windows (lane_rows_avx512); AVX2:
//   16 rows, 16-input windows (lane_rows_avx2). Where AVX2 windows would mostly idle (very
//   sparse rows), scalar loads + insertps instead (gather_rows_avx2), four rows at a time so
//   four gathers are in flight.
// * batch 2..16 (direct, AVX2): x transposed to xt [in, 8 or 16]; each kept entry is one
//   broadcast FMA per 8 lanes into register accumulators (direct_rows_avx2); the zero padding of
//   the last 8-entry block is skipped, and groups of 4 consecutive rows store 4 outputs at once.
//   Larger batches take the same path for sparse rows (<= 30% kept): on AVX2 in tiles of up to
//   64 lanes, one row at a time with all of them in registers (wide_rows_avx2), while xt stays
//   within 1 MiB (else tiles of 16 lanes while the weights are at most 16 MB: every tile
//   streams them again); on AVX-512 in tiles of up to 64 lanes (direct_rows_avx512: 4 rows x 4
//   zmm accumulators). Both write their outputs through an L1 buffer.
// * int32 indices or xt too large (blocked): x is transposed to xt [in, batch_pad] so each kept
//   index reads one contiguous run of batch values (a row costs k broadcast-FMAs per 8 batch
//   lanes). To keep
//   those reads in L1, a block of kRowBlock rows walks the inputs in chunks of kInChunk: the
//   chunk's slice of xt (64 inputs x 64 lanes = 16 KiB) is reused by every row of the block,
//   whose partial sums live in a small accumulator block (8 KiB). The weights come in the
//   Blocked layout, which lists entries in exactly that order with 8-bit chunk offsets.
//
// x86-64 builds carry AVX-512 and AVX2+FMA paths (function-level target attributes, so the file
// compiles without -mavx2 and the library still loads on older CPUs) and a portable path that
// the compiler vectorises for the baseline ISA (SSE2, NEON on aarch64).
#include "condensed_kernel.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__x86_64__) || defined(_M_X64)
#define SPARSIFY_X86 1
#include <immintrin.h>
#define SPARSIFY_AVX2 __attribute__((target("avx2,fma")))
#define SPARSIFY_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

namespace sparsify {
namespace {

constexpr int64_t kLanes = 8;
// Bytes of values + indices one row chunk should stream on the batch-1 path (gives the thread
// pool enough chunks to balance without making them tiny).
constexpr int64_t kChunkBytes = 96 * 1024;
// Bytes of xt one direct-path tile may occupy: half of a typical 512 KiB L2, leaving room for
// the weights.
constexpr int64_t kDirectXtBytes = 256 * 1024;
// AVX2 batches above 16 take the direct path (16-lane tiles) while the grouped weights are at
// most this size (see Plan::Plan).
constexpr int64_t kDirectWeightBytes = 16 << 20;
// AVX-512 direct tiles above 16 lanes: up to 64 lanes, while the tile's xt stays within
// kWideXtBytes (a 1 MiB L2: in <= 4096 takes 64-lane tiles; on Zen 5, 90% sparse 4096x4096
// at batch 64 ran 3.6x faster than dense with 64-lane tiles (xt 1 MiB), 1.8x with 32-lane ones,
// whose weights (10 MB) stream twice).
constexpr int64_t kWideLanes = 64, kWideXtBytes = 1024 * 1024;
// Row lanes: vectors per group and window width, AVX-512 and AVX2 (see lane_rows_avx512).
constexpr int64_t kLaneVectors512 = 4, kLaneWindow512 = 32;
constexpr int64_t kLaneVectors256 = 2, kLaneWindow256 = 16;
// AVX2 row lanes need this share of their step slots filled to beat scalar gathers (measured
// on Zen 4 at batch 1: ahead at 0.58 (34 vs 52 us) and 0.43 (23 vs 28 us), level at ~0.33).
constexpr double kMinLaneEfficiency = 0.35;
// Readable zero floats past the end of x on the batch-1 lane path: the widest window.
constexpr int64_t kXPad = kLaneWindow512;
constexpr int64_t kMaxTile = 16384 / (kInChunk * 4);  // batch lanes per tile: one xt chunk = 16 KiB

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

// xt [in, ldx] = x [batch, in] transposed, lanes batch..ldx zero.
void transpose_portable(const float* x, int64_t batch, int64_t in, int64_t ldx, float* xt) {
  for (int64_t i = 0; i < in; ++i) {
    float* row = xt + i * ldx;
    for (int64_t b = 0; b < batch; ++b) row[b] = x[b * in + i];
    std::fill(row + batch, row + ldx, 0.0f);
  }
}

// Accumulates row block `blk` against batch lanes [0, width) of xt into acc [kRowBlock, width].
void block_portable(const Packed& w, int64_t blk, const float* xt, int64_t ldx, int64_t width,
                    float* acc) {
  const Blocked& bl = w.blocked;
  std::fill(acc, acc + kRowBlock * width, 0.0f);
  const float* v = bl.values.data() + bl.block_start[blk];
  const uint8_t* o = bl.offsets.data() + bl.block_start[blk];
  const uint8_t* seg = bl.seg.data() + blk * bl.chunks * kRowBlock;
  for (int64_t c = 0; c < bl.chunks; ++c) {
    const float* xc = xt + c * kInChunk * ldx;
    for (int64_t r = 0; r < kRowBlock; ++r) {
      const int n = seg[c * kRowBlock + r];
      float* a = acc + r * width;
      for (int e = 0; e < n; ++e) {
        const float* xr = xc + o[e] * ldx;
        for (int64_t b = 0; b < width; ++b) a[b] += v[e] * xr[b];
      }
      v += n;
      o += n;
    }
  }
}

// ---------------------------------------------------------------- AVX2 + FMA path
#ifdef SPARSIFY_X86

SPARSIFY_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Eight floats x[id[0..7]]. Scalar loads merged with insertps beat vpgatherdd on AMD Zen
// (measured ~30% on Zen 3) and cost about the same on recent Intel cores. The indices are read
// as two 64-bit words and split with shifts: the loop is bound by load ports (one per x element
// already), and this takes the index loads off them (8 -> 2 per gather for int16).
SPARSIFY_AVX2 inline __m128 gather4(const float* x, uint32_t i0, uint32_t i1, uint32_t i2,
                                    uint32_t i3) {
  __m128 v = _mm_load_ss(x + i0);
  v = _mm_insert_ps(v, _mm_load_ss(x + i1), 0x10);
  v = _mm_insert_ps(v, _mm_load_ss(x + i2), 0x20);
  return _mm_insert_ps(v, _mm_load_ss(x + i3), 0x30);
}

template <typename Idx>
SPARSIFY_AVX2 inline __m256 gather8(const float* x, const Idx* id);
template <>
SPARSIFY_AVX2 inline __m256 gather8<int16_t>(const float* x, const int16_t* id) {
  uint64_t a, b;  // indices are non-negative, so the low 16 bits of each lane are the index
  std::memcpy(&a, id, 8);
  std::memcpy(&b, id + 4, 8);
  const __m128 lo = gather4(x, a & 0xffff, (a >> 16) & 0xffff, (a >> 32) & 0xffff, a >> 48);
  const __m128 hi = gather4(x, b & 0xffff, (b >> 16) & 0xffff, (b >> 32) & 0xffff, b >> 48);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}
template <>
SPARSIFY_AVX2 inline __m256 gather8<int32_t>(const float* x, const int32_t* id) {
  uint64_t a, b, c, d;
  std::memcpy(&a, id, 8);
  std::memcpy(&b, id + 2, 8);
  std::memcpy(&c, id + 4, 8);
  std::memcpy(&d, id + 6, 8);
  const __m128 lo = gather4(x, static_cast<uint32_t>(a), a >> 32, static_cast<uint32_t>(b), b >> 32);
  const __m128 hi = gather4(x, static_cast<uint32_t>(c), c >> 32, static_cast<uint32_t>(d), d >> 32);
  return _mm256_insertf128_ps(_mm256_castps128_ps256(lo), hi, 1);
}

// Rows [r0, r1) (r0 a multiple of kGroupRows) from the grouped layout: four rows at a time, so
// four gathers are in flight, all read from one stream.
template <typename Idx>
SPARSIFY_AVX2 void gather_rows_avx2(const Packed& w, const float* x, int64_t r0, int64_t r1,
                                    float* y) {
  const int64_t nb = w.kp / kLanes;
  const int64_t stride = w.group_stride;
  for (int64_t r = r0; r < r1; r += kGroupRows) {
    const float* p = w.grouped.data() + (r / kGroupRows) * nb * stride;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    __m256 a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; ++b, p += stride) {
      _mm_prefetch(reinterpret_cast<const char*>(p + 8 * stride), _MM_HINT_T0);
      const Idx* id = reinterpret_cast<const Idx*>(p + kGroupRows * kLanes);
      const __m256 g0 = gather8(x, id);
      const __m256 g1 = gather8(x, id + kLanes);
      const __m256 g2 = gather8(x, id + 2 * kLanes);
      const __m256 g3 = gather8(x, id + 3 * kLanes);
      a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), g0, a0);
      a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p + kLanes), g1, a1);
      a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 2 * kLanes), g2, a2);
      a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p + 3 * kLanes), g3, a3);
    }
    const float s[kGroupRows] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
    for (int64_t q = 0; q < kGroupRows && r + q < r1; ++q) {
      const int64_t col = column(w, r + q);
      y[col] = s[q] + bias_at(w, col);
    }
  }
}

// Stores the sums of rows [r, min(r + n, r1)) of the row-lane layout (scattered by column).
inline void store_lanes(const Packed& w, const float* sums, int64_t n, int64_t r, int64_t r1,
                        float* y) {
  n = std::min(n, r1 - r);
  if (w.cols.empty() && !w.bias.empty()) {  // consecutive columns: a loop the compiler vectorises
    for (int64_t q = 0; q < n; ++q) y[r + q] = sums[q] + w.bias[r + q];
    return;
  }
  for (int64_t q = 0; q < n; ++q) {
    const int64_t col = column(w, r + q);
    y[col] = sums[q] + bias_at(w, col);
  }
}

// x[xw[off[l]]] for 8 lanes, from the 16-float window xw0 | xw1 (two permutes and a blend on
// offset bit 3).
SPARSIFY_AVX2 inline __m256 window16(__m256 xw0, __m256 xw1, const uint8_t* off) {
  // Offsets 8..15 are stored with bit 7 instead of bit 3 (see lane_offset_byte): sign-extended,
  // that is the sign bit blendv reads, and the permutes read only bits 0..2.
  const __m256i o = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(off)));
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(xw0, o), _mm256_permutevar8x32_ps(xw1, o),
                          _mm256_castsi256_ps(o));
}

// x[xw[off[l]]] for 8 lanes whose offsets are all below 8: one permute.
SPARSIFY_AVX2 inline __m256 window8(__m256 xw0, const uint8_t* off) {
  const __m256i o = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(off)));
  return _mm256_permutevar8x32_ps(xw0, o);
}

// Rows [r0, r1) (r0 a multiple of 8 * NV) from the row-lane layout, NV vectors of 8 rows per
// group; see lane_rows_avx512. kNarrow: every offset is below 8 (2:4 rows, whose steps each take
// one entry from the same group of 4 inputs), so one permute per vector instead of two and a
// blend. x must be readable up to the last base + 16 (Plan pads it).
template <int NV, bool kNarrow>
SPARSIFY_AVX2 void lane_rows_avx2(const Packed& w, const float* x, int64_t r0, int64_t r1,
                                  float* y) {
  constexpr int64_t L = 8 * NV;
  const Lanes& ln = w.lanes;
  for (int64_t r = r0; r < r1; r += L) {
    const int64_t s0 = ln.group_start[r / L], steps = ln.group_start[r / L + 1] - s0;
    const float* v = ln.values.data() + s0 * L;
    const uint8_t* o = ln.offsets.data() + s0 * L;
    const int32_t* base = ln.base.data() + s0;
    __m256 acc[2][NV];  // even and odd steps: two FMA chains per vector
    for (int q = 0; q < NV; ++q) acc[0][q] = acc[1][q] = _mm256_setzero_ps();
    const auto step = [&](int64_t t, __m256* a) SPARSIFY_AVX2 {
      const __m256 xw0 = _mm256_loadu_ps(x + base[t]);
      const __m256 xw1 = kNarrow ? xw0 : _mm256_loadu_ps(x + base[t] + 8);
      for (int q = 0; q < NV; ++q) {
        const uint8_t* off = o + L * t + 8 * q;
        a[q] = _mm256_fmadd_ps(_mm256_loadu_ps(v + L * t + 8 * q),
                               kNarrow ? window8(xw0, off) : window16(xw0, xw1, off), a[q]);
      }
    };
    int64_t t = 0;
    for (; t + 2 <= steps; t += 2) {  // constant accumulator indices keep them in registers
      step(t, acc[0]);
      step(t + 1, acc[1]);
    }
    if (t < steps) step(t, acc[0]);
    alignas(32) float sums[L];
    for (int q = 0; q < NV; ++q) _mm256_store_ps(sums + 8 * q, _mm256_add_ps(acc[0][q], acc[1][q]));
    store_lanes(w, sums, L, r, r1, y);
  }
}

// Rows [r0, r1) (r0 a multiple of 16 * NV) from the row-lane layout, NV vectors of 16 rows per
// group. A step loads its 32-input window of x once (two vectors) and, per vector of rows, one
// two-source permute (vpermt2ps) picks each row's input, multiplied into that row's lane.
// Sharing the window over NV vectors matters: its loads were the bottleneck (Zen 4, batch 1,
// 90% sparse 768x3072: 34 us with 16 rows per group, 23 us with 64; scalar gathers 52 us,
// vgatherdps 92 us, dense 120 us). x must be readable up to the last base + 32 (Plan pads it).
template <int NV>
SPARSIFY_AVX512 void lane_rows_avx512(const Packed& w, const float* x, int64_t r0, int64_t r1,
                                      float* y) {
  constexpr int64_t L = 16 * NV;
  const Lanes& ln = w.lanes;
  for (int64_t r = r0; r < r1; r += L) {
    const int64_t s0 = ln.group_start[r / L], steps = ln.group_start[r / L + 1] - s0;
    const float* v = ln.values.data() + s0 * L;
    const uint8_t* o = ln.offsets.data() + s0 * L;
    const int32_t* base = ln.base.data() + s0;
    __m512 acc[2][NV];  // even and odd steps: two FMA chains per vector
    for (int q = 0; q < NV; ++q) acc[0][q] = acc[1][q] = _mm512_setzero_ps();
    const auto step = [&](int64_t t, __m512* a) SPARSIFY_AVX512 {
      const __m512 xw0 = _mm512_loadu_ps(x + base[t]), xw1 = _mm512_loadu_ps(x + base[t] + 16);
      for (int q = 0; q < NV; ++q) {
        // The masked form: gcc 12 warns on the plain one's undefined source operand.
        const __m512i off = _mm512_maskz_cvtepu8_epi32(
            0xffff, _mm_loadu_si128(reinterpret_cast<const __m128i*>(o + L * t + 16 * q)));
        a[q] = _mm512_fmadd_ps(_mm512_loadu_ps(v + L * t + 16 * q),
                               _mm512_permutex2var_ps(xw0, off, xw1), a[q]);
      }
    };
    int64_t t = 0;
    for (; t + 2 <= steps; t += 2) {  // constant accumulator indices keep them in registers
      step(t, acc[0]);
      step(t + 1, acc[1]);
    }
    if (t < steps) step(t, acc[0]);
    alignas(64) float sums[L];
    for (int q = 0; q < NV; ++q) {
      _mm512_store_ps(sums + 16 * q, _mm512_add_ps(acc[0][q], acc[1][q]));
    }
    store_lanes(w, sums, L, r, r1, y);
  }
}

// Four consecutive output columns of 8 batch lanes (a0..a3: one column each, lanes lane0..+8):
// transposed in registers so each batch row gets one 4-float store (instead of 8 strided scalar
// stores per column); lanes >= batch are dropped.
SPARSIFY_AVX2 inline void store_4x8_avx2(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
                                         __m128 bias4, int64_t lane0, int64_t batch,
                                         int64_t ldy, float* y) {
  const __m256 t0 = _mm256_unpacklo_ps(a0, a1), t1 = _mm256_unpackhi_ps(a0, a1);
  const __m256 t2 = _mm256_unpacklo_ps(a2, a3), t3 = _mm256_unpackhi_ps(a2, a3);
  const __m256 u[4] = {_mm256_shuffle_ps(t0, t2, 0x44), _mm256_shuffle_ps(t0, t2, 0xEE),
                       _mm256_shuffle_ps(t1, t3, 0x44), _mm256_shuffle_ps(t1, t3, 0xEE)};
  for (int m = 0; m < 4; ++m) {  // u[m] holds lanes lane0 + m (low half), lane0 + 4 + m (high)
    const int64_t b0 = lane0 + m, b1 = b0 + 4;
    if (b0 < batch) _mm_storeu_ps(y + b0 * ldy, _mm_add_ps(_mm256_castps256_ps128(u[m]), bias4));
    if (b1 < batch) _mm_storeu_ps(y + b1 * ldy, _mm_add_ps(_mm256_extractf128_ps(u[m], 1), bias4));
  }
}

// One 4-row group's sums (s: kGroupRows rows of `lanes` floats, lanes a multiple of 8) plus
// bias into ybuf, the wide tiles' output buffer of 16 consecutive columns per batch row (the
// group's first column at ybuf + r - r16).
SPARSIFY_AVX2 inline void group_to_ybuf(const Packed& w, const float* s, int64_t lanes, int64_t r,
                                        int64_t r1, int64_t batch, float* ybuf) {
  alignas(16) float b4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int64_t q = 0; q < kGroupRows && r + q < r1 && !w.bias.empty(); ++q) b4[q] = w.bias[r + q];
  const __m128 bias4 = _mm_load_ps(b4);
  for (int64_t h = 0; h < lanes; h += 8) {
    store_4x8_avx2(_mm256_load_ps(s + h), _mm256_load_ps(s + lanes + h),
                   _mm256_load_ps(s + 2 * lanes + h), _mm256_load_ps(s + 3 * lanes + h), bias4,
                   h, batch, 16, ybuf);
  }
}

// The direct paths' weight stream, prefetched kPrefetchBlocks (group, block) steps ahead: the
// hardware prefetcher did not keep up where the weights outgrow L2 (90% sparse 4096x4096, 10 MB,
// batch 64 on Zen 4: AVX2 8.35 -> 6.79 ms, AVX-512 6.31 -> 5.08; 4 and 8 blocks ahead gained
// less). T0, not NTA: the two ran level on Zen 4, but on an Intel Xeon (Sapphire Rapids class,
// A/B in one process, AVX2 kernels, batch 64, 90%) NTA took 768x3072 from 0.565 to 0.736 ms,
// 3072x768 0.708 -> 1.145, 4096x4096 4.71 -> 10.37 (its lines skip L2 and are gone again before
// their block), where T0 runs within 2-4% of no prefetch.
constexpr int64_t kPrefetchBlocks = 16;
inline void prefetch_weights(const float* p, int64_t stride) {
  for (int64_t l = 0; l < stride; l += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(p + kPrefetchBlocks * stride + l), _MM_HINT_T0);
  }
}

// Small batches (2..16 lanes, NV vectors of 8) with xt [in, ldx] small enough for L1/L2: rows
// straight from the grouped layout, each kept entry one broadcast FMA per lane vector into 4
// rows x NV accumulators. No chunk walk, no accumulator block in memory: for the few lanes of a
// small batch those cost more than the FMAs (measured 3-4x on 192x768, batch 16).
template <typename Idx, int NV>
SPARSIFY_AVX2 void direct_rows_avx2(const Packed& w, const float* xt, int64_t ldx, int64_t batch,
                                    int64_t r0, int64_t r1, float* y) {
  const int64_t nb = w.kp / kLanes;
  const int tail = static_cast<int>(w.k - (nb - 1) * kLanes);  // entries in the last block, 1..8
  const int64_t stride = w.group_stride;
  for (int64_t r = r0; r < r1; r += kGroupRows) {
    const float* p = w.grouped.data() + (r / kGroupRows) * nb * stride;
    __m256 a[kGroupRows][NV];
    for (auto& row : a) {
      for (auto& v : row) v = _mm256_setzero_ps();
    }
    for (int64_t b = 0; b + 1 < nb; ++b, p += stride) {
      const Idx* id = reinterpret_cast<const Idx*>(p + kGroupRows * kLanes);
      prefetch_weights(p, stride);
      // Fully unrolled, or GCC keeps the accumulators in memory (indexed by q).
#pragma GCC unroll 8
      for (int e = 0; e < kLanes; ++e) {
#pragma GCC unroll 4
        for (int q = 0; q < kGroupRows; ++q) {
          const __m256 v = _mm256_broadcast_ss(p + q * kLanes + e);
          const float* xr = xt + static_cast<int64_t>(id[q * kLanes + e]) * ldx;
          for (int n = 0; n < NV; ++n) a[q][n] = _mm256_fmadd_ps(v, _mm256_load_ps(xr + 8 * n), a[q][n]);
        }
      }
    }
    // Last block: only its `tail` real entries (every row has k of them), not the zero padding
    // up to kp (k = 19 would otherwise spend 24 FMAs per row and lane vector, 21% waste).
    const Idx* id = reinterpret_cast<const Idx*>(p + kGroupRows * kLanes);
    for (int e = 0; e < tail; ++e) {
#pragma GCC unroll 4
      for (int q = 0; q < kGroupRows; ++q) {
        const __m256 v = _mm256_broadcast_ss(p + q * kLanes + e);
        const float* xr = xt + static_cast<int64_t>(id[q * kLanes + e]) * ldx;
        for (int n = 0; n < NV; ++n) a[q][n] = _mm256_fmadd_ps(v, _mm256_load_ps(xr + 8 * n), a[q][n]);
      }
    }
    if (w.cols.empty() && r + kGroupRows <= r1) {
      const __m128 bias4 = w.bias.empty() ? _mm_setzero_ps() : _mm_loadu_ps(w.bias.data() + r);
      for (int n = 0; n < NV; ++n) {
        store_4x8_avx2(a[0][n], a[1][n], a[2][n], a[3][n], bias4, 8 * n, batch, w.out, y + r);
      }
      continue;
    }
    for (int64_t q = 0; q < kGroupRows && r + q < r1; ++q) {
      alignas(32) float s[NV * 8];
      for (int n = 0; n < NV; ++n) _mm256_store_ps(s + 8 * n, a[q][n]);
      const int64_t col = column(w, r + q);
      const float bias = bias_at(w, col);
      for (int64_t bb = 0; bb < batch; ++bb) y[bb * w.out + col] = s[bb] + bias;
    }
  }
}

// Batches above 16 on AVX2 (tiles of NV = 3..8 vectors of 8 lanes, up to 64 batch rows): one
// row at a time with all NV lane vectors in registers, so each kept entry's value and index
// serve NV FMAs (the 16-lane tiles spent an index and a broadcast per 2 FMAs, 2 loads per FMA
// where the core sustains about one) and the weights stream once per 64 batch rows, not per 16.
// Outputs go through ybuf as on AVX-512 (16 columns x the tile's lanes, then one 64-byte row
// store per batch row). As on AVX2 (A/B in one process, 1 thread, 90% sparse, batch 64):
// 3072x768 0.752 -> 0.703 ms, 4096x4096 5.16 -> 4.86, 768x3072 level (0.611 -> 0.620); the
// limit is xt's rows coming from L2 (each kept entry reads 256 bytes of it), not the loads.
template <int NV>
SPARSIFY_AVX2 void wide_rows_avx2(const Packed& w, const float* xt, int64_t ldx, int64_t batch,
                                  int64_t r0, int64_t r1, float* y) {
  const int64_t nb = w.kp / kLanes;
  const int tail = static_cast<int>(w.k - (nb - 1) * kLanes);  // entries in the last block, 1..8
  const int64_t stride = w.group_stride;
  const bool buffered = w.cols.empty();
  alignas(64) float ybuf[8 * NV * 16];
  alignas(32) float s[kGroupRows][8 * NV];
  for (int64_t r16 = r0; r16 < r1; r16 += 16) {
    const int64_t r16_end = std::min(r1, r16 + 16);
    for (int64_t r = r16; r < r16_end; r += kGroupRows) {
      const float* group = w.grouped.data() + (r / kGroupRows) * nb * stride;
      for (int q = 0; q < kGroupRows; ++q) {
        __m256 a[NV];
        for (auto& v : a) v = _mm256_setzero_ps();
        const float* p = group;
        for (int64_t b = 0; b + 1 < nb; ++b, p += stride) {
          const int16_t* id = reinterpret_cast<const int16_t*>(p + kGroupRows * kLanes) + q * kLanes;
          if (q == 0) prefetch_weights(p, stride);
#pragma GCC unroll 8
          for (int e = 0; e < kLanes; ++e) {
            const __m256 v = _mm256_broadcast_ss(p + q * kLanes + e);
            const float* xr = xt + static_cast<int64_t>(id[e]) * ldx;
            base_register(xr);
#pragma GCC unroll 8
            for (int n = 0; n < NV; ++n) a[n] = _mm256_fmadd_ps(v, _mm256_load_ps(xr + 8 * n), a[n]);
          }
        }
        const int16_t* id = reinterpret_cast<const int16_t*>(p + kGroupRows * kLanes) + q * kLanes;
        for (int e = 0; e < tail; ++e) {  // the last block without its padding
          const __m256 v = _mm256_broadcast_ss(p + q * kLanes + e);
          const float* xr = xt + static_cast<int64_t>(id[e]) * ldx;
#pragma GCC unroll 8
          for (int n = 0; n < NV; ++n) a[n] = _mm256_fmadd_ps(v, _mm256_load_ps(xr + 8 * n), a[n]);
        }
        for (int n = 0; n < NV; ++n) _mm256_store_ps(s[q] + 8 * n, a[n]);
      }
      if (buffered) {
        group_to_ybuf(w, s[0], 8 * NV, r, r1, batch, ybuf + (r - r16));
        continue;
      }
      for (int64_t q = 0; q < kGroupRows && r + q < r1; ++q) {
        const int64_t col = column(w, r + q);
        const float bias = bias_at(w, col);
        for (int64_t bb = 0; bb < batch; ++bb) y[bb * w.out + col] = s[q][bb] + bias;
      }
    }
    if (buffered) {  // columns r16..r16_end of every batch row
      const int64_t n = r16_end - r16;
      for (int64_t bb = 0; bb < batch; ++bb) {
        if (n == 16) {
          _mm256_storeu_ps(y + bb * w.out + r16, _mm256_load_ps(ybuf + 16 * bb));
          _mm256_storeu_ps(y + bb * w.out + r16 + 8, _mm256_load_ps(ybuf + 16 * bb + 8));
        } else {
          std::memcpy(y + bb * w.out + r16, ybuf + 16 * bb, static_cast<size_t>(n) * sizeof(float));
        }
      }
    }
  }
}

// Batches above 16 on AVX-512 (tiles of NV = 2..4 vectors of 16 lanes, up to 64 batch rows):
// the direct path's loop with 4 rows x NV zmm accumulators, so each kept entry (value and
// index) is read once per 64 batch rows instead of once per 16 (the AVX2 tiles) and no
// accumulator block goes through memory (the blocked path). xt [in, ldx]: ldx = 16 * NV.
template <int NV>
SPARSIFY_AVX512 void direct_rows_avx512(const Packed& w, const float* xt, int64_t ldx,
                                        int64_t batch, int64_t r0, int64_t r1, float* y) {
  const int64_t nb = w.kp / kLanes;
  const int tail = static_cast<int>(w.k - (nb - 1) * kLanes);  // entries in the last block, 1..8
  const int64_t stride = w.group_stride;
  // Consecutive output columns (no rows input) go through ybuf, 16 columns x the tile's lanes,
  // and then into y as one 64-byte store per batch row: storing each 4-row group's 4 floats
  // straight into 64 rows of y cost 45% of the call (90% sparse 768x3072 at batch 64: 0.58 ms,
  // 0.32 without the stores), every partial-line store waiting for its line.
  const bool buffered = w.cols.empty();
  alignas(64) float ybuf[16 * NV * 16];
  for (int64_t r16 = r0; r16 < r1; r16 += 16) {
    const int64_t r16_end = std::min(r1, r16 + 16);
    for (int64_t r = r16; r < r16_end; r += kGroupRows) {
      const float* p = w.grouped.data() + (r / kGroupRows) * nb * stride;
      __m512 a[kGroupRows][NV];
      for (auto& row : a) {
        for (auto& v : row) v = _mm512_setzero_ps();
      }
      // (Written out twice rather than through a lambda: gcc then kept the accumulators on the
      // stack.)
      for (int64_t b = 0; b + 1 < nb; ++b, p += stride) {
        const int16_t* id = reinterpret_cast<const int16_t*>(p + kGroupRows * kLanes);
        prefetch_weights(p, stride);
#pragma GCC unroll 8
        for (int e = 0; e < kLanes; ++e) {
#pragma GCC unroll 4
          for (int q = 0; q < kGroupRows; ++q) {
            const __m512 v = _mm512_set1_ps(p[q * kLanes + e]);
            const float* xr = xt + static_cast<int64_t>(id[q * kLanes + e]) * ldx;
            for (int n = 0; n < NV; ++n) {
              a[q][n] = _mm512_fmadd_ps(v, _mm512_load_ps(xr + 16 * n), a[q][n]);
            }
          }
        }
      }
      const int16_t* id = reinterpret_cast<const int16_t*>(p + kGroupRows * kLanes);
      for (int e = 0; e < tail; ++e) {  // the last block without its padding
#pragma GCC unroll 4
        for (int q = 0; q < kGroupRows; ++q) {
          const __m512 v = _mm512_set1_ps(p[q * kLanes + e]);
          const float* xr = xt + static_cast<int64_t>(id[q * kLanes + e]) * ldx;
          for (int n = 0; n < NV; ++n) {
            a[q][n] = _mm512_fmadd_ps(v, _mm512_load_ps(xr + 16 * n), a[q][n]);
          }
        }
      }
      if (buffered) {
        // The sums through memory, in 8-lane halves (gcc 12 warns on the extract intrinsics'
        // undefined source operand; this runs once per 4 rows).
        alignas(64) float s[kGroupRows][16 * NV];
        for (int n = 0; n < NV; ++n) {
          for (int q = 0; q < kGroupRows; ++q) _mm512_store_ps(s[q] + 16 * n, a[q][n]);
        }
        group_to_ybuf(w, s[0], 16 * NV, r, r1, batch, ybuf + (r - r16));
        continue;
      }
      for (int64_t q = 0; q < kGroupRows && r + q < r1; ++q) {
        alignas(64) float s[NV * 16];
        for (int n = 0; n < NV; ++n) _mm512_store_ps(s + 16 * n, a[q][n]);
        const int64_t col = column(w, r + q);
        const float bias = bias_at(w, col);
        for (int64_t bb = 0; bb < batch; ++bb) y[bb * w.out + col] = s[bb] + bias;
      }
    }
    if (buffered) {  // columns r16..r16_end of every batch row, one (masked) store each
      const __mmask16 m = static_cast<__mmask16>((1u << (r16_end - r16)) - 1);
      for (int64_t bb = 0; bb < batch; ++bb) {
        _mm512_mask_storeu_ps(y + bb * w.out + r16, m, _mm512_load_ps(ybuf + 16 * bb));
      }
    }
  }
}

// xt [in, ldx] = x [batch, in] transposed, lanes batch..ldx zero (ldx a multiple of 8), in 8x8
// register transposes: the scalar copy cost about as much as the direct path's FMAs on the
// transformer's 192-wide layers.
SPARSIFY_AVX2 void transpose_avx2(const float* x, int64_t batch, int64_t in, int64_t ldx,
                                  float* xt) {
  const int64_t in8 = in / kLanes * kLanes;
  for (int64_t b0 = 0; b0 < ldx; b0 += kLanes) {
    for (int64_t i0 = 0; i0 < in8; i0 += kLanes) {
      __m256 r[kLanes];
      for (int64_t q = 0; q < kLanes; ++q) {
        r[q] = b0 + q < batch ? _mm256_loadu_ps(x + (b0 + q) * in + i0) : _mm256_setzero_ps();
      }
      __m256 t[kLanes], u[kLanes];
      for (int q = 0; q < 4; ++q) {
        t[2 * q] = _mm256_unpacklo_ps(r[2 * q], r[2 * q + 1]);
        t[2 * q + 1] = _mm256_unpackhi_ps(r[2 * q], r[2 * q + 1]);
      }
      for (int h = 0; h < 2; ++h) {  // rows 0-3 (h = 0) and 4-7 (h = 1)
        u[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
        u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xEE);
        u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xEE);
      }
      float* out = xt + i0 * ldx + b0;
      for (int q = 0; q < 4; ++q) {
        _mm256_store_ps(out + q * ldx, _mm256_permute2f128_ps(u[q], u[4 + q], 0x20));
        _mm256_store_ps(out + (q + 4) * ldx, _mm256_permute2f128_ps(u[q], u[4 + q], 0x31));
      }
    }
    for (int64_t i = in8; i < in; ++i) {
      for (int64_t b = b0; b < b0 + kLanes; ++b) xt[i * ldx + b] = b < batch ? x[b * in + i] : 0.0f;
    }
  }
}

// Row block `blk` against a batch tile of NV * 8 lanes. Up to 4 vectors wide, two accumulator
// sets (even / odd entries) give 2 * NV independent FMA chains; wider tiles have enough already.
template <int NV>
SPARSIFY_AVX2 void block_avx2_nv(const Packed& w, int64_t blk, const float* xt, int64_t ldx,
                                 float* acc) {
  constexpr bool kTwoSets = NV <= 4;
  const Blocked& bl = w.blocked;
  for (int64_t i = 0; i < kRowBlock * NV * 8; i += 8) _mm256_store_ps(acc + i, _mm256_setzero_ps());
  const float* v = bl.values.data() + bl.block_start[blk];
  const uint8_t* o = bl.offsets.data() + bl.block_start[blk];
  const uint8_t* seg = bl.seg.data() + blk * bl.chunks * kRowBlock;
  for (int64_t c = 0; c < bl.chunks; ++c) {
    const float* xc = xt + c * kInChunk * ldx;
    for (int64_t r = 0; r < kRowBlock; ++r) {
      const int n = seg[c * kRowBlock + r];
      if (n == 0) continue;
      float* ar = acc + r * NV * 8;
      __m256 a[NV], b[kTwoSets ? NV : 1];
      for (int q = 0; q < NV; ++q) a[q] = _mm256_load_ps(ar + 8 * q);
      if (kTwoSets) {
        for (int q = 0; q < NV; ++q) b[q] = _mm256_setzero_ps();
      }
      int e = 0;
      for (; e + 2 <= n; e += 2) {
        const float* p0 = xc + o[e] * ldx;
        const float* p1 = xc + o[e + 1] * ldx;
        const __m256 v0 = _mm256_broadcast_ss(v + e);
        const __m256 v1 = _mm256_broadcast_ss(v + e + 1);
        for (int q = 0; q < NV; ++q) a[q] = _mm256_fmadd_ps(v0, _mm256_load_ps(p0 + 8 * q), a[q]);
        if (kTwoSets) {
          for (int q = 0; q < NV; ++q) b[q] = _mm256_fmadd_ps(v1, _mm256_load_ps(p1 + 8 * q), b[q]);
        } else {
          for (int q = 0; q < NV; ++q) a[q] = _mm256_fmadd_ps(v1, _mm256_load_ps(p1 + 8 * q), a[q]);
        }
      }
      if (e < n) {
        const float* p0 = xc + o[e] * ldx;
        const __m256 v0 = _mm256_broadcast_ss(v + e);
        for (int q = 0; q < NV; ++q) a[q] = _mm256_fmadd_ps(v0, _mm256_load_ps(p0 + 8 * q), a[q]);
      }
      for (int q = 0; q < NV; ++q) {
        _mm256_store_ps(ar + 8 * q, kTwoSets ? _mm256_add_ps(a[q], b[q]) : a[q]);
      }
      v += n;
      o += n;
    }
  }
}

SPARSIFY_AVX2 void block_avx2(const Packed& w, int64_t blk, const float* xt, int64_t ldx,
                              int64_t width, float* acc) {
  switch (width / 8) {
    case 1: return block_avx2_nv<1>(w, blk, xt, ldx, acc);
    case 2: return block_avx2_nv<2>(w, blk, xt, ldx, acc);
    case 3: return block_avx2_nv<3>(w, blk, xt, ldx, acc);
    case 4: return block_avx2_nv<4>(w, blk, xt, ldx, acc);
    case 5: return block_avx2_nv<5>(w, blk, xt, ldx, acc);
    case 6: return block_avx2_nv<6>(w, blk, xt, ldx, acc);
    case 7: return block_avx2_nv<7>(w, blk, xt, ldx, acc);
    default: return block_avx2_nv<8>(w, blk, xt, ldx, acc);
  }
}

#endif  // SPARSIFY_X86

enum class Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };
constexpr const char* kIsaNames[] = {"portable", "avx2", "avx512"};

Isa detect_isa() {
  Isa isa = Isa::kPortable;
#ifdef SPARSIFY_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
    isa = __builtin_cpu_supports("avx512f") ? Isa::kAvx512 : Isa::kAvx2;
  }
#endif
  if (const char* cap = std::getenv("SPARSIFY_CONDENSED_ISA")) {
    for (int i = 0; i < 3; ++i) {
      if (std::strcmp(cap, kIsaNames[i]) == 0) isa = std::min(isa, static_cast<Isa>(i));
    }
  }
  return isa;
}

const Isa kIsa = detect_isa();
const bool kAvx2 = kIsa >= Isa::kAvx2;
const bool kAvx512 = kIsa == Isa::kAvx512;

template <typename Idx>
void gather_rows(const Packed& w, const float* x, int64_t r0, int64_t r1, float* y) {
#ifdef SPARSIFY_X86
  if (kAvx512 && w.lanes.lanes > 0) return lane_rows_avx512<kLaneVectors512>(w, x, r0, r1, y);
  if (kAvx2 && w.lanes.lanes > 0) {
    return w.lanes.narrow ? lane_rows_avx2<kLaneVectors256, true>(w, x, r0, r1, y)
                          : lane_rows_avx2<kLaneVectors256, false>(w, x, r0, r1, y);
  }
  if (kAvx2) return gather_rows_avx2<Idx>(w, x, r0, r1, y);
#endif
  gather_rows_portable<Idx>(w, x, r0, r1, y);
}

// Row blocks [blk0, blk1) for every batch tile; writes y[b, col(r)] = acc + bias.
void run_blocks(const Packed& w, const float* xt, int64_t batch, int64_t batch_pad, int64_t blk0,
                int64_t blk1, float* y) {
  alignas(64) float acc[kRowBlock * kMaxTile];
  const int64_t tile = std::min(kMaxTile, batch_pad);
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    const int64_t r0 = blk * kRowBlock;
    const int64_t r1 = std::min(w.rows, r0 + kRowBlock);
    for (int64_t b0 = 0; b0 < batch_pad; b0 += tile) {
      const int64_t width = std::min(tile, batch_pad - b0);
      const int64_t valid = std::min(width, batch - b0);
#ifdef SPARSIFY_X86
      if (kAvx2) {
        block_avx2(w, blk, xt + b0, batch_pad, width, acc);
      } else {
        block_portable(w, blk, xt + b0, batch_pad, width, acc);
      }
#else
      block_portable(w, blk, xt + b0, batch_pad, width, acc);
#endif
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t col = column(w, r);
        const float bias = bias_at(w, col);
        const float* a = acc + (r - r0) * width;
        float* yc = y + b0 * w.out + col;
        for (int64_t b = 0; b < valid; ++b) yc[b * w.out] = a[b] + bias;
      }
    }
  }
}

template <typename Idx>
std::string build_blocked(const Packed& p, const Idx* idx, Blocked* out) {
  Blocked& bl = *out;
  bl.chunks = (p.max_index + 1 + kInChunk - 1) / kInChunk;
  const int64_t blocks = (p.rows + kRowBlock - 1) / kRowBlock;
  bl.block_start.assign(static_cast<size_t>(blocks + 1), 0);
  bl.seg.assign(static_cast<size_t>(blocks * bl.chunks * kRowBlock), 0);
  bl.values.resize(static_cast<size_t>(p.rows * p.k));
  bl.offsets.resize(static_cast<size_t>(p.rows * p.k));
  std::vector<int64_t> order(static_cast<size_t>(p.k));
  std::vector<int64_t> cursor(kRowBlock);  // next unread (sorted) entry of each row in the block
  std::vector<int64_t> sorted(static_cast<size_t>(kRowBlock * p.k));
  int64_t e = 0;
  for (int64_t blk = 0; blk < blocks; ++blk) {
    bl.block_start[blk] = e;
    const int64_t r0 = blk * kRowBlock, nr = std::min(kRowBlock, p.rows - r0);
    for (int64_t r = 0; r < nr; ++r) {
      const Idx* id = idx + (r0 + r) * p.kp;
      for (int64_t j = 0; j < p.k; ++j) order[j] = j;
      std::stable_sort(order.begin(), order.end(),
                       [id](int64_t a, int64_t b) { return id[a] < id[b]; });
      std::copy(order.begin(), order.end(), sorted.begin() + r * p.k);
      cursor[r] = 0;
    }
    for (int64_t c = 0; c < bl.chunks; ++c) {
      for (int64_t r = 0; r < nr; ++r) {
        const Idx* id = idx + (r0 + r) * p.kp;
        const float* v = p.values.data() + (r0 + r) * p.kp;
        int n = 0;
        while (cursor[r] < p.k) {
          const int64_t j = sorted[r * p.k + cursor[r]];
          if (id[j] >= (c + 1) * kInChunk) break;
          if (n > 0 && id[j] == id[sorted[r * p.k + cursor[r] - 1]]) {
            return "indices must not repeat within a row";
          }
          bl.values[e] = v[j];
          bl.offsets[e] = static_cast<uint8_t>(id[j] - c * kInChunk);
          ++e, ++n, ++cursor[r];
        }
        bl.seg[(blk * bl.chunks + c) * kRowBlock + r] = static_cast<uint8_t>(n);
      }
    }
  }
  bl.block_start[blocks] = e;
  return "";
}

// Fills the grouped layout (see Packed::grouped) from the row-major padded values / indices.
template <typename Idx>
void build_grouped(Packed& p, const Idx* idx) {
  if (!kAvx2) return;  // only the AVX2 paths read it
  const int64_t nb = p.kp / kLanes;
  const int64_t groups = (p.rows + kGroupRows - 1) / kGroupRows;
  constexpr int64_t kIdxFloats = kGroupRows * kLanes * sizeof(Idx) / sizeof(float);
  p.group_stride = kGroupRows * kLanes + kIdxFloats;  // 192 B (int16) or 256 B (int32)
  p.grouped.assign(static_cast<size_t>(groups * nb * p.group_stride), 0.0f);
  for (int64_t r = 0; r < p.rows; ++r) {
    const int64_t g = r / kGroupRows, q = r % kGroupRows;
    for (int64_t b = 0; b < nb; ++b) {
      float* blk = p.grouped.data() + (g * nb + b) * p.group_stride;
      std::memcpy(blk + q * kLanes, &p.values[r * p.kp + b * kLanes], kLanes * sizeof(float));
      std::memcpy(reinterpret_cast<Idx*>(blk + kGroupRows * kLanes) + q * kLanes,
                  idx + r * p.kp + b * kLanes, kLanes * sizeof(Idx));
    }
  }
}

// Fills the row-lane layout (see Lanes) with `lanes` rows per group and `window` inputs per step;
// leaves it empty when fewer than min_efficiency of the step slots would hold an entry.
// The stored form of a window offset: as is in 32-input (AVX-512) windows; in 16-input (AVX2)
// windows bit 3 moves to bit 7 (see window16).
inline uint8_t lane_offset_byte(int32_t offset, int64_t window) {
  if (window == 32) return static_cast<uint8_t>(offset);
  return static_cast<uint8_t>((offset & 7) | ((offset & 8) << 4));
}

template <typename Idx>
void build_lanes(Packed& p, const Idx* idx, int64_t lanes, int64_t window, double min_efficiency) {
  Lanes& ln = p.lanes;
  ln = Lanes{};
  const int64_t groups = (p.rows + lanes - 1) / lanes;
  std::vector<int64_t> order(static_cast<size_t>(lanes * p.k));  // each row's entries by index
  std::vector<int64_t> next(static_cast<size_t>(lanes));
  ln.group_start.push_back(0);
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t r0 = g * lanes, nr = std::min(lanes, p.rows - r0);
    for (int64_t q = 0; q < nr; ++q) {
      const Idx* id = idx + (r0 + q) * p.kp;
      int64_t* o = order.data() + q * p.k;
      for (int64_t j = 0; j < p.k; ++j) o[j] = j;
      std::stable_sort(o, o + p.k, [id](int64_t a, int64_t b) { return id[a] < id[b]; });
      next[q] = 0;
    }
    for (;;) {
      int32_t lo = INT32_MAX;
      for (int64_t q = 0; q < nr; ++q) {
        if (next[q] < p.k) {
          lo = std::min<int32_t>(lo, idx[(r0 + q) * p.kp + order[q * p.k + next[q]]]);
        }
      }
      if (lo == INT32_MAX) break;
      ln.base.push_back(lo);
      for (int64_t q = 0; q < lanes; ++q) {
        float value = 0.0f;
        uint8_t offset = 0;
        if (q < nr && next[q] < p.k) {
          const int64_t e = (r0 + q) * p.kp + order[q * p.k + next[q]];
          if (idx[e] < lo + window) {
            value = p.values[e];
            offset = lane_offset_byte(idx[e] - lo, window);
            ++next[q];
          }
        }
        ln.values.push_back(value);
        ln.offsets.push_back(offset);
      }
    }
    ln.group_start.push_back(static_cast<int64_t>(ln.base.size()));
  }
  const double slots = static_cast<double>(ln.values.size());
  if (slots > 0 && static_cast<double>(p.rows * p.k) < min_efficiency * slots) {
    ln = Lanes{};
    return;
  }
  ln.lanes = lanes;
  ln.narrow = std::all_of(ln.offsets.begin(), ln.offsets.end(), [](uint8_t o) { return o < 8; });
}

// The layouts the batch-1 and batch 2..16 paths of this CPU read (see the file comment).
template <typename Idx>
void build_batch1(Packed& p, const Idx* idx) {
  build_grouped(p, idx);
  if (kAvx512) return build_lanes(p, idx, 16 * kLaneVectors512, kLaneWindow512, 0.0);
  if (kAvx2) build_lanes(p, idx, 8 * kLaneVectors256, kLaneWindow256, kMinLaneEfficiency);
}

// Every layout this CPU's paths read, from the row-major padded copy.
template <typename Idx>
std::string build_layouts(Packed& p, const Idx* idx) {
  build_batch1(p, idx);
  return build_blocked(p, idx, &p.blocked);
}

}  // namespace

const char* isa_name() { return kIsaNames[static_cast<int>(kIsa)]; }
int isa_level() { return static_cast<int>(kIsa); }

std::string check_output_rows(const int32_t* cols, int64_t rows, int64_t width, const char* dim,
                              std::vector<int32_t>* cols_out, std::vector<int32_t>* empty_out) {
  std::vector<char> used(static_cast<size_t>(width), 0);
  for (int64_t r = 0; r < rows; ++r) {
    if (cols[r] < 0 || cols[r] >= width) return std::string("rows must lie in [0, ") + dim + ")";
    if (used[cols[r]]) return "rows must not repeat";
    used[cols[r]] = 1;
  }
  cols_out->assign(cols, cols + rows);
  empty_out->clear();
  for (int64_t c = 0; c < width; ++c) {
    if (!used[c]) empty_out->push_back(static_cast<int32_t>(c));
  }
  return "";
}

std::string pack(const float* values, const void* indices, bool indices_are_int16, int64_t rows,
                 int64_t k, const float* bias, int64_t bias_len, const int32_t* cols,
                 int64_t cols_len, int64_t out_features, Packed* out) {
  if (rows < 0 || (rows > 0 && k < 1)) return "values must be [rows, k] with k >= 1";
  const bool has_cols = cols_len >= 0;  // an empty rows input (every row ablated) counts
  if (has_cols && cols_len != rows) return "rows must hold one output column per row";
  const int64_t width = has_cols ? out_features : rows;
  if (has_cols && width < rows) {
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
  if (has_cols) {
    const std::string err =
        check_output_rows(cols, rows, width, "out_features", &p.cols, &p.empty_cols);
    if (!err.empty()) return err;
  }
  const std::string err =
      p.idx16 ? build_layouts(p, p.idx16v.data()) : build_layouts(p, p.idx32v.data());
  if (kAvx2) {  // the SIMD paths read only the layouts; the row-major copies were their source
    std::vector<float>().swap(p.values);
    std::vector<int16_t>().swap(p.idx16v);
    std::vector<int32_t>().swap(p.idx32v);
  }
  return err;
}

Plan::Plan(const Packed& w, const float* x, int64_t batch, int64_t in, float* y)
    : w_(w), x_(x), batch_(batch), in_(in), y_(y) {
  for (int64_t b = 0; b < batch; ++b) {
    float* yb = y + b * w.out;
    for (int32_t c : w.empty_cols) yb[c] = bias_at(w, c);
  }
  if (batch == 1 && w.lanes.lanes > 0) {
    xpad_.assign(x, x + in);
    xpad_.resize(static_cast<size_t>(in + kXPad), 0.0f);
    x_ = xpad_.data();
  }
  // Direct path: xt within half a typical L2 (so int16 indices: int32 ones mean in > 32767,
  // whose xt is larger); beyond 16 lanes, only while the weights stay in L2 as well, since
  // every 16-lane tile of the batch streams them again.
  int64_t tile_lanes = std::min(round_up(batch, kLanes), 2 * kLanes);
  // Beyond 16 rows, in 16-lane tiles that each stream the weights again, for sparse rows (at
  // most 30% of the inputs kept) while the weights are at most kDirectWeightBytes: on a Zen
  // 5-class EPYC at batch 64, 90% sparse, this beat the blocked path (768x3072 0.45 vs 2.15 ms,
  // 3072x768 0.48 vs 0.69, 4096x4096 (10 MB) 3.4 vs 6.4). At 2:4 it was faster on 768x3072 (2.5
  // vs 3.5 ms) but slower on 3072x768 (2.5 vs 1.9) and 4096x4096 (53 vs 23), and up to 3x slower
  // again when another process shared the core, so 2:4 keeps the blocked path.
  const int64_t grouped_bytes = static_cast<int64_t>(w.grouped.size() * sizeof(float));
  const bool sparse_rows = w.k * 10 <= in * 3;
  direct_ = kAvx2 && w.idx16 && batch > 1 &&
            in * tile_lanes * static_cast<int64_t>(sizeof(float)) <= kDirectXtBytes &&
            (batch <= 2 * kLanes || (sparse_rows && grouped_bytes <= kDirectWeightBytes));
  // AVX-512, batch > 16: tiles of up to 64 lanes (fewer while xt would outgrow kWideXtBytes).
  wide_ = kAvx512 && w.idx16 && batch > 2 * kLanes &&
          in * 32 * static_cast<int64_t>(sizeof(float)) <= kWideXtBytes;
  if (wide_) {
    tile_lanes = std::min(round_up(batch, 16), kWideLanes);
    while (tile_lanes > 32 && in * tile_lanes * static_cast<int64_t>(sizeof(float)) > kWideXtBytes) {
      tile_lanes -= 16;
    }
    direct_ = true;
  }
  wide2_ = kAvx2 && !kAvx512 && w.idx16 && batch > 2 * kLanes && sparse_rows &&
           in * 24 * static_cast<int64_t>(sizeof(float)) <= kWideXtBytes;
  if (wide2_) {
    tile_lanes = std::min(round_up(batch, kLanes), kWideLanes);
    while (tile_lanes > 24 && in * tile_lanes * static_cast<int64_t>(sizeof(float)) > kWideXtBytes) {
      tile_lanes -= kLanes;
    }
    direct_ = true;
  }
  if (batch > 1) {
    // The direct path takes the batch in tiles of up to 16 lanes, xt [tiles, in, 8 or 16];
    // the blocked path one xt [in, batch_pad].
    batch_pad_ = direct_ ? tile_lanes : round_up(batch, kLanes);
    tiles_ = direct_ ? (batch + batch_pad_ - 1) / batch_pad_ : 1;
    const size_t bytes = static_cast<size_t>(tiles_ * in * batch_pad_) * sizeof(float);
    xt_ = static_cast<float*>(::operator new(bytes, std::align_val_t(64)));
    for (int64_t t = 0; t < tiles_; ++t) {
      const int64_t b0 = t * batch_pad_, nb = std::min(batch_pad_, batch - b0);
#ifdef SPARSIFY_X86
      if (kAvx2) {
        transpose_avx2(x + b0 * in, nb, in, batch_pad_, xt_ + t * in * batch_pad_);
        continue;
      }
#endif
      transpose_portable(x + b0 * in, nb, in, batch_pad_, xt_ + t * in * batch_pad_);
    }
    // One row block per chunk (batch lanes already give it plenty of work); with several
    // direct tiles, one tile of every row per chunk.
    rows_per_chunk_ = tiles_ > 1 ? std::max<int64_t>(1, w.rows) : kRowBlock;
  } else {
    const int64_t row_bytes = w.kp * static_cast<int64_t>(sizeof(float) + (w.idx16 ? 2 : 4));
    // A multiple of every row group: kGroupRows and the 16 or 64 row lanes.
    constexpr int64_t kUnit = 16 * kLaneVectors512;
    rows_per_chunk_ =
        std::max<int64_t>(kUnit, kChunkBytes / std::max<int64_t>(1, row_bytes) / kUnit * kUnit);
  }
  row_chunks_ = w.rows == 0 ? 0 : (w.rows + rows_per_chunk_ - 1) / rows_per_chunk_;
  chunks_ = row_chunks_ * tiles_;
}

Plan::~Plan() {
  if (xt_ != nullptr) ::operator delete(xt_, std::align_val_t(64));
}

void Plan::run_chunk(int64_t chunk) const {
  const int64_t r0 = (chunk % row_chunks_) * rows_per_chunk_;
  const int64_t r1 = std::min(w_.rows, r0 + rows_per_chunk_);
#ifdef SPARSIFY_X86
  if (direct_) {
    const int64_t tile = chunk / row_chunks_;
    const int64_t b0 = tile * batch_pad_, nb = std::min(batch_pad_, batch_ - b0);
    const float* xt = xt_ + tile * in_ * batch_pad_;
    float* y = y_ + b0 * w_.out;
    if (wide_) {
      switch (batch_pad_ / 16) {
        case 2: return direct_rows_avx512<2>(w_, xt, batch_pad_, nb, r0, r1, y);
        case 3: return direct_rows_avx512<3>(w_, xt, batch_pad_, nb, r0, r1, y);
        default: return direct_rows_avx512<4>(w_, xt, batch_pad_, nb, r0, r1, y);
      }
    }
    if (wide2_) {
      switch (batch_pad_ / kLanes) {
        case 3: return wide_rows_avx2<3>(w_, xt, batch_pad_, nb, r0, r1, y);
        case 4: return wide_rows_avx2<4>(w_, xt, batch_pad_, nb, r0, r1, y);
        case 5: return wide_rows_avx2<5>(w_, xt, batch_pad_, nb, r0, r1, y);
        case 6: return wide_rows_avx2<6>(w_, xt, batch_pad_, nb, r0, r1, y);
        case 7: return wide_rows_avx2<7>(w_, xt, batch_pad_, nb, r0, r1, y);
        default: return wide_rows_avx2<8>(w_, xt, batch_pad_, nb, r0, r1, y);
      }
    }
    return batch_pad_ > kLanes ? direct_rows_avx2<int16_t, 2>(w_, xt, batch_pad_, nb, r0, r1, y)
                               : direct_rows_avx2<int16_t, 1>(w_, xt, batch_pad_, nb, r0, r1, y);
  }
#endif
  if (xt_ != nullptr) return run_blocks(w_, xt_, batch_, batch_pad_, chunk, chunk + 1, y_);
  if (w_.idx16) {
    gather_rows<int16_t>(w_, x_, r0, r1, y_);
  } else {
    gather_rows<int32_t>(w_, x_, r0, r1, y_);
  }
}

}  // namespace sparsify
