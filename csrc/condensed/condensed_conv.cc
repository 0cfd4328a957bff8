// See condensed_conv.h. A call is split into chunks of (image, band of output rows): each
// chunk copies the input rows its band reads into a band buffer of stride-phase planes (sized to
// stay in L2), then walks the band in tiles of SIMD vectors of output positions (4 for strided
// convs, up to 14 AVX2 / 7 AVX-512 vectors at stride 1: see "Flat planes"). Per tile, the
// input channels go in blocks; every stored row (output channel) accumulates, in registers, one
// broadcast-FMA run per kept weight of the block, carrying its partial sums to the next block;
// after the last block, bias + activation go into the valid columns of y.
//
// Why tiles of 4 vectors and channel blocks (before, each row ran all of its kept weights over
// 8 vectors x 4 tiles at once): 8 accumulators in 2 sets of 4 keep the FMA
// chains independent with fewer vectors per kept weight, and a block keeps the planes a tile
// reads (kh * kw runs per channel) within L1 while every row walks them. A block holds at least
// kBlockWeights kept weights per row on average, so the partial sums' load and store stay small next to its
// multiply-adds (at 90% on 64 channels that means one block). Measured as on an AVX2 machine
// (AVX-512 hidden, ONNX Runtime's dense conv on its AVX2 kernels too), 1 thread, batch 1, 3x3
// 64->64 at 56x56: 2:4 2.64 -> 2.32 ms, 90% 0.66 -> 0.70 ms; 256->256 at 14x14: 2:4 3.12 ->
// 2.63 ms, 90% 0.75 -> 0.57 ms (dense: 2.2 ms).
//
// Aligned planes: an unaligned vector load that straddles two cache lines costs two loads, and
// the loop is bound by loads (one per FMA); measured on an AVX-512 Xeon, 64->64 3x3 at 56x56,
// 2:4: 25 GMAC/s with arbitrary offsets, 42 with every load on a 64-byte boundary. So when the
// padded row width rounds up to a multiple of the vector width with little waste (<= 25%), the
// plane rows are padded to it, and each column shift of the kernel (0, 1, 2 for a 3x3) gets its
// own copy of the plane shifted by that many floats: every kept weight then reads vectors on
// vector boundaries. Otherwise (small maps, e.g. 8x8 with pads: 10 -> 16 would waste 60%) the
// rows stay compact and the shift goes into the offset.
//
// Flat planes (stride 1, not 1x1 direct, larger maps; see ConvOffsets::flat): the padded-grid
// rows above computed Wq - out_w dropped columns per row (56 -> 64, 28 -> 32, 14 -> 16: 12.5% of
// the FMAs wasted at each ResNet size). Flat rows are exactly out_w wide, one plane per (channel,
// kernel column) with its edge columns zeroed, so a band's positions are one run in y's own
// layout; a kernel row's runs start i * dh * out_w floats in, and the plane gets one copy per
// distinct remainder of those starts modulo the vector width, shifted so every run starts on a
// vector boundary (kept to <= 2 copies: with 3, at 14x14 on 256 channels, the copies' fill and
// the band's smaller share of L2 cost more than the waste they save, so such maps keep the
// padded grid). Tiles take up to 112 positions (14 AVX2 vectors: an offset and a broadcast per
// 14 FMAs instead of per 4), split evenly over the band (a 98-position band is one tile of 13
// vectors, not 12 and a 13th alone with its weights' loads), and store straight into y. As on
// an AVX2 machine (A/B, 1 thread, batch 1, 2:4): 3x3 64->64 @56 2.06 -> 1.48 ms, 128->128 @28
// 2.00 -> 1.57 ms; 90% 0.60 -> 0.50 and 0.54 -> 0.49 ms.
//
// Small maps (at most kColPositions outputs, e.g. the digits CNN's 8x8 and 4x4) take the
// column-plane path instead: each image is copied once into planes of exactly out_w columns, one
// per (channel, row phase, kernel column) (see ConvOffsets::columns), so each kept weight reads
// one contiguous run of the out_h * out_w positions and the conv is the batched CondensedLinear
// over them (the grouped layout of ConvPacked::linear: 4 output channels x up to 4 vectors of
// positions in registers, each kept weight one broadcast and a few FMAs, sums + bias + ReLU
// stored straight into the output planes; maps of one or two vectors take several images per
// call, sharing each weight's loads). There the planes' padded grid wasted up to half the
// vector lanes (a 4x4 map with pads: 24 grid positions for 16 outputs, 32 with AVX-512) and the
// per-row copies cost as much as the work. Measured on the Zen 4 EPYC, 1 thread, digits CNN at
// 1:8: batch 1 1.09x -> 1.40x of dense ORT, batch 64 0.78x -> 1.59x (the im2col that came
// before these planes wrote kh * kw runs per channel and output row: 3x the copying).

#include "condensed_conv.h"

#include <algorithm>
#include <cstring>
#include <new>

#include "condensed_kernel.h"

#if defined(__x86_64__) || defined(_M_X64)
#define SPARSIFY_X86 1
#include <immintrin.h>
#define SPARSIFY_AVX2 __attribute__((target("avx2,fma")))
#define SPARSIFY_AVX512 __attribute__((target("avx512f,avx2,fma")))
#endif

