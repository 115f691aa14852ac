#include <torch/types.h>

torch::Tensor exp_add(torch::Tensor x, torch::Tensor y) { return x.exp() + y.exp(); }
