// Constant fan-in ("condensed") linear layer on the CPU:
//
//   y[b, col(r)] = sum_j values[r, j] * x[b, indices[r, j]] + bias[col(r)]
//
// for every active row r; col(r) is r itself, or rows[r] when the layer was stored without its
// ablated (all-zero) rows and scatters back to the full output width. Columns that no active row
// writes hold bias (or 0).
//
// The kernel works on a packed copy of the weights (Packed): the row stride is padded to a
// multiple of 8 with zero values / index 0, so the SIMD loops never need a tail. Compute is split
// by rows into independent chunks so a thread pool can run them in any order.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>
#include <string>
#include <vector>

namespace sparsify {

// Allocates on 64-byte boundaries, so a 64-byte vector load of aligned data never straddles two
// cache lines (a split load costs two load slots; the batch-1 lane path is bound by loads).
template <typename T>
struct CacheAligned {
  using value_type = T;
  CacheAligned() = default;
  template <typename U>
  CacheAligned(const CacheAligned<U>&) {}
  T* allocate(size_t n) {
    return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64)));
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <typename U>
  bool operator==(const CacheAligned<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheAligned<U>&) const { return false; }
};

// The batched path's layout: rows in blocks of kRowBlock, inputs in chunks of kInChunk. For
// each (row block, input chunk, row) the row's kept entries that fall in the chunk, as values and
// 8-bit offsets inside the chunk, stored in exactly the order the kernel reads them.
struct Blocked {
  int64_t chunks = 0;
  std::vector<int64_t> block_start;  // [row blocks + 1] first entry of each row block
  std::vector<uint8_t> seg;          // [row blocks, chunks, kRowBlock] entries per segment
  std::vector<float> values;         // [rows * k]
  std::vector<uint8_t> offsets;      // [rows * k] index - chunk * kInChunk
};

// The batch-1 row-lane layout (see lane_rows_avx512 in condensed_kernel.cc): rows in groups of
// `lanes` (a few SIMD vectors of outputs), walked in steps. A step has a window of consecutive
// inputs (32 with AVX-512, 16 with AVX2) starting at base[step]; every row of the group whose
// next kept entry (in index order) lies in the window takes it, as its value and its 8-bit
// offset in the window, and the others idle with value 0. The window starts at the group's
// smallest next index, so the lagging row always advances. Each output lane is one row: no
// horizontal sums, and one in-register permute serves a vector of entries (a scalar gather
// costs ~3 instructions per entry).
struct Lanes {
  int64_t lanes = 0;   // 64 (AVX-512, 32-input windows) or 16 (AVX2, 16); 0: not built
  bool narrow = false;  // every offset < 8 (2:4 rows): one 8-float register per window
  std::vector<int64_t> group_start;  // [groups + 1] first step of each group
  std::vector<int32_t> base;         // [steps] first input of the step's window
  std::vector<float, CacheAligned<float>> values;      // [steps, lanes]
  std::vector<uint8_t, CacheAligned<uint8_t>> offsets;  // [steps, lanes] index - base
};

// Makes the compiler hold p in a register of its own, so FMAs that load from it address
// [p + 32 * t] rather than [x + 4 * index + 32 * t]: Intel cores split an FMA with an indexed
// memory operand into two micro-ops. The AVX2 tiles that read runs at per-entry offsets take it
// (3x3 conv at 2:4 as on AVX2, A/B in one process: 128->128 @28 1.47 -> 1.43 ms, 64->64 @56
// 1.45 -> 1.41; 90% and AVX-512 level).
inline __attribute__((always_inline)) void base_register(const float*& p) { asm("" : "+r"(p)); }

constexpr int64_t kRowBlock = 32;
constexpr int64_t kGroupRows = 4;
constexpr int64_t kInChunk = 64;

