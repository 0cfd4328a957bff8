// ONNX Runtime custom ops ai.sparsify::CondensedLinear and ai.sparsify::CondensedConv (opset 1),
// C API only.
//
//   Y = CondensedLinear(X, values, indices, [bias], [rows]), attribute out_features (int)
//   X [..., in] float; values [R, k] float; indices [R, k] int16 or int32;
//   bias [out] float; rows [R] int32: output column of each stored row (then out =
//   out_features and unwritten columns hold bias or 0); without rows, out = R.
//   Y [..., out] float.
//
//   Y = CondensedConv(X, values, indices, [bias], [rows]), attributes kernel_shape [kh, kw],
//   strides, pads [top, left, bottom, right], dilations (as ONNX Conv; groups = 1),
//   out_channels (with rows), relu (0 or 1: ReLU fused after the bias)
//   X [n, c, h, w] float; values [R, k]; indices [R, k]: flattened [c, kh, kw] positions;
//   optional 6th input residual [n, out, oh, ow] (a residual Add fused: added after the bias,
//   before the ReLU); Y [n, out, oh, ow].
//
// Built against the C API header of ORT 1.21 but asking for API version kApiVersion (18), so the
// library loads in any ONNX Runtime >= 1.18: it uses no function added after 1.18, and tells ORT
// (OrtCustomOp::version) not to read the struct fields added later.
//
// Weights are packed once when values / indices / bias / rows are constant initializers (the
// normal case); otherwise each call packs a private copy. Work is split into chunks run on the
// session's intra-op thread pool (KernelContext_ParallelFor), so intra_op_num_threads applies.
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "condensed_conv.h"
#include "condensed_kernel.h"
#include "onnxruntime/onnxruntime_c_api.h"