namespace sparsify {
namespace {

// Vectors of output positions per tile (32 positions with AVX2, 64 with AVX-512); direct 1x1
// convs, whose rows keep few weights and read x itself, take 128 positions (fewer passes over
// each row's weights, a row's setup paid once per register subtiles of 8 vectors; 512 with
// AVX-512 read 256 KiB of x per tile at 128 channels and ran 1x1 128->512 at 28x28 2x slower).
constexpr int64_t kTileVectors = 4;
constexpr int64_t kDirectTilePositions = 128;
constexpr int64_t kFlatTilePositions = 112;
constexpr int64_t kSubtileVectors = 14;
// Bytes of planes a tile reads per block of input channels (the L1 size here, 48 KiB: the
// prefetchers keep up with a little more than fits), and the fewest kept weights per row a block
// holds on average (48, not 64: at 2:4 on 128 channels, 64 took 15 channels per block, whose
// planes and the row block's weights overflowed L1; 48, A/B as on AVX2: 128->128 @28 1.60 ->
// 1.50 ms, 64->64 @56 1.49 -> 1.47, 90% level).
constexpr int64_t kBlockBytes = 48 * 1024;
constexpr int64_t kBlockWeights = 48;
// Bytes of partial sums (rows x tile positions) a row block holds while it walks the blocks.
constexpr int64_t kPartBytes = 16 * 1024;
// Bytes of one chunk's band buffer (the planes of every input channel for a band of output
// rows): small enough to stay in L2 while every output channel walks it.
constexpr int64_t kBandBytes = 256 * 1024;
constexpr int64_t kFlatBandBytes = 512 * 1024;
constexpr int64_t kFlatClasses = 2;
// The q grid and planes are padded to this many floats (the widest vector), so the offsets do
// not depend on the ISA.
constexpr int64_t kGridAlign = 16;
// The column-plane path: one image's planes at most this many bytes, and at most this many
// output positions (small maps, where the band planes' padded grid and the per-row copies cost as
// much as the work: 4x4 maps computed 32 grid positions for 16 outputs).
constexpr int64_t kColBytes = 512 * 1024;
constexpr int64_t kColPositions = 256;

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

int level() {
  static const int value = isa_level();
  return value;
}

int64_t vector_floats() { return level() == 2 ? 16 : 8; }

// ---------------------------------------------------------------- portable path

// ReLU as the kernels apply it: negative -> 0, NaN kept (as torch.relu).
inline float activate(bool relu, float v) { return relu && v < 0.0f ? 0.0f : v; }

inline int64_t column(const ConvPacked& w, int64_t r) { return w.cols.empty() ? r : w.cols[r]; }

// One row's kept weights of one channel block against a run of positions: sums from 0 (first)
// or from part, back to part, or (last) with bias and activation to dst.
struct RowTile {
  const float* v;
  const int32_t* off;
  int64_t n;
  const float* x;
  float* part;
  float* dst;
  float bias;
  bool first, last, relu;
};

// One channel block of a tile, for rows [r0, r1): row r's sums over the tile's positions start
// at 0 (block 0) or at its partial row part + (r - r0) * ldp, take the kept weights of block b
// (their runs of x at their offsets), and go back there; at the last block they get bias and
// activation and go to y_rows + col(r) * y_stride when y_rows is set (direct 1x1 tiles, whose
// positions are y's), else back to the partial row.
struct BlockRows {
  const ConvPacked* w;
  const int32_t* offsets;  // [rows, k]
  const int32_t* seg;      // [rows, blocks + 1]
  int64_t blocks = 1, b = 0;
  const float* x = nullptr;  // the tile's first position in the planes (or in x, direct)
  float* part = nullptr;
  int64_t ldp = 0;
  float* y_rows = nullptr;
  int64_t y_stride = 0;
  bool relu = false;

  bool last() const { return b + 1 == blocks; }
  const float* values(int64_t r) const { return w->values.data() + r * w->k + seg_of(r)[b]; }
  const int32_t* offs(int64_t r) const { return offsets + r * w->k + seg_of(r)[b]; }
  int64_t count(int64_t r) const { return seg_of(r)[b + 1] - seg_of(r)[b]; }
  const int32_t* seg_of(int64_t r) const { return seg + r * (blocks + 1); }
  float bias(int64_t r) const { return w->bias.empty() ? 0.0f : w->bias[column(*w, r)]; }
  float* dst(int64_t r, int64_t r0) const {
    return last() && y_rows != nullptr ? y_rows + column(*w, r) * y_stride : part + (r - r0) * ldp;
  }
  RowTile row(int64_t r, int64_t r0) const {
    return RowTile{values(r), offs(r), count(r), x, part + (r - r0) * ldp, dst(r, r0),
                   last() ? bias(r) : 0.0f, b == 0, last(), relu};
  }
};

void block_rows_portable(const BlockRows& br, int64_t r0, int64_t r1, int64_t npos) {
  for (int64_t r = r0; r < r1; ++r) {
    float* part = br.part + (r - r0) * br.ldp;
    if (br.b == 0) std::fill(part, part + npos, 0.0f);
    const float* v = br.values(r);
    const int32_t* off = br.offs(r);
    for (int64_t j = 0; j < br.count(r); ++j) {
      const float* p = br.x + off[j];
      for (int64_t q = 0; q < npos; ++q) part[q] += v[j] * p[q];
    }
    if (!br.last()) continue;
    float* d = br.dst(r, r0);
    for (int64_t q = 0; q < npos; ++q) d[q] = activate(br.relu, part[q] + br.bias(r));
  }
}

#ifdef SPARSIFY_X86
// ---------------------------------------------------------------- AVX2 + FMA path

// T vectors of 8 positions of one row in registers, the kept weights split round-robin over
// U accumulator sets (T * U >= 8 independent FMA chains).
template <int T, int U>
SPARSIFY_AVX2 void row_tile_avx2(const RowTile& rt) {
  const __m256 zero = _mm256_setzero_ps();
  __m256 acc[U][T];
#pragma GCC unroll 16
  for (int u = 0; u < U; ++u) {
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[u][t] = zero;
  }
  if (!rt.first) {
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[0][t] = _mm256_load_ps(rt.part + 8 * t);
  }
  const float* v = rt.v;
  const int32_t* off = rt.off;
  int64_t j = 0;
  for (; j + U <= rt.n; j += U) {
#pragma GCC unroll 16
    for (int u = 0; u < U; ++u) {
      const __m256 w = _mm256_broadcast_ss(v + j + u);
      const float* p = rt.x + off[j + u];
      base_register(p);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) acc[u][t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * t), acc[u][t]);
    }
  }
  for (; j < rt.n; ++j) {
    const __m256 w = _mm256_broadcast_ss(v + j);
    const float* p = rt.x + off[j];
    base_register(p);
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[0][t] = _mm256_fmadd_ps(w, _mm256_loadu_ps(p + 8 * t), acc[0][t]);
  }
  const __m256 bias = _mm256_set1_ps(rt.bias);
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    __m256 s = acc[0][t];
#pragma GCC unroll 16
    for (int u = 1; u < U; ++u) s = _mm256_add_ps(s, acc[u][t]);
    if (rt.last) {
      s = _mm256_add_ps(s, bias);
      if (rt.relu) s = _mm256_blendv_ps(s, zero, _mm256_cmp_ps(s, zero, _CMP_LT_OQ));
    }
    _mm256_storeu_ps(rt.dst + 8 * t, s);
  }
}


// ---------------------------------------------------------------- AVX-512 path

