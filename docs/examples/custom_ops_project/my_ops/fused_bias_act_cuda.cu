#include <torch/types.h>

__global__ void fused_bias_act_kernel(const float* x, const float* bias, float* out, int64_t n, int64_t c,
                                      float gain) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) {
    const float v = x[i] + bias[i % c];
    out[i] = (v > 0.f ? v : 0.2f * v) * gain;
  }
}

torch::Tensor fused_bias_act_cuda(torch::Tensor x, torch::Tensor bias, double gain) {
  TORCH_CHECK(x.scalar_type() == torch::kFloat, "the CUDA kernel takes float32");
  auto xc = x.contiguous();
  auto out = torch::empty_like(xc);
  const int64_t n = xc.numel();
  const int threads = 256;
  const int blocks = static_cast<int>((n + threads - 1) / threads);
  fused_bias_act_kernel<<<blocks, threads>>>(xc.data_ptr<float>(), bias.contiguous().data_ptr<float>(),
                                             out.data_ptr<float>(), n, bias.size(0), static_cast<float>(gain));
  return out;
}