namespace {

constexpr uint32_t kApiVersion = 18;
constexpr const char* kDomain = "ai.sparsify";

const OrtApi* g_api = nullptr;

#define RETURN_IF_ERROR(expr)              \
  do {                                     \
    OrtStatus* status_ = (expr);           \
    if (status_ != nullptr) return status_; \
  } while (0)

OrtStatus* fail(const std::string& msg, const char* op = "CondensedLinear") {
  return g_api->CreateStatus(ORT_INVALID_ARGUMENT, (std::string(op) + ": " + msg).c_str());
}

struct TensorView {
  const void* data = nullptr;
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

OrtStatus* view(const OrtValue* value, TensorView* out) {
  OrtTensorTypeAndShapeInfo* info = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorTypeAndShape(value, &info));
  size_t rank = 0;
  OrtStatus* status = g_api->GetTensorElementType(info, &out->type);
  if (status == nullptr) status = g_api->GetDimensionsCount(info, &rank);
  if (status == nullptr) {
    out->shape.assign(rank, 0);
    status = g_api->GetDimensions(info, out->shape.data(), rank);
  }
  g_api->ReleaseTensorTypeAndShapeInfo(info);
  if (status != nullptr) return status;
  void* data = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  out->data = data;
  return nullptr;
}

// values, indices, bias, rows: the four weight-side inputs (bias and rows may be absent).
struct WeightInputs {
  TensorView values, indices, bias, rows;
  bool has_bias = false, has_rows = false;
};

// Types and shapes of the weight-side inputs, shared by both ops.
OrtStatus* check_weights(const WeightInputs& in, const char* op) {
  if (in.values.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || in.values.shape.size() != 2) {
    return fail("values must be a 2-D float tensor [rows, k]", op);
  }
  const bool idx16 = in.indices.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16;
  if (!idx16 && in.indices.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
    return fail("indices must be int16 or int32", op);
  }
  if (in.indices.shape != in.values.shape) {
    return fail("indices and values must share one shape", op);
  }
  if (in.has_bias && (in.bias.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ||
                      in.bias.shape.size() != 1)) {
    return fail("bias must be a 1-D float tensor", op);
  }
  if (in.has_rows && (in.rows.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 ||
                      in.rows.shape.size() != 1)) {
    return fail("rows must be a 1-D int32 tensor", op);
  }
  return nullptr;
}

OrtStatus* pack_inputs(const WeightInputs& in, int64_t out_features, sparsify::Packed* packed) {
  RETURN_IF_ERROR(check_weights(in, "CondensedLinear"));
  const std::string err = sparsify::pack(
      static_cast<const float*>(in.values.data), in.indices.data,
      in.indices.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, in.values.shape[0],
      in.values.shape[1], in.has_bias ? static_cast<const float*>(in.bias.data) : nullptr,
      in.has_bias ? in.bias.numel() : 0,
      in.has_rows ? static_cast<const int32_t*>(in.rows.data) : nullptr,
      in.has_rows ? in.rows.numel() : -1, out_features, packed);
  return err.empty() ? nullptr : fail(err);
}

OrtStatus* pack_conv_inputs(const WeightInputs& in, const sparsify::ConvGeometry& g,
                            int64_t out_channels, sparsify::ConvPacked* packed) {
  RETURN_IF_ERROR(check_weights(in, "CondensedConv"));
  const std::string err = sparsify::pack_conv(
      g, static_cast<const float*>(in.values.data), in.indices.data,
      in.indices.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16, in.values.shape[0],
      in.values.shape[1], in.has_bias ? static_cast<const float*>(in.bias.data) : nullptr,
      in.has_bias ? in.bias.numel() : 0,
      in.has_rows ? static_cast<const int32_t*>(in.rows.data) : nullptr,
      in.has_rows ? in.rows.numel() : -1, out_channels, packed);
  return err.empty() ? nullptr : fail(err, "CondensedConv");
}

struct Kernel {
  int64_t out_features = -1;
  std::unique_ptr<sparsify::Packed> packed;  // set when every weight-side input is constant
};

// Whether the node names input `index` (an absent optional input has an empty name).
OrtStatus* has_input(const OrtKernelInfo* info, size_t index, bool* present) {
  size_t count = 0;
  RETURN_IF_ERROR(g_api->KernelInfo_GetInputCount(info, &count));
  *present = false;
  if (index >= count) return nullptr;
  size_t size = 0;
  RETURN_IF_ERROR(g_api->KernelInfo_GetInputName(info, index, nullptr, &size));
  *present = size > 1;  // size counts the terminating NUL
  return nullptr;
}

// Fetches input `index` from the kernel info if it is a constant initializer.
OrtStatus* constant_input(const OrtKernelInfo* info, size_t index, bool* is_const,
                          TensorView* out) {
  int is_constant = 0;
  const OrtValue* value = nullptr;
  RETURN_IF_ERROR(g_api->KernelInfoGetConstantInput_tensor(info, index, &is_constant, &value));
  *is_const = is_constant != 0 && value != nullptr;
  return *is_const ? view(value, out) : nullptr;
}

// Reads inputs 1..4 from the kernel info; *all_const: every present one is a constant
// initializer (then the weights can be packed once, at session load).
OrtStatus* constant_weights(const OrtKernelInfo* info, WeightInputs* w, bool* all_const) {
  bool c = false;
  RETURN_IF_ERROR(constant_input(info, 1, &c, &w->values));
  *all_const = c;
  RETURN_IF_ERROR(constant_input(info, 2, &c, &w->indices));
  *all_const = *all_const && c;
  bool present = false;
  RETURN_IF_ERROR(has_input(info, 3, &present));
  if (present) {
    RETURN_IF_ERROR(constant_input(info, 3, &w->has_bias, &w->bias));
    *all_const = *all_const && w->has_bias;
  }
  RETURN_IF_ERROR(has_input(info, 4, &present));
  if (present) {
    RETURN_IF_ERROR(constant_input(info, 4, &w->has_rows, &w->rows));
    *all_const = *all_const && w->has_rows;
  }
  return nullptr;
}

// An optional int attribute: `fallback` when the node does not set it.
OrtStatus* int_attribute(const OrtKernelInfo* info, const char* name, int64_t fallback,
                         int64_t* out) {
  OrtStatus* status = g_api->KernelInfoGetAttribute_int64(info, name, out);
  if (status != nullptr) {
    g_api->ReleaseStatus(status);
    *out = fallback;
  }
  return nullptr;
}

OrtStatus* ORT_API_CALL create_kernel(const OrtCustomOp*, const OrtApi*, const OrtKernelInfo* info,
                                      void** out) {
  auto kernel = std::make_unique<Kernel>();
  // optional attribute: absent means "no rows input"
  RETURN_IF_ERROR(int_attribute(info, "out_features", -1, &kernel->out_features));
  WeightInputs w;
  bool all_const = false;
  RETURN_IF_ERROR(constant_weights(info, &w, &all_const));
  if (all_const) {
    kernel->packed = std::make_unique<sparsify::Packed>();
    RETURN_IF_ERROR(pack_inputs(w, kernel->out_features, kernel->packed.get()));
  }
  *out = kernel.release();
  return nullptr;
}

OrtStatus* input_view(OrtKernelContext* ctx, size_t count, size_t index, bool* present,
                      TensorView* out) {
  *present = false;
  if (index >= count) return nullptr;
  const OrtValue* value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetInput(ctx, index, &value));
  if (value == nullptr) return nullptr;
  *present = true;
  return view(value, out);
}