// T vectors of 16 positions of one row in registers, the kept weights split round-robin over
// U accumulator sets (T * U >= 8 independent FMA chains).
template <int T, int U>
SPARSIFY_AVX512 void row_tile_avx512(const RowTile& rt) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 acc[U][T];
#pragma GCC unroll 16
  for (int u = 0; u < U; ++u) {
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[u][t] = zero;
  }
  if (!rt.first) {
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[0][t] = _mm512_load_ps(rt.part + 16 * t);
  }
  const float* v = rt.v;
  const int32_t* off = rt.off;
  int64_t j = 0;
  for (; j + U <= rt.n; j += U) {
#pragma GCC unroll 16
    for (int u = 0; u < U; ++u) {
      const __m512 w = _mm512_set1_ps(v[j + u]);
      const float* p = rt.x + off[j + u];
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) acc[u][t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * t), acc[u][t]);
    }
  }
  for (; j < rt.n; ++j) {
    const __m512 w = _mm512_set1_ps(v[j]);
    const float* p = rt.x + off[j];
#pragma GCC unroll 16
    for (int t = 0; t < T; ++t) acc[0][t] = _mm512_fmadd_ps(w, _mm512_loadu_ps(p + 16 * t), acc[0][t]);
  }
  const __m512 bias = _mm512_set1_ps(rt.bias);
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) {
    __m512 s = acc[0][t];
#pragma GCC unroll 16
    for (int u = 1; u < U; ++u) s = _mm512_add_ps(s, acc[u][t]);
    if (rt.last) {
      s = _mm512_add_ps(s, bias);
      if (rt.relu) s = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(s, zero, _CMP_NLT_UQ), s);
    }
    _mm512_storeu_ps(rt.dst + 16 * t, s);
  }
}


// The two ISAs' register tiles, for block_rows_simd. Forced inline (here and there): inlined
// into the ISA's own entry point below, the tiles inline too (a plain call per row and subtile
// cost 5-8% at 90% sparsity, where a row keeps few weights).
#define SPARSIFY_INLINE inline __attribute__((always_inline))
struct Avx2Tiles {
  static constexpr int64_t kWidth = 8;
  template <int T, int U>
  static SPARSIFY_INLINE void run(const RowTile& rt) { row_tile_avx2<T, U>(rt); }
};
struct Avx512Tiles {
  static constexpr int64_t kWidth = 16;
  template <int T, int U>
  static SPARSIFY_INLINE void run(const RowTile& rt) { row_tile_avx512<T, U>(rt); }
};

// Rows [r0, r1) of one channel block over nv vectors: each row's tile in subtiles of up to
// kSubtileVectors register vectors (T * U >= 8 independent FMA chains in each).
template <class Tiles>
SPARSIFY_INLINE void block_rows_simd(const BlockRows& br, int64_t r0, int64_t r1, int64_t nv) {
  for (int64_t r = r0; r < r1; ++r) {
    RowTile rt = br.row(r, r0);
    for (int64_t t0 = 0; t0 < nv; t0 += kSubtileVectors) {
      switch (std::min(kSubtileVectors, nv - t0)) {
        case 14: Tiles::template run<14, 1>(rt); break;
        case 13: Tiles::template run<13, 1>(rt); break;
        case 12: Tiles::template run<12, 1>(rt); break;
        case 11: Tiles::template run<11, 1>(rt); break;
        case 10: Tiles::template run<10, 1>(rt); break;
        case 9: Tiles::template run<9, 1>(rt); break;
        case 8: Tiles::template run<8, 1>(rt); break;
        case 7: Tiles::template run<7, 1>(rt); break;
        case 6: Tiles::template run<6, 2>(rt); break;
        case 5: Tiles::template run<5, 2>(rt); break;
        case 4: Tiles::template run<4, 2>(rt); break;
        case 3: Tiles::template run<3, 3>(rt); break;
        case 2: Tiles::template run<2, 4>(rt); break;
        default: Tiles::template run<1, 8>(rt); break;
      }
      rt.x += kSubtileVectors * Tiles::kWidth;
      rt.part += kSubtileVectors * Tiles::kWidth;
      rt.dst += kSubtileVectors * Tiles::kWidth;
    }
  }
}

SPARSIFY_AVX2 void block_rows_avx2(const BlockRows& br, int64_t r0, int64_t r1, int64_t nv) {
  block_rows_simd<Avx2Tiles>(br, r0, r1, nv);
}

SPARSIFY_AVX512 void block_rows_avx512(const BlockRows& br, int64_t r0, int64_t r1, int64_t nv) {
  block_rows_simd<Avx512Tiles>(br, r0, r1, nv);
}

// Column-plane path, one call: the weights, each kept entry's run start, the epilogue, and the
// layout of planes (one image's at planes + i * ld) and of y (image i at y + i * y_image).
struct ColCall {
  const Packed* lw;
  int64_t ld;
  const int32_t* col_off;
  const float* bias;
  const int32_t* cols;
  bool relu;
  int64_t rows;
  int64_t plane;  // output positions per channel (out_h * out_w)
  int64_t y_image;
};

// (col_rows_simd holds vectors without a target of its own; it only ever runs inlined into
// an ISA's entry point, so the ABI note GCC gives for that does not apply.)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
// The vector operations col_rows_simd needs, per ISA. Not forced inline (they could not be
// inlined into col_rows_simd, which has no target): its entry points are flattened, which
// inlines them once col_rows_simd sits inside a function of their ISA.
struct Avx512Ops {
  using V = __m512;
  static constexpr int64_t kWidth = 16;
  static SPARSIFY_AVX512 inline V zero() { return _mm512_setzero_ps(); }
  static SPARSIFY_AVX512 inline V set1(float v) { return _mm512_set1_ps(v); }
  static SPARSIFY_AVX512 inline V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static SPARSIFY_AVX512 inline V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static SPARSIFY_AVX512 inline V add(V a, V b) { return _mm512_add_ps(a, b); }
  // ReLU as the kernels apply it: negative -> 0, NaN kept.
  static SPARSIFY_AVX512 inline V relu(V s) {
    return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(s, zero(), _CMP_NLT_UQ), s);
  }
  // The first n (>= 1) lanes of s to dst.
  static SPARSIFY_AVX512 inline void store(float* dst, V s, int64_t n) {
    _mm512_mask_storeu_ps(dst, n >= 16 ? 0xffff : static_cast<__mmask16>((1u << n) - 1), s);
  }
};
struct Avx2Ops {
  using V = __m256;
  static constexpr int64_t kWidth = 8;
  static SPARSIFY_AVX2 inline V zero() { return _mm256_setzero_ps(); }
  static SPARSIFY_AVX2 inline V set1(float v) { return _mm256_set1_ps(v); }
  static SPARSIFY_AVX2 inline V loadu(const float* p) { return _mm256_loadu_ps(p); }
  static SPARSIFY_AVX2 inline V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static SPARSIFY_AVX2 inline V add(V a, V b) { return _mm256_add_ps(a, b); }
  static SPARSIFY_AVX2 inline V relu(V s) {
    return _mm256_blendv_ps(s, zero(), _mm256_cmp_ps(s, zero(), _CMP_LT_OQ));
  }
  static SPARSIFY_AVX2 inline void store(float* dst, V s, int64_t n) {
    if (n >= 8) return _mm256_storeu_ps(dst, s);
    alignas(32) float tmp[8];
    _mm256_store_ps(tmp, s);
    std::copy(tmp, tmp + n, dst);
  }
};

