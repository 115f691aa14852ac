// The module of the load() parity checks: functions in two files, a class from an include folder,
// a torch::nn::Module bound to Python, a C++ autograd Function, and a function bound without
// torch's error handling.
#include <torch/extension.h>

#include <sstream>

#include "doubler.h"

torch::Tensor exp_add(torch::Tensor x, torch::Tensor y);  // in jit_extension2.cpp

torch::Tensor tanh_add(torch::Tensor x, torch::Tensor y) { return x.tanh() + y.tanh(); }

struct Net : torch::nn::Module {
  Net(int64_t in, int64_t out) : fc(register_module("fc", torch::nn::Linear(in, out))) {
    buf = register_buffer("buf", torch::eye(5));
  }
  torch::Tensor forward(torch::Tensor x) { return fc->forward(x); }
  void set_bias(torch::Tensor bias) {
    torch::NoGradGuard no_grad;
    fc->bias.set_(bias);
  }
  torch::Tensor get_bias() const { return fc->bias; }
  void add_new_parameter(const std::string& name, torch::Tensor tensor) { register_parameter(name, tensor); }
  void add_new_buffer(const std::string& name, torch::Tensor tensor) { register_buffer(name, tensor); }
  void add_new_submodule(const std::string& name) { register_module(name, torch::nn::Linear(2, 2)); }

  torch::nn::Linear fc;
  torch::Tensor buf;
};

struct Identity : torch::autograd::Function<Identity> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, torch::Tensor x) { return x.clone(); }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext*,
                                               torch::autograd::tensor_list grads) {
    return grads;
  }
};

torch::Tensor identity(torch::Tensor x) { return Identity::apply(x); }

torch::Tensor warn_cos(torch::Tensor x) {
  std::ostringstream message;
  message << "Warning from " << x.toString();
  TORCH_WARN(message.str());
  return x.cos();
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("tanh_add", &tanh_add, "tanh(x) + tanh(y)");
  m.def("exp_add", &exp_add, "exp(x) + exp(y)");
  m.def("identity", &identity, "a C++ autograd Function");
  m.def("warn_cos_unhandled", &warn_cos, "TORCH_WARN without torch's error handling");
  pybind11::class_<Doubler>(m, "Doubler")
      .def(pybind11::init<int64_t, int64_t>())
      .def("forward", &Doubler::forward)
      .def("get", &Doubler::get);
  torch::python::bind_module<Net>(m, "Net")
      .def(pybind11::init<int64_t, int64_t>())
      .def("forward", &Net::forward)
      .def("set_bias", &Net::set_bias)
      .def("get_bias", &Net::get_bias)
      .def("add_new_parameter", &Net::add_new_parameter)
      .def("add_new_buffer", &Net::add_new_buffer)
      .def("add_new_submodule", &Net::add_new_submodule);
}