// The weight-side inputs of this call (when they were not constant at session load).
OrtStatus* runtime_weights(OrtKernelContext* ctx, size_t count, WeightInputs* in) {
  bool present = false;
  RETURN_IF_ERROR(input_view(ctx, count, 1, &present, &in->values));
  RETURN_IF_ERROR(input_view(ctx, count, 2, &present, &in->indices));
  RETURN_IF_ERROR(input_view(ctx, count, 3, &in->has_bias, &in->bias));
  return input_view(ctx, count, 4, &in->has_rows, &in->rows);
}

void ORT_API_CALL run_chunk(void* plan, size_t chunk) {
  static_cast<const sparsify::Plan*>(plan)->run_chunk(static_cast<int64_t>(chunk));
}

OrtStatus* ORT_API_CALL compute(void* op_kernel, OrtKernelContext* ctx) {
  const Kernel& kernel = *static_cast<Kernel*>(op_kernel);
  size_t count = 0;
  RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(ctx, &count));
  TensorView x;
  bool present = false;
  RETURN_IF_ERROR(input_view(ctx, count, 0, &present, &x));
  if (!present || x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || x.shape.empty()) {
    return fail("X must be a float tensor [..., in]");
  }
  sparsify::Packed local;
  const sparsify::Packed* w = kernel.packed.get();
  if (w == nullptr) {
    WeightInputs in;
    RETURN_IF_ERROR(runtime_weights(ctx, count, &in));
    RETURN_IF_ERROR(pack_inputs(in, kernel.out_features, &local));
    w = &local;
  }
  const int64_t in_features = x.shape.back();
  if (w->max_index >= in_features) {
    return fail("an index (" + std::to_string(w->max_index) + ") is out of range for X with " +
                std::to_string(in_features) + " features");
  }
  const int64_t batch = in_features == 0 ? 0 : x.numel() / in_features;
  std::vector<int64_t> y_shape = x.shape;
  y_shape.back() = w->out;
  OrtValue* y_value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(ctx, 0, y_shape.data(), y_shape.size(), &y_value));
  void* y = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorMutableData(y_value, &y));
  if (batch == 0 || w->out == 0) return nullptr;
  const sparsify::Plan plan(*w, static_cast<const float*>(x.data), batch, in_features,
                            static_cast<float*>(y));
  if (plan.worth_threads()) {
    return g_api->KernelContext_ParallelFor(ctx, run_chunk, static_cast<size_t>(plan.chunks()), 0,
                                            const_cast<sparsify::Plan*>(&plan));
  }
  for (int64_t c = 0; c < plan.chunks(); ++c) plan.run_chunk(c);
  return nullptr;
}