// Column-plane path: every row (in groups of 4, the grouped layout) against positions
// [p0, p0 + W * NV) of each kept entry's run in NI images' planes: 4 rows x NI x NV vectors in
// registers, each kept entry one broadcast, one offset and NI * NV FMAs; each row's sums (+ bias,
// ReLU) go straight to its output plane (the first n positions). Small maps take several images
// per call (4 x 4 maps with AVX-512: 4 images of one vector each), so the weight and offset loads
// are shared; NI * NV == 1: two accumulator sets (even / odd entries), so 8 FMA chains. AVX2
// keeps NI * NV <= 2 (4 rows x 2 x 2 sets = 16 accumulators would not fit).
template <class Ops, int NV, int NI>
SPARSIFY_INLINE void col_rows_simd(const ColCall& cc, const float* planes, int64_t p0, int64_t n,
                                   float* y) {
  using V = typename Ops::V;
  constexpr int64_t W = Ops::kWidth;
  constexpr int NT = NV * NI;
  constexpr int U = NT == 1 ? 2 : 1;
  const Packed& lw = *cc.lw;
  const int64_t nb = lw.kp / 8;
  const int tail = static_cast<int>(lw.k - (nb - 1) * 8);
  const int64_t stride = lw.group_stride, ld = cc.ld;
  const float* xc = planes + p0;
  for (int64_t r = 0; r < cc.rows; r += 4) {
    const float* p = lw.grouped.data() + (r / 4) * nb * stride;
    V a[U][4][NT];
    for (auto& set : a) {
      for (auto& row : set) {
        for (auto& v : row) v = Ops::zero();
      }
    }
    const int32_t* of = cc.col_off + (r / 4) * nb * 32;
    for (int64_t b = 0; b < nb; ++b, p += stride, of += 32) {
      const int entries = b + 1 < nb ? 8 : tail;
      if (entries == 8) {
#pragma GCC unroll 8
        for (int e = 0; e < 8; ++e) {
#pragma GCC unroll 4
          for (int q = 0; q < 4; ++q) {
            const V v = Ops::set1(p[q * 8 + e]);
            const float* xr = xc + of[q * 8 + e];
#pragma GCC unroll 4
            for (int t = 0; t < NT; ++t) {
              a[e % U][q][t] = Ops::fmadd(v, Ops::loadu(xr + t / NV * ld + W * (t % NV)), a[e % U][q][t]);
            }
          }
        }
        continue;
      }
      for (int e = 0; e < entries; ++e) {
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) {
          const V v = Ops::set1(p[q * 8 + e]);
          const float* xr = xc + of[q * 8 + e];
#pragma GCC unroll 4
          for (int t = 0; t < NT; ++t) {
            a[0][q][t] = Ops::fmadd(v, Ops::loadu(xr + t / NV * ld + W * (t % NV)), a[0][q][t]);
          }
        }
      }
    }
    for (int64_t q = 0; q < 4 && r + q < cc.rows; ++q) {
      const int64_t col = cc.cols == nullptr ? r + q : cc.cols[r + q];
      const V bv = Ops::set1(cc.bias == nullptr ? 0.0f : cc.bias[col]);
      for (int t = 0; t < NT; ++t) {
        V s = Ops::add(a[0][q][t], bv);
        if (U == 2) s = Ops::add(s, a[U - 1][q][t]);
        if (cc.relu) s = Ops::relu(s);
        const int64_t left = n - W * (t % NV);
        if (left > 0) Ops::store(y + t / NV * cc.y_image + col * cc.plane + p0 + W * (t % NV), s, left);
      }
    }
  }
}

#pragma GCC diagnostic pop

template <int NV, int NI>
SPARSIFY_AVX512 __attribute__((flatten)) void col_rows_avx512(const ColCall& cc, const float* planes, int64_t p0,
                                     int64_t n, float* y) {
  col_rows_simd<Avx512Ops, NV, NI>(cc, planes, p0, n, y);
}

template <int NV, int NI>
SPARSIFY_AVX2 __attribute__((flatten)) void col_rows_avx2(const ColCall& cc, const float* planes, int64_t p0, int64_t n,
                                 float* y) {
  col_rows_simd<Avx2Ops, NV, NI>(cc, planes, p0, n, y);
}
#endif  // SPARSIFY_X86


// One channel block of a tile (see BlockRows) over nv vectors (<= 8) of positions.
void block_rows(const BlockRows& br, int64_t r0, int64_t r1, int64_t nv, int64_t vec) {
#ifdef SPARSIFY_X86
  if (level() == 2) return block_rows_avx512(br, r0, r1, nv);
  if (level() == 1) return block_rows_avx2(br, r0, r1, nv);
#endif
  block_rows_portable(br, r0, r1, nv * vec);
}

// A thread's scratch buffers (slot 0: planes, slot 1: partial sums), kept from call to call and
// from node to node: a fresh allocation per chunk put every plane store on cold lines, and at
// batch 1 the column planes' copy then took longer than on the same image inside a batch.
float* scratch(int slot, int64_t floats) {
  struct Buffer {
    float* data = nullptr;
    int64_t size = 0;
    ~Buffer() { ::operator delete(data, std::align_val_t(64)); }
  };
  thread_local Buffer buffers[2];
  Buffer& b = buffers[slot];
  if (b.size < floats) {
    ::operator delete(b.data, std::align_val_t(64));
    b.data = nullptr;  // stays consistent if the allocation throws
    b.size = 0;
    b.data = static_cast<float*>(
        ::operator new(static_cast<size_t>(floats) * sizeof(float), std::align_val_t(64)));
    b.size = floats;
  }
  return b.data;
}

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

