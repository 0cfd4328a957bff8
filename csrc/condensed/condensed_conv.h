// Constant fan-in ("condensed") 2-D convolution on the CPU, NCHW, groups = 1:
//
//   y[n, col(r), oh, ow] = act(sum_j values[r, j] * xpad[n, c_j, oh*sh + i_j*dh, ow*sw + t_j*dw]
//                              + bias[col(r)])
//
// where the kept weight j of row r sits at (c_j, i_j, t_j) of the [in, kh, kw] kernel (its
// flattened index c*kh*kw + i*kw + t is what the condensed form stores) and xpad is x with the
// pads added as zeros. act is the identity or ReLU (fused from a following Relu node).
//
// "Sparse weights x dense shifted planes": the input is copied into stride-phase planes (for
// stride s, plane (c, a, b) holds xpad[c, s*i + a, s*j + b]; stride 1 has one plane per channel)
// of row width Wq >= ceil(padded width / s), a band of output rows at a time. On that grid every
// kept weight reads one contiguous run of a plane at a constant shift from the output position:
// out[q] += w * plane[q + shift] for q = oh * Wq + ow. So each kept weight is a broadcast and a
// run of vector FMAs along the output rows, with no gathers and no bounds tests (the pads are in
// the planes); the Wq - Wout columns past each output row are computed and dropped. Stride-1
// convs on larger maps use "flat" planes instead (ConvOffsets::flat): rows exactly Wout wide,
// one plane per (channel, kernel column), so nothing is computed and dropped.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "condensed_kernel.h"