// ---------------------------------------------------------------- CondensedConv

struct ConvKernel {
  sparsify::ConvGeometry g;
  int64_t out_channels = -1;
  std::unique_ptr<sparsify::ConvPacked> packed;  // set when every weight-side input is constant
};

// An int-array attribute of exactly `n` values, or `fallback` (n values) when absent.
OrtStatus* ints_attribute(const OrtKernelInfo* info, const char* name, size_t n,
                          const std::vector<int64_t>& fallback, std::vector<int64_t>* out) {
  size_t size = 0;
  OrtStatus* status = g_api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size);
  if (status != nullptr) {
    g_api->ReleaseStatus(status);
    *out = fallback;
    return nullptr;
  }
  if (size != n) {
    return fail("attribute " + std::string(name) + " must hold " + std::to_string(n) +
                " values (2-D convolution)", "CondensedConv");
  }
  out->assign(n, 0);
  return g_api->KernelInfoGetAttributeArray_int64(info, name, out->data(), &size);
}

OrtStatus* ORT_API_CALL create_conv_kernel(const OrtCustomOp*, const OrtApi*,
                                           const OrtKernelInfo* info, void** out) {
  auto kernel = std::make_unique<ConvKernel>();
  std::vector<int64_t> shape, strides, pads, dilations;
  size_t size = 0;
  OrtStatus* status = g_api->KernelInfoGetAttributeArray_int64(info, "kernel_shape", nullptr, &size);
  if (status != nullptr) {
    g_api->ReleaseStatus(status);
    return fail("attribute kernel_shape [kh, kw] is required", "CondensedConv");
  }
  RETURN_IF_ERROR(ints_attribute(info, "kernel_shape", 2, {}, &shape));
  RETURN_IF_ERROR(ints_attribute(info, "strides", 2, {1, 1}, &strides));
  RETURN_IF_ERROR(ints_attribute(info, "pads", 4, {0, 0, 0, 0}, &pads));
  RETURN_IF_ERROR(ints_attribute(info, "dilations", 2, {1, 1}, &dilations));
  int64_t relu = 0;
  RETURN_IF_ERROR(int_attribute(info, "relu", 0, &relu));
  RETURN_IF_ERROR(int_attribute(info, "out_channels", -1, &kernel->out_channels));
  sparsify::ConvGeometry& g = kernel->g;
  g.kh = shape[0];
  g.kw = shape[1];
  g.sh = strides[0];
  g.sw = strides[1];
  g.pt = pads[0];
  g.pl = pads[1];
  g.pb = pads[2];
  g.pr = pads[3];
  g.dh = dilations[0];
  g.dw = dilations[1];
  g.relu = relu != 0;
  WeightInputs w;
  bool all_const = false;
  RETURN_IF_ERROR(constant_weights(info, &w, &all_const));
  if (all_const) {
    kernel->packed = std::make_unique<sparsify::ConvPacked>();
    RETURN_IF_ERROR(pack_conv_inputs(w, g, kernel->out_channels, kernel->packed.get()));
  }
  *out = kernel.release();
  return nullptr;
}

void ORT_API_CALL run_conv_chunk(void* plan, size_t chunk) {
  static_cast<const sparsify::ConvPlan*>(plan)->run_chunk(static_cast<int64_t>(chunk));
}