std::shared_ptr<const ConvOffsets> ConvPacked::offsets_for(int64_t h, int64_t w,
                                                           int64_t channels) const {
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (cached && cached->h == h && cached->w == w && cached->channels == channels) return cached;
  }
  auto o = std::make_shared<ConvOffsets>();
  o->h = h;
  o->w = w;
  o->channels = channels;
  conv_output_size(g, h, w, &o->out_h, &o->out_w);  // checked by the caller
  const int64_t vec = vector_floats();
  const int64_t wq = (w + g.pl + g.pr + g.sw - 1) / g.sw;
  const int64_t max_qh = (g.kh - 1) * g.dh / g.sh, max_qw = (g.kw - 1) * g.dw / g.sw;
  // 1x1, stride 1, no pads: the planes would be x itself, so the kernel reads x (no copy).
  o->direct = g.kh == 1 && g.kw == 1 && g.sh == 1 && g.sw == 1 && g.pt == 0 && g.pl == 0 &&
              g.pb == 0 && g.pr == 0;
  const bool stride1 = !o->direct && g.sh == 1 && g.sw == 1;
  std::vector<int32_t> row_class(static_cast<size_t>(g.kh), 0);  // the copy kernel row i reads
  if (stride1) {
    std::vector<int32_t>& shifts = o->class_shift;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int32_t a = static_cast<int32_t>(i * g.dh * o->out_w % vec);
      const auto at = std::find(shifts.begin(), shifts.end(), a);
      row_class[i] = static_cast<int32_t>(at - shifts.begin());
      if (at == shifts.end()) shifts.push_back(a);
    }
    o->classes = static_cast<int64_t>(shifts.size());
  }
  o->flat = stride1 && o->classes <= kFlatClasses;
  o->tile_vectors = o->direct ? kDirectTilePositions / vec
                    : stride1 ? kFlatTilePositions / vec
                              : kTileVectors;
  o->aligned = true;
  o->wq = wq;
  if (o->flat) {
    o->wq = o->out_w;
  } else if (max_qh > 0) {
    const int64_t padded = round_up(wq, vec);
    o->aligned = padded * 4 <= wq * 5;
    if (o->aligned) o->wq = padded;
  }
  o->copies = o->flat ? g.kw * o->classes : o->aligned ? max_qw + 1 : 1;
  const int64_t row_bytes =
      channels * g.sh * g.sw * o->copies * o->wq * static_cast<int64_t>(sizeof(float));
  const int64_t band_bytes = o->flat ? kFlatBandBytes : kBandBytes;
  o->band_rows = std::clamp<int64_t>(band_bytes / std::max<int64_t>(1, row_bytes) - max_qh, 1,
                                     std::max<int64_t>(1, o->out_h));
  // Bands of whole tiles where a smaller band allows it (a 14x14 map: rows of 16, tiles of 32
  // positions: 2 rows per band instead of 3 and a half-empty second tile). Flat bands have no
  // grid columns to waste: their tiles split the band's vectors evenly (see flat_tiles).
  for (int64_t rows = o->band_rows; rows > 1 && !o->flat; --rows) {
    if (rows * o->wq % (o->tile_vectors * vec) == 0) {
      o->band_rows = rows;
      break;
    }
  }
  o->bands = (o->out_h + o->band_rows - 1) / o->band_rows;
  // Tiles read up to a vector past the band's last position (compact rows) plus the largest
  // shift; the slack keeps those reads inside the plane.
  o->plane_rows = o->band_rows + max_qh;
  o->plane = round_up(o->plane_rows * o->wq + (o->aligned ? 0 : max_qw) + vec, kGridAlign);
  o->buffer = channels * g.sh * g.sw * o->copies * o->plane;
  if (o->direct) {
    o->plane = h * w;
    o->buffer = 0;
  }
  // Small maps: column planes when one image's stay within kColBytes (AVX2 / AVX-512 only: the
  // kernels read the grouped layout of `linear`).
  const int64_t positions = o->out_h * o->out_w;
  o->col_rows = o->out_h + (g.kh - 1) * g.dh / g.sh;
  // Stride 1 with out_w == w ("same" padding along the rows): the plane rows that read input
  // rows are one run of x at the column shift, so a whole plane is one masked copy of x (see
  // col_valid); its planes are padded to 64 bytes so that copy stores whole aligned vectors.
  o->col_run = g.sh == 1 && g.sw == 1 && o->out_w == w;
  o->col_plane = round_up(o->col_rows * o->out_w, kGridAlign);
  // Slack: the kernels read whole vectors of a run.
  o->col_buffer = channels * g.sh * g.kw * o->col_plane + 16;
  o->columns = has_linear && !o->direct && positions <= kColPositions &&
              o->col_buffer * static_cast<int64_t>(sizeof(float)) <= kColBytes;
  // Images per chunk: those the kernels take at once (maps of one or two vectors per image).
  if (vec == 16) {
    o->col_images = positions <= 16 ? 4 : positions <= 32 ? 2 : 1;
  } else {
    o->col_images = positions <= 8 ? 2 : 1;
  }
  if (o->columns) {
    const Packed& lw = linear;
    const int64_t nb = lw.kp / 8, groups = (lw.rows + 3) / 4;
    o->col_off.resize(static_cast<size_t>(groups * nb * 32));
    for (int64_t gb = 0; gb < groups * nb; ++gb) {
      const int16_t* id = reinterpret_cast<const int16_t*>(lw.grouped.data() + gb * lw.group_stride + 32);
      for (int64_t e = 0; e < 32; ++e) {
        const int64_t tap = id[e] % (g.kh * g.kw), c = id[e] / (g.kh * g.kw);
        const int64_t i = tap / g.kw * g.dh, j = tap % g.kw;
        o->col_off[gb * 32 + e] =
            static_cast<int32_t>(((c * g.sh + i % g.sh) * g.kw + j) * o->col_plane + i / g.sh * o->out_w);
      }
    }
    // Plane (a, j) position q (row r = q / out_w, column ow) reads x row sh * r + a - pt,
    // column sw * ow + j * dw - pl of its channel: col_valid -1 where both lie inside x. col_run
    // copies a plane as one masked run of x; otherwise col_index holds each position's offset
    // into its channel (a gather).
    const int64_t used = o->col_rows * o->out_w, planes = g.sh * g.kw;
    o->col_valid.assign(static_cast<size_t>(planes * o->col_plane), 0);
    if (!o->col_run) o->col_index.assign(o->col_valid.size(), 0);
    for (int64_t a = 0; a < g.sh; ++a) {
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t at = (a * g.kw + j) * o->col_plane;
        for (int64_t q = 0; q < used; ++q) {
          const int64_t row = q / o->out_w * g.sh + a - g.pt;
          const int64_t col = q % o->out_w * g.sw + j * g.dw - g.pl;
          if (row < 0 || row >= h || col < 0 || col >= w) continue;
          o->col_valid[at + q] = -1;
          if (!o->col_run) o->col_index[at + q] = static_cast<int32_t>(row * w + col);
        }
      }
    }
    // Row phases some kernel row reads (a 1x1 conv of stride 2 never reads phase 1).
    o->col_phase_read.assign(static_cast<size_t>(g.sh), 0);
    for (int64_t i = 0; i < g.kh; ++i) o->col_phase_read[i * g.dh % g.sh] = 1;
  }
  // Channel blocks: a tile reads kh * kw runs of tile_vectors vectors per channel.
  const int64_t channel_bytes = g.kh * g.kw * o->tile_vectors * vec * static_cast<int64_t>(sizeof(float));
  // Blocks of at least kBlockWeights kept weights per row (on average): the partial sums' load
  // and store per block must stay small next to the block's multiply-adds.
  const int64_t by_weights = (kBlockWeights * channels + std::max<int64_t>(1, k) - 1) / std::max<int64_t>(1, k);
  o->block_channels = std::clamp<int64_t>(std::max(kBlockBytes / channel_bytes, by_weights), 1,
                                          std::max<int64_t>(1, channels));
  o->blocks = (std::max<int64_t>(1, channels) + o->block_channels - 1) / o->block_channels;
  o->row_block = std::max<int64_t>(1, kPartBytes / (o->tile_vectors * vec * static_cast<int64_t>(sizeof(float))));
  o->seg.resize(static_cast<size_t>(rows * (o->blocks + 1)));
  for (int64_t r = 0; r < rows; ++r) {
    const int32_t* ch = channel.data() + r * k;
    int32_t* seg = o->seg.data() + r * (o->blocks + 1);
    for (int64_t b = 0; b < o->blocks; ++b) {
      seg[b] = static_cast<int32_t>(std::lower_bound(ch, ch + k, b * o->block_channels) - ch);
    }
    seg[o->blocks] = static_cast<int32_t>(k);
  }
  o->offsets.resize(static_cast<size_t>(rows * k));
  for (int64_t e = 0; e < rows * k; ++e) {
    const int64_t a = ky[e] % g.sh, b = kx[e] % g.sw, qh = ky[e] / g.sh, qw = kx[e] / g.sw;
    const int64_t phase = (channel[e] * g.sh + a) * g.sw + b;
    // Flat: copy (c, t, class of kernel row i) at the run's start rounded down to a vector.
    const int64_t flat_plane = (channel[e] * g.kw + kx[e] / g.dw) * o->classes + row_class[ky[e] / g.dh];
    const int64_t start = ky[e] * o->out_w;
    const int64_t off = o->flat      ? flat_plane * o->plane + start - start % vec
                        : o->aligned ? (phase * o->copies + qw) * o->plane + qh * o->wq
                                     : phase * o->plane + qh * o->wq + qw;
    o->offsets[e] = static_cast<int32_t>(off);
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
  p.values.resize(static_cast<size_t>(rows * k));
  p.channel.resize(static_cast<size_t>(rows * k));
  p.ky.resize(p.channel.size());
  p.kx.resize(p.channel.size());
  const int64_t taps = g.kh * g.kw;
  const auto index = [&](int64_t e) -> int64_t {
    return indices_are_int16 ? static_cast<const int16_t*>(indices)[e]
                             : static_cast<const int32_t*>(indices)[e];
  };
  int32_t max_channel = -1;
  std::vector<int64_t> order(static_cast<size_t>(k));
  for (int64_t r = 0; r < rows; ++r) {
    // Each row in index order (so by input channel: the channel blocks are ranges of it).
    for (int64_t j = 0; j < k; ++j) order[j] = r * k + j;
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return index(a) < index(b); });
    for (int64_t j = 0; j < k; ++j) {
      const int64_t e = r * k + j, i = index(order[j]);
      if (i < 0) return "indices must be non-negative";
      const int64_t tap = i % taps;
      p.values[e] = values[order[j]];
      p.channel[e] = static_cast<int32_t>(i / taps);
      p.ky[e] = static_cast<int32_t>(tap / g.kw * g.dh);
      p.kx[e] = static_cast<int32_t>(tap % g.kw * g.dw);
      max_channel = std::max(max_channel, p.channel[e]);
    }
  }
  p.max_channel = max_channel;
  p.bias.assign(bias, bias == nullptr ? bias : bias + bias_len);
  p.cols.clear();
  p.empty_cols.clear();
  if (has_cols) {
    const std::string err =
        check_output_rows(cols, rows, width, "out_channels", &p.cols, &p.empty_cols);
    if (!err.empty()) return err;
  }
  // The column-plane path's layout (int16 indices only: the flattened [in, kh, kw] index must fit).
  p.has_linear = false;
  if (isa_level() >= 1 && indices_are_int16 && rows > 0) {
    const std::string err = pack(values, indices, true, rows, k, nullptr, 0, nullptr, -1, rows,
                                 &p.linear);
    if (!err.empty()) return err;
    p.has_linear = true;
  }
  return "";
}

