// A minimal checker for the emulator tests: counts cases, prints failures, returns the exit status.
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

namespace cudasim_test {

class Checker {
 public:
  explicit Checker(const char* suite) : suite_(suite) {}

  bool expect(bool ok, const std::string& what) {
    ++cases_;
    if (!ok) {
      ++failures_;
      std::fprintf(stderr, "%s: FAILED: %s\n", suite_, what.c_str());
      if (std::getenv("CUDASIM_FAIL_FAST") != nullptr) std::exit(1);  // mutants.py: the first failure is enough
    }
    return ok;
  }

  // `fn` must throw an exception whose message contains `needle`.
  template <typename F>
  bool expect_error(F&& fn, const std::string& needle, const std::string& what) {
    std::string msg;
    try {
      fn();
    } catch (const std::exception& e) {
      msg = e.what();
    }
    const bool ok = !msg.empty() && msg.find(needle) != std::string::npos;
    if (!ok)
      std::fprintf(stderr, "%s: expected an error containing \"%s\", got \"%s\"\n", suite_, needle.c_str(),
                   msg.empty() ? "(no error)" : msg.c_str());
    return expect(ok, what);
  }

  int finish() const {
    std::printf("%s: %d of %d cases passed\n", suite_, cases_ - failures_, cases_);
    return failures_ ? 1 : 0;
  }

  int failures() const { return failures_; }

 private:
  const char* suite_;
  int cases_ = 0;
  int failures_ = 0;
};

}  // namespace cudasim_test

// ---- kernel tests: dtypes, tolerances, deterministic inputs ----
#if CUDASIM_HAVE_CUDA_TYPES
#define CUDASIM_TEST_HALF_TYPES 1
#else
#define CUDASIM_TEST_HALF_TYPES 0
#endif

namespace cudasim_test {

template <typename T>
struct DType;
template <>
struct DType<float> {
  static constexpr const char* name = "fp32";
  static constexpr double rel = 0;  // fp32 results: only the fp32 accumulation error (the tests' abs / rel term)
};
template <>
struct DType<double> {
  static constexpr const char* name = "fp64";  // the kernels compute in fp32 even then
  static constexpr double rel = 1.0 / (1 << 23);
};
#if CUDASIM_TEST_HALF_TYPES
template <>
struct DType<__half> {
  static constexpr const char* name = "fp16";
  static constexpr double rel = 1.0 / 2048;  // half an ulp: the one rounding of the fp32 result to fp16
};
template <>
struct DType<__nv_bfloat16> {
  static constexpr const char* name = "bf16";
  static constexpr double rel = 1.0 / 256;  // half an ulp of bf16
};
#endif

template <typename T>
T to(double v) {
  return static_cast<T>(static_cast<float>(v));
}
template <typename T>
double from(T v) {
  return static_cast<double>(static_cast<float>(v));
}

// A result of dtype T against a double reference: the rounding to T plus `tol` (fp32 accumulation) relative and
// absolute.
template <typename T>
bool close_to(double got, double ref, double tol = 1e-5) {
  return std::fabs(got - ref) <= (DType<T>::rel * 1.01 + tol) * std::fabs(ref) + tol;
}

// Deterministic input values that are exact in fp16 and bf16 (multiples of 1/32 in [-1, 1)), so every dtype sees the
// same numbers and only the output rounding differs.
inline double input_value(long i, long salt = 0) {
  return static_cast<double>(((i * 37 + salt * 101 + 11) % 64) - 32) / 32.0;
}

}  // namespace cudasim_test