namespace sparsify {

struct ConvGeometry {
  int64_t kh = 1, kw = 1;             // kernel
  int64_t sh = 1, sw = 1;             // strides
  int64_t pt = 0, pl = 0, pb = 0, pr = 0;  // pads: top, left, bottom, right
  int64_t dh = 1, dw = 1;             // dilations
  bool relu = false;                  // fused activation
};

// Per-input-size layout: the band buffer's shape and each kept weight's offset into it.
struct ConvOffsets {
  int64_t h = -1, w = -1, channels = -1;  // input it was built for
  int64_t out_h = 0, out_w = 0;
  bool direct = false;     // 1x1, stride 1, no pads: kernels read x itself (plane = h * w)
  // Small maps (column planes): per image, each (channel, row phase, kernel column) gets a plane
  // of col_rows rows of exactly out_w floats, xpad[c, sh * r + a, sw * ow + j * dw]; the run of
  // out_h * out_w positions a kept weight (c, i, j) reads starts (i * dh) / sh rows into plane
  // (c, (i * dh) % sh, j), so the conv is the batched CondensedLinear over the positions with
  // no grid padding (an im2col without its kh-fold copy). col_off holds each kept weight's run,
  // in the order of the grouped layout of ConvPacked::linear.
  bool columns = false;
  int64_t col_rows = 0;    // rows of a column plane
  int64_t col_plane = 0;   // floats of a column plane (col_rows * out_w, rounded up to 16)
  int64_t col_buffer = 0;  // floats of one image's planes, and the slack the last vector reads
  std::vector<int32_t> col_off;  // [groups, blocks, 4 rows x 8 entries] run start in the planes
  // Plane (a, j) position q reads x inside it where col_valid [sh * kw, col_plane] is -1 (0:
  // a pad); col_run (stride 1, out_w == w): a plane is one masked run of x, else col_index
  // holds each position's offset into its channel. col_plane is whole 64 bytes.
  bool col_run = false;
  std::vector<int32_t> col_valid;
  std::vector<int32_t> col_index;
  std::vector<uint8_t> col_phase_read;  // [sh] row phases some kernel row reads
  int64_t col_images = 1;  // images per chunk (small maps: several, sharing each weight's loads)
  // Stride 1, not direct, not columns ("flat" planes): rows exactly out_w wide, so a band's
  // positions are one contiguous run (the output's own layout) with no grid columns computed and
  // dropped. Each (channel, kernel column t) gets a plane xpad[c, oh0 + r, ow + t * dw] (zeros
  // outside x), in `classes` copies: a kernel row i starts its runs i * dh * out_w floats in,
  // and copy a holds the plane shifted left by that start's remainder modulo the vector width,
  // so every run starts on a vector boundary (56-wide maps: 1 copy; 28: 2; 14: 3 with AVX2).
  bool flat = false;
  int64_t classes = 1;
  std::vector<int32_t> class_shift;  // [classes] floats copy k is shifted left by (0 first)
  bool aligned = false;    // rows padded to the vector width, one plane copy per column shift
  int64_t wq = 0;          // plane row width (the output grid's row width)
  int64_t copies = 1;      // shifted copies of each plane (aligned: kernel column shifts)
  int64_t band_rows = 1;   // output rows per band
  int64_t bands = 1;
  int64_t plane_rows = 0;  // plane rows a band reads
  int64_t plane = 0;       // floats per plane copy in the band buffer
  int64_t buffer = 0;      // floats of one band buffer
  std::vector<int32_t> offsets;  // [rows, k] (phase * copies + shift) * plane + row shift
                                 // (flat: ((c * kw + t) * classes + class) * plane + aligned start)
  // Input channels in blocks of block_channels: a tile of positions runs every row's kept
  // weights of one block before the next, so the planes it reads stay in L1. A row's weights
  // are sorted by input channel; those of block b are [seg[r * (blocks + 1) + b], ... + b + 1).
  int64_t tile_vectors = 4;  // vectors of positions per tile
  int64_t block_channels = 1;
  int64_t blocks = 1;
  int64_t row_block = 1;  // rows whose partial sums a tile holds at once
  std::vector<int32_t> seg;
};

struct ConvPacked {
  ConvGeometry g;
  int64_t rows = 0;  // stored (active) rows
  int64_t k = 0;     // kept weights per row
  int64_t out = 0;   // output channels
  int32_t max_channel = -1;
  std::vector<float> values;      // [rows, k], each row sorted by flattened [in, kh, kw] index
  std::vector<int32_t> channel;   // [rows, k] input channel of each kept weight
  std::vector<int32_t> ky, kx;    // [rows, k] kernel row * dh, kernel column * dw
  std::vector<float> bias;        // [out]; empty when the node has no bias
  std::vector<int32_t> cols;      // [rows] output channel of each stored row; empty: identity
  std::vector<int32_t> empty_cols;  // output channels no stored row writes
  // The same weights as a CondensedLinear over flattened [in, kh, kw] inputs, for the im2col
  // path (its grouped layout: 4 rows, blocks of 8 entries); built only on AVX2 / AVX-512.
  Packed linear;
  bool has_linear = false;
  // The offsets for the last input size seen (built on first use, shared by concurrent runs).
  mutable std::mutex mutex;
  mutable std::shared_ptr<const ConvOffsets> cached;
  std::shared_ptr<const ConvOffsets> offsets_for(int64_t h, int64_t w, int64_t channels) const;
};

// Builds the packed form; returns an error message, or "" on success. Indices are flattened
// [in, kh, kw] positions (int16 or int32); cols_len < 0: no rows input.
std::string pack_conv(const ConvGeometry& g, const float* values, const void* indices,
                      bool indices_are_int16, int64_t rows, int64_t k, const float* bias,
                      int64_t bias_len, const int32_t* cols, int64_t cols_len,
                      int64_t out_channels, ConvPacked* out);

// The output size for an input of h x w, or an error message.
std::string conv_output_size(const ConvGeometry& g, int64_t h, int64_t w, int64_t* out_h,
                             int64_t* out_w);

// One call on x [batch, channels, h, w] -> y [batch, out, out_h, out_w], in chunks of (image,
// band of output rows[, range of rows]) that each copy their own band of planes, so threads
// share nothing but x and write disjoint parts of y.
class ConvPlan {
 public:
  // residual: nullptr, or a tensor of y's shape added after the bias and before the fused ReLU
  // (a residual Add, and the Relu after it, fused into the conv); add_residual() applies it once
  // every chunk has run.
  ConvPlan(const ConvPacked& w, const float* x, int64_t batch, int64_t channels, int64_t h,
           int64_t wd, float* y, const float* residual = nullptr);
  ConvPlan(const ConvPlan&) = delete;
  ConvPlan& operator=(const ConvPlan&) = delete;

  int64_t chunks() const { return chunks_; }
  // Whether the call has enough work (~20 us on one core) to pay for waking the pool.
  bool worth_threads() const { return chunks_ > 1 && work_ >= 1000 * 1000; }
  void run_chunk(int64_t chunk) const;
  void add_residual() const;

 private:
  void fill_band(const float* x, int64_t i0, float* buf) const;
  void fill_flat(const float* x, int64_t i0, float* buf) const;
  void fill_col_planes(const float* x, float* planes) const;
  void run_columns(int64_t chunk) const;
  void store_grid(const float* buf, int64_t oh0, int64_t q0, int64_t q1, int64_t r,
                  float* y) const;

  const ConvPacked& w_;
  std::shared_ptr<const ConvOffsets> off_;
  const float* x_;
  int64_t batch_, channels_, h_, wd_;
  float* y_;
  const float* residual_;
  bool relu_;           // ReLU in the kernels' epilogue (false when add_residual applies it)
  int64_t vec_ = 8;     // floats per SIMD vector of the chosen ISA
  int64_t rows_per_chunk_ = 0;
  int64_t row_chunks_ = 1;
  int64_t chunks_ = 0;
  int64_t work_ = 0;  // multiply-adds of the call
};

}  // namespace sparsify