ConvPlan::ConvPlan(const ConvPacked& w, const float* x, int64_t batch, int64_t channels,
                   int64_t h, int64_t wd, float* y, const float* residual)
    : w_(w), x_(x), batch_(batch), channels_(channels), h_(h), wd_(wd), y_(y),
      residual_(residual), relu_(w.g.relu && residual == nullptr) {
  off_ = w.offsets_for(h, wd, channels);
  vec_ = vector_floats();
  work_ = batch * w.rows * w.k * off_->out_h * off_->out_w;
  // Enough chunks for a thread pool: bands of every image, and, when those are few, ranges of
  // rows as well (each chunk then copies its band again, a small cost next to the work).
  const int64_t bands =
      off_->columns ? (batch + off_->col_images - 1) / off_->col_images : batch * off_->bands;
  row_chunks_ = bands >= 8 || work_ < 1000 * 1000 ? 1 : std::min<int64_t>(w.rows, 8 / bands);
  if (off_->columns) row_chunks_ = 1;  // one chunk per group of images (each copies its own)
  row_chunks_ = std::max<int64_t>(1, row_chunks_);
  rows_per_chunk_ = (w.rows + row_chunks_ - 1) / std::max<int64_t>(1, row_chunks_);
  chunks_ = bands * row_chunks_;
}

// Phase-plane rows [i0, i0 + plane_rows) of every (channel, phase) of image x, and their
// shifted copies, into buf.
void ConvPlan::fill_band(const float* x, int64_t i0, float* buf) const {
  const ConvGeometry& g = w_.g;
  const int64_t wq = off_->wq, plane = off_->plane, copies = off_->copies;
  const int64_t rows = off_->plane_rows;
  for (int64_t c = 0; c < channels_; ++c) {
    const float* xc = x + c * h_ * wd_;
    for (int64_t a = 0; a < g.sh; ++a) {
      for (int64_t b = 0; b < g.sw; ++b) {
        float* dst = buf + ((c * g.sh + a) * g.sw + b) * copies * plane;
        // Plane column j reads x column sw * j + b - pl: the valid j range.
        const int64_t j0 = std::min(wq, std::max<int64_t>(0, (g.pl - b + g.sw - 1) / g.sw));
        const int64_t j1 = std::clamp<int64_t>((wd_ - 1 + g.pl - b) / g.sw + 1, j0, wq);
        for (int64_t i = 0; i < rows; ++i) {
          float* row = dst + i * wq;
          const int64_t r = g.sh * (i0 + i) + a - g.pt;
          if (r < 0 || r >= h_ || wd_ - 1 + g.pl - b < 0) {
            std::fill(row, row + wq, 0.0f);
            continue;
          }
          const float* src = xc + r * wd_;
          std::fill(row, row + j0, 0.0f);
          if (g.sw == 1) {
            std::memcpy(row + j0, src + j0 + b - g.pl, static_cast<size_t>(j1 - j0) * sizeof(float));
          } else {
            for (int64_t j = j0; j < j1; ++j) row[j] = src[g.sw * j + b - g.pl];
          }
          std::fill(row + j1, row + wq, 0.0f);
        }
        std::fill(dst + rows * wq, dst + plane, 0.0f);
        for (int64_t s = 1; s < copies; ++s) {  // copy s: the plane shifted left by s floats
          float* cp = dst + s * plane;
          std::memcpy(cp, dst + s, static_cast<size_t>(plane - s) * sizeof(float));
          std::fill(cp + plane - s, cp + plane, 0.0f);
        }
      }
    }
  }
}