struct Packed {
  int64_t rows = 0;      // active rows
  int64_t k = 0;         // kept weights per row
  int64_t kp = 0;        // padded row stride, a multiple of 8
  int64_t out = 0;       // output width
  int32_t max_index = -1;
  bool idx16 = false;    // indices stored as int16 (in_features <= 32767), else int32
  // Row-major padded copy: the source of the layouts below, kept only for the portable path.
  std::vector<float> values;     // [rows, kp]
  std::vector<int16_t> idx16v;   // [rows, kp] when idx16
  std::vector<int32_t> idx32v;   // [rows, kp] otherwise
  std::vector<float> bias;       // [out]; empty when the node has no bias
  std::vector<int32_t> cols;     // [rows] output column of each active row; empty: identity
  std::vector<int32_t> empty_cols;  // output columns no active row writes
  Blocked blocked;                    // built by pack() as well
  // Layout of the AVX2 batch-1 gather and direct (batched) paths (empty without AVX2): rows in
  // groups of kGroupRows (the last group padded with zero rows), and for each group and each
  // block of 8 entries the group's 8 values per row, then its 8 indices per row (int16 or int32,
  // as idx16), so the kernel reads one contiguous stream that the hardware prefetcher follows
  // (four rows' separate value and index streams were 8 streams).
  std::vector<float, CacheAligned<float>> grouped;
  int64_t group_stride = 0;  // floats per (group, block of 8)
  Lanes lanes;  // batch-1 row-lane layout: AVX-512 always, AVX2 unless rows are very sparse
};

// Checks the `rows` input of a condensed op: cols [rows] must be distinct output indices in
// [0, width); on success stores them in *cols_out and the indices no row writes in *empty_out.
// `dim` names the attribute that gives width ("out_features", "out_channels") in the message.
// Returns an error message, or "" on success.
std::string check_output_rows(const int32_t* cols, int64_t rows, int64_t width, const char* dim,
                              std::vector<int32_t>* cols_out, std::vector<int32_t>* empty_out);

// Builds the packed form; returns an error message, or "" on success. cols_len < 0: no rows
// input (row r writes column r); otherwise cols [cols_len] maps stored rows to output columns.
std::string pack(const float* values, const void* indices, bool indices_are_int16,
                 int64_t rows, int64_t k, const float* bias, int64_t bias_len,
                 const int32_t* cols, int64_t cols_len, int64_t out_features, Packed* out);

// One call of the layer on x [batch, in] -> y [batch, out]: planned once, then run chunk by
// chunk (possibly on several threads); chunks write disjoint parts of y.
class Plan {
 public:
  Plan(const Packed& w, const float* x, int64_t batch, int64_t in, float* y);
  ~Plan();
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;

  int64_t chunks() const { return chunks_; }
  // Whether the call runs long enough for the thread pool to pay off (~18 us on one Zen 4
  // core): a kept weight costs ~0.09 ns at batch 1, ~0.045 ns per batch row on the batched
  // paths. (Threading every call above 64K multiply-adds left the transformer sample, 16 tokens
  // at batch 1, 2x slower on 2 threads than on 1.)
  bool worth_threads() const {
    return chunks_ > 1 && w_.rows * w_.k * (batch_ == 1 ? 2 : batch_) >= 400 * 1000;
  }
  void run_chunk(int64_t chunk) const;

 private:
  const Packed& w_;
  const float* x_;
  int64_t batch_;
  int64_t in_;
  float* y_;
  float* xt_ = nullptr;  // x transposed to [tiles, in, batch_pad] when batch > 1
  std::vector<float> xpad_;  // batch-1 lane path: x with kXPad zeros past its end
  int64_t batch_pad_ = 0;
  bool direct_ = false;  // rows straight from the grouped layout against 8- or 16-lane xt tiles
  bool wide_ = false;    // ... against 32- to 64-lane tiles (AVX-512, batch > 16)
  bool wide2_ = false;   // ... against 24- to 64-lane tiles, one row at a time (AVX2, batch > 16)
  int64_t tiles_ = 1;     // batch tiles of batch_pad lanes (several only on the direct path)
  int64_t rows_per_chunk_ = 0;
  int64_t row_chunks_ = 0;
  int64_t chunks_ = 0;  // row_chunks_ * tiles_, tile-major
};

// The instruction set the kernels use on this CPU: "avx512", "avx2" or "portable". The
// environment variable SPARSIFY_CONDENSED_ISA (same names), read when the library loads, caps it
// (to compare paths, or to test the narrower ones on a wider CPU).
const char* isa_name();
// The same choice as a level: 0 portable, 1 AVX2+FMA, 2 AVX-512 (for the conv kernels).
int isa_level();

}  // namespace sparsify
