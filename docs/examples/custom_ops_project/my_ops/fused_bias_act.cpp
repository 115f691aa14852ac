// The CPU op and the bindings; the CUDA kernel is in fused_bias_act_cuda.cu (built with -DWITH_CUDA).
#include <torch/extension.h>

#ifdef WITH_CUDA
torch::Tensor fused_bias_act_cuda(torch::Tensor x, torch::Tensor bias, double gain);
#endif

torch::Tensor fused_bias_act(torch::Tensor x, torch::Tensor bias, double gain) {
  TORCH_CHECK(x.size(-1) == bias.size(0), "bias must match the last dimension of x");
#ifdef WITH_CUDA
  if (x.is_cuda()) return fused_bias_act_cuda(x, bias, gain);
#endif
  return torch::leaky_relu(x + bias, 0.2) * gain;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fused_bias_act", &fused_bias_act, "leaky_relu(x + bias) * gain");
}