// Flat planes (see ConvOffsets::flat) of rows [i0, i0 + plane_rows) for every (channel, kernel
// column) of image x, and their copies, into buf.
void ConvPlan::fill_flat(const float* x, int64_t i0, float* buf) const {
  const ConvGeometry& g = w_.g;
  const int64_t out_w = off_->out_w, plane = off_->plane, classes = off_->classes;
  const int64_t rows = off_->plane_rows;
  for (int64_t c = 0; c < channels_; ++c) {
    const float* xc = x + c * h_ * wd_;
    for (int64_t t = 0; t < g.kw; ++t) {
      float* dst = buf + (c * g.kw + t) * classes * plane;
      // Plane column ow reads x column ow + t * dw - pl: the valid ow range.
      const int64_t shift = t * g.dw - g.pl;
      const int64_t j0 = std::clamp<int64_t>(-shift, 0, out_w);
      const int64_t j1 = std::clamp<int64_t>(wd_ - shift, j0, out_w);
      for (int64_t i = 0; i < rows; ++i) {
        float* row = dst + i * out_w;
        const int64_t r = i0 + i - g.pt;
        if (r < 0 || r >= h_) {
          std::fill(row, row + out_w, 0.0f);
          continue;
        }
        std::fill(row, row + j0, 0.0f);
        std::memcpy(row + j0, xc + r * wd_ + j0 + shift, static_cast<size_t>(j1 - j0) * sizeof(float));
        std::fill(row + j1, row + out_w, 0.0f);
      }
      std::fill(dst + rows * out_w, dst + plane, 0.0f);
      // Copy k: the plane shifted left by class_shift[k] floats.
      for (int64_t k = 1; k < classes; ++k) {
        const int64_t a = off_->class_shift[k];
        float* cp = dst + k * plane;
        std::memcpy(cp, dst + a, static_cast<size_t>(plane - a) * sizeof(float));
        std::fill(cp + plane - a, cp + plane, 0.0f);
      }
    }
  }
}

// Grid positions [q0, q1) of the band starting at output row oh0, from buf (buf[0] is q0, bias
// and activation applied), to the output channel of stored row r: the valid columns of each row.
void ConvPlan::store_grid(const float* buf, int64_t oh0, int64_t q0, int64_t q1, int64_t r,
                          float* y) const {
  const int64_t wq = off_->wq, out_w = off_->out_w;
  float* yc = y + (column(w_, r) * off_->out_h + oh0) * out_w;
  for (int64_t q = q0; q < q1;) {
    const int64_t oh = q / wq, ow = q % wq;
    const int64_t row_end = std::min(q1, (oh + 1) * wq);
    const int64_t n = std::max<int64_t>(0, std::min(out_w, ow + row_end - q) - ow);
    std::copy(buf + (q - q0), buf + (q - q0) + n, yc + oh * out_w + ow);
    q = row_end;
  }
}

#ifdef SPARSIFY_X86
// The column planes of image x (see ConvOffsets::columns): plane (c, a, j) position (r, ow)
// holds x[c, sh * r + a - pt, sw * ow + j * dw - pl], zeros outside x. Each plane is a few
// aligned vector stores: with col_run, of masked loads of one run of x (4 per plane on the
// digits CNN's 4x4 maps), else of gathers by col_index. AVX2 only: the path needs the grouped
// layout, built with AVX2. Per-run copies (im2col's kh * kw runs per channel and output row,
// then rows through a padded copy, whose reads stalled on store forwarding, then masked rows)
// took up to twice as long as the digits CNN's multiply-adds at 1:8.
SPARSIFY_AVX2 void ConvPlan::fill_col_planes(const float* x, float* planes) const {
  const ConvGeometry& g = w_.g;
  const int64_t plane = off_->col_plane;
  const int32_t* valid = off_->col_valid.data();
  const int32_t* index = off_->col_index.data();
  const __m256 zero = _mm256_setzero_ps();
  for (int64_t c = 0; c < channels_; ++c) {
    const float* xc = x + c * h_ * wd_;
    for (int64_t a = 0; a < g.sh; ++a) {
      if (!off_->col_phase_read[a]) continue;
      for (int64_t j = 0; j < g.kw; ++j) {
        const int64_t at = (a * g.kw + j) * plane;
        float* dst = planes + (c * g.sh * g.kw) * plane + at;
        if (off_->col_run) {  // from the plane's first position, pt rows above x
          const float* src = xc - g.pt * wd_ + j * g.dw - g.pl;
          for (int64_t t = 0; t < plane; t += 8) {
            const __m256i in = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(valid + at + t));
            _mm256_store_ps(dst + t, _mm256_maskload_ps(src + t, in));
          }
        } else {
          for (int64_t t = 0; t < plane; t += 8) {
            const __m256i in = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(valid + at + t));
            const __m256i ix = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(index + at + t));
            _mm256_store_ps(dst + t, _mm256_mask_i32gather_ps(zero, xc, ix, _mm256_castsi256_ps(in), 4));
          }
        }
      }
    }
  }
  const int64_t end = channels_ * g.sh * g.kw * plane;
  std::fill(planes + end, planes + off_->col_buffer, 0.0f);
}
#endif  // SPARSIFY_X86