OrtStatus* ORT_API_CALL compute_conv(void* op_kernel, OrtKernelContext* ctx) {
  const ConvKernel& kernel = *static_cast<ConvKernel*>(op_kernel);
  size_t count = 0;
  RETURN_IF_ERROR(g_api->KernelContext_GetInputCount(ctx, &count));
  TensorView x;
  bool present = false;
  RETURN_IF_ERROR(input_view(ctx, count, 0, &present, &x));
  if (!present || x.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || x.shape.size() != 4) {
    return fail("X must be a float tensor [n, c, h, w]", "CondensedConv");
  }
  sparsify::ConvPacked local;
  const sparsify::ConvPacked* w = kernel.packed.get();
  if (w == nullptr) {
    WeightInputs in;
    RETURN_IF_ERROR(runtime_weights(ctx, count, &in));
    RETURN_IF_ERROR(pack_conv_inputs(in, kernel.g, kernel.out_channels, &local));
    w = &local;
  }
  const int64_t n = x.shape[0], c = x.shape[1], h = x.shape[2], wd = x.shape[3];
  if (w->max_channel >= c) {
    return fail("an index reads input channel " + std::to_string(w->max_channel) +
                ", but X has " + std::to_string(c) + " channels", "CondensedConv");
  }
  int64_t out_h = 0, out_w = 0;
  const std::string err = sparsify::conv_output_size(kernel.g, h, wd, &out_h, &out_w);
  if (!err.empty()) return fail(err, "CondensedConv");
  // Offsets into one image's planes are int32.
  const auto offsets = w->offsets_for(h, wd, c);
  if (offsets->buffer >= (int64_t{1} << 31)) {
    return fail("the input is too large for one call (2^31 floats in a band of planes)",
                "CondensedConv");
  }
  std::vector<int64_t> y_shape = {n, w->out, out_h, out_w};
  OrtValue* y_value = nullptr;
  RETURN_IF_ERROR(g_api->KernelContext_GetOutput(ctx, 0, y_shape.data(), y_shape.size(), &y_value));
  void* y = nullptr;
  RETURN_IF_ERROR(g_api->GetTensorMutableData(y_value, &y));
  if (n == 0 || w->out == 0 || out_h == 0 || out_w == 0) return nullptr;
  TensorView residual;
  bool has_residual = false;
  RETURN_IF_ERROR(input_view(ctx, count, 5, &has_residual, &residual));
  if (has_residual && (residual.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ||
                       residual.shape != y_shape)) {
    return fail("residual must be a float tensor of Y's shape [n, out, oh, ow]", "CondensedConv");
  }
  const sparsify::ConvPlan plan(*w, static_cast<const float*>(x.data), n, c, h, wd,
                                static_cast<float*>(y),
                                has_residual ? static_cast<const float*>(residual.data) : nullptr);
  if (plan.worth_threads()) {
    RETURN_IF_ERROR(g_api->KernelContext_ParallelFor(
        ctx, run_conv_chunk, static_cast<size_t>(plan.chunks()), 0,
        const_cast<sparsify::ConvPlan*>(&plan)));
  } else {
    for (int64_t i = 0; i < plan.chunks(); ++i) plan.run_chunk(i);
  }
  plan.add_residual();
  return nullptr;
}

void ORT_API_CALL destroy_conv_kernel(void* op_kernel) {
  delete static_cast<ConvKernel*>(op_kernel);
}

const char* ORT_API_CALL conv_op_name(const OrtCustomOp*) { return "CondensedConv"; }

void ORT_API_CALL destroy_kernel(void* op_kernel) { delete static_cast<Kernel*>(op_kernel); }

const char* ORT_API_CALL op_name(const OrtCustomOp*) { return "CondensedLinear"; }
const char* ORT_API_CALL op_provider(const OrtCustomOp*) { return "CPUExecutionProvider"; }
size_t ORT_API_CALL input_count(const OrtCustomOp*) { return 5; }
size_t ORT_API_CALL conv_input_count(const OrtCustomOp*) { return 6; }  // + residual
size_t ORT_API_CALL output_count(const OrtCustomOp*) { return 1; }

ONNXTensorElementDataType ORT_API_CALL input_type(const OrtCustomOp*, size_t index) {
  switch (index) {
    case 2: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // int16 or int32, checked at packing
    case 4: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
    default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
  }
}

ONNXTensorElementDataType ORT_API_CALL output_type(const OrtCustomOp*, size_t) {
  return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
}

OrtCustomOpInputOutputCharacteristic ORT_API_CALL input_characteristic(const OrtCustomOp*,
                                                                       size_t index) {
  return index >= 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
}

OrtCustomOpInputOutputCharacteristic ORT_API_CALL output_characteristic(const OrtCustomOp*,
                                                                        size_t) {
  return INPUT_OUTPUT_REQUIRED;
}

OrtMemType ORT_API_CALL input_memory_type(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
int ORT_API_CALL variadic_min_arity(const OrtCustomOp*) { return 1; }
int ORT_API_CALL variadic_homogeneity(const OrtCustomOp*) { return 1; }
int ORT_API_CALL start_version(const OrtCustomOp*) { return 1; }
int ORT_API_CALL end_version(const OrtCustomOp*) { return 1; }

OrtCustomOp make_op() {
  OrtCustomOp op;
  std::memset(&op, 0, sizeof(op));
  op.version = kApiVersion;
  op.GetName = op_name;
  op.GetExecutionProviderType = op_provider;
  op.GetInputType = input_type;
  op.GetInputTypeCount = input_count;
  op.GetOutputType = output_type;
  op.GetOutputTypeCount = output_count;
  op.KernelDestroy = destroy_kernel;
  op.GetInputCharacteristic = input_characteristic;
  op.GetOutputCharacteristic = output_characteristic;
  op.GetInputMemoryType = input_memory_type;
  op.GetVariadicInputMinArity = variadic_min_arity;
  op.GetVariadicInputHomogeneity = variadic_homogeneity;
  op.GetVariadicOutputMinArity = variadic_min_arity;
  op.GetVariadicOutputHomogeneity = variadic_homogeneity;
  op.CreateKernelV2 = create_kernel;
  op.KernelComputeV2 = compute;
  op.GetStartVersion = start_version;
  op.GetEndVersion = end_version;
  return op;
}

OrtCustomOp make_conv_op() {
  OrtCustomOp op = make_op();
  op.GetName = conv_op_name;
  op.GetInputTypeCount = conv_input_count;
  op.KernelDestroy = destroy_conv_kernel;
  op.CreateKernelV2 = create_conv_kernel;
  op.KernelComputeV2 = compute_conv;
  return op;
}

const OrtCustomOp g_op = make_op();
const OrtCustomOp g_conv_op = make_conv_op();

}  // namespace

// The instruction set the kernels picked on this CPU ("avx512", "avx2" or "portable"), for
// reports and benchmarks (sparsify_cli.exporters.condensed.kernel_isa reads it through ctypes).
extern "C" __attribute__((visibility("default"))) const char* SparsifyCondensedIsa() {
  return sparsify::isa_name();
}

// Entry point looked up by SessionOptions.register_custom_ops_library(path).
// The domain object is created once and intentionally never released: sessions created from any
// SessionOptions it was added to may outlive every Python reference to those options.
extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  static std::mutex mutex;
  static OrtCustomOpDomain* domain = nullptr;
  std::lock_guard<std::mutex> lock(mutex);
  if (g_api == nullptr) {
    g_api = api_base->GetApi(kApiVersion);
    if (g_api == nullptr) {  // API 1 exists in every release and is enough to say why
      return api_base->GetApi(1)->CreateStatus(
          ORT_NOT_IMPLEMENTED, "CondensedLinear needs ONNX Runtime >= 1.18 (C API version 18)");
    }
  }
  if (domain == nullptr) {
    RETURN_IF_ERROR(g_api->CreateCustomOpDomain(kDomain, &domain));
    RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_op));
    RETURN_IF_ERROR(g_api->CustomOpDomain_Add(domain, &g_conv_op));
  }
  return g_api->AddCustomOpDomain(options, domain);
}