// Chunk `chunk` of the column-plane path: images [chunk * col_images, ...), their planes side by
// side in the scratch buffer.
void ConvPlan::run_columns(int64_t chunk) const {
  const int64_t hw = off_->out_h * off_->out_w, y_image = w_.out * hw;
  const int64_t i0 = chunk * off_->col_images, ni = std::min(off_->col_images, batch_ - i0);
  for (int64_t i = i0; i < i0 + ni; ++i) {
    float* y = y_ + i * y_image;
    for (int32_t c : w_.empty_cols) {
      std::fill(y + c * hw, y + (c + 1) * hw, activate(relu_, w_.bias.empty() ? 0.0f : w_.bias[c]));
    }
  }
  if (w_.rows == 0) return;
#ifdef SPARSIFY_X86
  const int64_t ld = off_->col_buffer;
  float* planes = scratch(0, ni * ld);
  for (int64_t i = 0; i < ni; ++i) fill_col_planes(x_ + (i0 + i) * channels_ * h_ * wd_, planes + i * ld);
  float* y = y_ + i0 * y_image;
  const ColCall cc{&w_.linear, ld, off_->col_off.data(),
                   w_.bias.empty() ? nullptr : w_.bias.data(),
                   w_.cols.empty() ? nullptr : w_.cols.data(), relu_, w_.rows, hw, y_image};
  // Images of one or two vectors in groups (see col_rows_simd), larger maps in tiles of 4 (2)
  // vectors of positions.
  const auto image = [&](int64_t i) { return planes + i * ld; };
  const auto out = [&](int64_t i) { return y + i * y_image; };
  int64_t i = 0;
  if (level() == 2) {
    if (hw <= 16) {
      for (; i + 4 <= ni; i += 4) col_rows_avx512<1, 4>(cc, image(i), 0, hw, out(i));
      for (; i + 2 <= ni; i += 2) col_rows_avx512<1, 2>(cc, image(i), 0, hw, out(i));
      for (; i < ni; ++i) col_rows_avx512<1, 1>(cc, image(i), 0, hw, out(i));
      return;
    }
    if (hw <= 32) {
      for (; i + 2 <= ni; i += 2) col_rows_avx512<2, 2>(cc, image(i), 0, hw, out(i));
      if (i < ni) col_rows_avx512<2, 1>(cc, image(i), 0, hw, out(i));
      return;
    }
    for (int64_t p0 = 0; p0 < hw; p0 += 64) {
      const int64_t n = std::min<int64_t>(64, hw - p0);
      switch ((n + 15) / 16) {
        case 1: col_rows_avx512<1, 1>(cc, planes, p0, n, y); break;
        case 2: col_rows_avx512<2, 1>(cc, planes, p0, n, y); break;
        case 3: col_rows_avx512<3, 1>(cc, planes, p0, n, y); break;
        default: col_rows_avx512<4, 1>(cc, planes, p0, n, y); break;
      }
    }
    return;
  }
  if (hw <= 8) {
    for (; i + 2 <= ni; i += 2) col_rows_avx2<1, 2>(cc, image(i), 0, hw, out(i));
    if (i < ni) col_rows_avx2<1, 1>(cc, image(i), 0, hw, out(i));
    return;
  }
  for (int64_t p0 = 0; p0 < hw; p0 += 16) {
    const int64_t n = std::min<int64_t>(16, hw - p0);
    if (n > 8) {
      col_rows_avx2<2, 1>(cc, planes, p0, n, y);
    } else {
      col_rows_avx2<1, 1>(cc, planes, p0, n, y);
    }
  }
#endif
}

void ConvPlan::add_residual() const {
  if (residual_ == nullptr) return;
  const int64_t n = batch_ * w_.out * off_->out_h * off_->out_w;
  if (w_.g.relu) {
    for (int64_t i = 0; i < n; ++i) y_[i] = activate(true, y_[i] + residual_[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) y_[i] += residual_[i];
  }
}

void ConvPlan::run_chunk(int64_t chunk) const {
  if (off_->columns) return run_columns(chunk);
  const int64_t range = chunk % row_chunks_, band = chunk / row_chunks_;
  const int64_t image = band / off_->bands, oh0 = (band % off_->bands) * off_->band_rows;
  const int64_t band_h = std::min(off_->band_rows, off_->out_h - oh0);
  const int64_t r0 = range * rows_per_chunk_, r1 = std::min(w_.rows, r0 + rows_per_chunk_);
  const int64_t hw = off_->out_h * off_->out_w;
  float* y = y_ + image * w_.out * hw;
  if (range == 0) {  // channels no stored row writes hold act(bias)
    for (int32_t c : w_.empty_cols) {
      const float b = activate(relu_, w_.bias.empty() ? 0.0f : w_.bias[c]);
      std::fill(y + c * hw + oh0 * off_->out_w, y + c * hw + (oh0 + band_h) * off_->out_w, b);
    }
  }
  if (r0 >= r1) return;
  const float* x = x_ + image * channels_ * h_ * wd_;
  float* planes = nullptr;
  if (!off_->direct) {
    planes = scratch(0, off_->buffer);
    if (off_->flat) {
      fill_flat(x, oh0, planes);
    } else {
      fill_band(x, oh0, planes);
    }
  }
  // Direct (1x1): the band's positions in x itself; vectors may not run past the band, since
  // past the last band of the last channel lies the end of x. The remainder goes scalar.
  const float* src = off_->direct ? x + oh0 * wd_ : planes;
  const int64_t grid = band_h * off_->wq;
  const int64_t vector_end = off_->direct ? grid / vec_ * vec_ : grid;
  const int64_t tile = off_->tile_vectors * vec_;
  const int64_t row_block = off_->row_block;
  float* part = scratch(1, row_block * tile);
  BlockRows br;
  br.w = &w_;
  br.offsets = off_->offsets.data();
  br.seg = off_->seg.data();
  br.blocks = off_->blocks;
  br.part = part;
  br.ldp = tile;
  br.relu = relu_;
  br.y_stride = hw;
  // Tiles of whole vectors; direct, the positions past the last whole vector go scalar.
  // Flat: the band's vectors split evenly over the fewest tiles of at most tile_vectors (a 98
  // position band: one tile of 13 vectors, not 12 and a 13th alone with its weights' loads).
  const int64_t band_vectors = (grid + vec_ - 1) / vec_;
  const int64_t flat_tiles = (band_vectors + off_->tile_vectors - 1) / off_->tile_vectors;
  for (int64_t q0 = 0, q1 = 0, t = 0; q0 < grid; q0 = q1, ++t) {
    const bool vector = q0 < vector_end;
    const int64_t nv = !vector      ? 0
                       : off_->flat ? band_vectors / flat_tiles + (t < band_vectors % flat_tiles)
                                    : (std::min(tile, vector_end - q0) + vec_ - 1) / vec_;
    q1 = vector ? std::min(grid, q0 + nv * vec_) : grid;
    br.x = src + q0;
    // Direct and flat: the tile's positions are y's, so the last block stores straight into y,
    // unless (flat) its last vector runs past the band.
    const bool into_y = off_->direct || (off_->flat && q0 + nv * vec_ <= grid);
    br.y_rows = into_y ? y + oh0 * off_->out_w + q0 : nullptr;
    for (int64_t rb = r0; rb < r1; rb += row_block) {
      const int64_t re = std::min(r1, rb + row_block);
      for (br.b = 0; br.b < br.blocks; ++br.b) {
        if (vector) {
          block_rows(br, rb, re, nv, vec_);
        } else {
          block_rows_portable(br, rb, re, q1 - q0);
        }
      }
      if (into_y) continue;
      for (int64_t r = rb; r < re; ++r) store_grid(part + (r - rb) * tile, oh0, q0, q1, r, y);
    }
  }
}

}  // namespace sparsify
