// Self-tests of the CUDA emulator (cudasim.h): the first test is the worked example of testing a kernel; the others
// trigger each check on purpose. `test_cudasim --race` runs a kernel with a missing __syncthreads, for the TSan build
// to report as a data race (ctest expects the report).
#include "cudasim/cudasim.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <string>
#include <vector>

#include "cudasim/check.h"

namespace {

// ---- the worked example: a kernel, its launch configuration, a plain reference ----

// y[i] = a * x[i] + b for i < n, and the block's sum of y added to *total (block_sum in shared memory).
constexpr int kExampleThreads = 128;

__global__ void affine_sum(const float* __restrict__ x, float a, float b, float* __restrict__ y, float* total, int n) {
  __shared__ float part[kExampleThreads / 32];
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  float v = 0.f;
  if (i < n) {
    v = a * x[i] + b;
    y[i] = v;
  }
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float s = 0.f;
    for (int w = 0; w < kExampleThreads / 32; ++w) s += part[w];
    atomicAdd(total, s);
  }
}

// The launch configuration, shared by a real launcher and the test.
dim3 affine_sum_grid(int n) { return dim3(static_cast<unsigned>((n + kExampleThreads - 1) / kExampleThreads)); }

void test_worked_example(cudasim_test::Checker& t) {
  for (int n : {1, 31, 128, 300}) {
    std::vector<float> x(n), y(n, -1.f);
    for (int i = 0; i < n; ++i) x[i] = 0.25f * static_cast<float>(i % 7) - 0.5f;
    float total = 0.f;
    cudasim::launch(affine_sum, affine_sum_grid(n), dim3(kExampleThreads), 0, "affine_sum")(x.data(), 2.f, 1.f,
                                                                                            y.data(), &total, n);
    double ref_total = 0;
    bool ok = true;
    for (int i = 0; i < n; ++i) {
      const double r = 2.0 * x[i] + 1.0;  // the plain reference
      ok = ok && std::fabs(y[i] - r) <= 1e-6;
      ref_total += r;
    }
    t.expect(ok && std::fabs(total - ref_total) <= 1e-4 * (1 + std::fabs(ref_total)),
             "worked example n=" + std::to_string(n));
  }
}

// ---- shared memory, barriers ----

template <bool kBarrier>
__global__ void reverse_tile(const float* x, float* y) {
  CUDASIM_SHARED(float, tile, [64]);  // a template: CUDASIM_SHARED, not __shared__ (see cudasim.h)
  tile[threadIdx.x] = x[blockIdx.x * 64 + threadIdx.x];
  if (kBarrier) __syncthreads();
  y[blockIdx.x * 64 + threadIdx.x] = tile[63 - threadIdx.x];
}

void test_barrier_and_poison(cudasim_test::Checker& t) {
  std::vector<float> x(128), y(128);
  std::iota(x.begin(), x.end(), 0.f);
  for (cudasim::Order order : {cudasim::Order::kForward, cudasim::Order::kReverse, cudasim::Order::kRandom}) {
    cudasim::options().order = order;
    cudasim::launch(reverse_tile<true>, dim3(2), dim3(64))(x.data(), y.data());
    bool ok = true;
    for (int i = 0; i < 128; ++i) ok = ok && y[i] == x[(i / 64) * 64 + 63 - i % 64];
    t.expect(ok, "reverse_tile with __syncthreads is right in every order");
  }
  cudasim::options().order = cudasim::Order::kForward;
#ifndef CUDASIM_TSAN  // under TSan the missing barrier is a reported data race (the --race test)
  // without the barrier, the threads that run first read elements nobody wrote yet: NaN (the 0xFF poison)
  cudasim::launch(reverse_tile<false>, dim3(2), dim3(64))(x.data(), y.data());
  t.expect(std::isnan(y[0]), "a missing __syncthreads reads poisoned (NaN) shared memory");
  cudasim::options().order = cudasim::Order::kReverse;
  cudasim::launch(reverse_tile<false>, dim3(2), dim3(64))(x.data(), y.data());
  t.expect(std::isnan(y[127]), "... also in reverse thread order");
  cudasim::options().order = cudasim::Order::kForward;
#endif
}

__global__ void uninit_shared(float* y) {
  __shared__ float s[32];
  if (threadIdx.x % 2 == 0) s[threadIdx.x] = 1.f;
  __syncthreads();
  y[threadIdx.x] = s[threadIdx.x];
}

void test_uninitialised_shared(cudasim_test::Checker& t) {
  std::vector<float> y(32, 0.f);
  cudasim::launch(uninit_shared, dim3(1), dim3(32))(y.data());
  t.expect(y[0] == 1.f && std::isnan(y[1]), "an unwritten shared element reads as NaN");
}

__global__ void dynamic_shared_kernel(float* y, int n) {
  CUDASIM_EXTERN_SHARED(float, buf);
  if (threadIdx.x < static_cast<unsigned>(n) / 2) buf[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  y[threadIdx.x] = buf[threadIdx.x];
}

void test_dynamic_shared(cudasim_test::Checker& t) {
  std::vector<float> y(64, 0.f);
  cudasim::launch(dynamic_shared_kernel, dim3(1), dim3(64), 64 * sizeof(float))(y.data(), 64);
  t.expect(y[5] == 5.f && std::isnan(y[40]), "dynamic shared memory: written values kept, the rest NaN");
}

__global__ void early_exit_then_barrier(float* y) {
  if (threadIdx.x >= 16) return;
  __syncthreads();
  y[threadIdx.x] = 1.f;
}

__global__ void two_barriers(float* y) {
  if (threadIdx.x % 2)
    __syncthreads();
  else
    __syncthreads();
  y[threadIdx.x] = 1.f;
}

__global__ void warp_vs_block(float* y) {
  float v = 1.f;
  if (threadIdx.x < 32) v = __shfl_down_sync(0xffffffffu, v, 1);  // lane 0..31 of warp 0: fine
  if (threadIdx.x == 0) __syncthreads();                           // only thread 0: divergent
  y[threadIdx.x] = v;
}

void test_barrier_errors(cudasim_test::Checker& t) {
  std::vector<float> y(64);
  t.expect_error([&] { cudasim::launch(early_exit_then_barrier, dim3(1), dim3(32))(y.data()); },
                 "divergent __syncthreads", "a barrier some threads exited before");
  t.expect_error([&] { cudasim::launch(two_barriers, dim3(1), dim3(32))(y.data()); }, "divergent __syncthreads",
                 "two different __syncthreads");
  t.expect_error([&] { cudasim::launch(warp_vs_block, dim3(1), dim3(64))(y.data()); }, "divergent __syncthreads",
                 "a __syncthreads only one thread reaches");
  // the emulator recovers: the next launch runs
  std::vector<float> x(128, 1.f), z(128);
  cudasim::launch(reverse_tile<true>, dim3(2), dim3(64))(x.data(), z.data());
  t.expect(z[3] == 1.f, "a launch after a failed one runs");
}

// ---- warp operations ----

__global__ void warp_ops(const int* x, int* out) {
  const int lane = threadIdx.x & 31, i = threadIdx.x;
  const int v = x[i];
  int s = v;
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  out[6 * i + 0] = s;                                        // lane 0: warp sum
  out[6 * i + 1] = __shfl_sync(0xffffffffu, v, 3);           // lane 3's value
  out[6 * i + 2] = __shfl_xor_sync(0xffffffffu, v, 1);       // neighbour
  out[6 * i + 3] = __shfl_up_sync(0xffffffffu, v, 2);        // lane - 2 (own below 2)
  out[6 * i + 4] = static_cast<int>(__ballot_sync(0xffffffffu, v % 2));
  out[6 * i + 5] = __any_sync(0xffffffffu, v == 7) * 2 + __all_sync(0xffffffffu, v >= 0);
  if (lane < 16) out[6 * i + 0] += 0 * __shfl_down_sync(0x0000ffffu, v, 0);  // a half-warp group
  __syncwarp();
}

void test_warp_ops(cudasim_test::Checker& t) {
  const int n = 64;
  std::vector<int> x(n), out(6 * n);
  for (int i = 0; i < n; ++i) x[i] = (i * 7 + 3) % 11;
  cudasim::launch(warp_ops, dim3(1), dim3(n))(x.data(), out.data());
  bool ok = true;
  for (int w = 0; w < 2; ++w) {
    int sum = 0;
    unsigned ballot = 0;
    bool any7 = false, all = true;
    for (int l = 0; l < 32; ++l) {
      sum += x[w * 32 + l];
      ballot |= static_cast<unsigned>(x[w * 32 + l] % 2) << l;
      any7 = any7 || x[w * 32 + l] == 7;
      all = all && x[w * 32 + l] >= 0;
    }
    ok = ok && out[6 * (w * 32)] == sum;
    for (int l = 0; l < 32; ++l) {
      const int i = w * 32 + l;
      ok = ok && out[6 * i + 1] == x[w * 32 + 3];
      ok = ok && out[6 * i + 2] == x[w * 32 + (l ^ 1)];
      ok = ok && out[6 * i + 3] == x[l >= 2 ? i - 2 : i];
      ok = ok && static_cast<unsigned>(out[6 * i + 4]) == ballot;
      ok = ok && out[6 * i + 5] == int(any7) * 2 + int(all);
    }
  }
  t.expect(ok, "shfl / shfl_down / shfl_xor / shfl_up / ballot / any / all match their definitions");
}

__global__ void lane_not_in_mask(float* y) { y[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.f, 0); }
__global__ void mask_names_exited(float* y) {
  if (threadIdx.x == 5) return;
  y[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1);
}
__global__ void read_outside_mask(float* y) {
  if (threadIdx.x < 16) y[threadIdx.x] = __shfl_down_sync(0x0000ffffu, 1.f, 8);  // lane 8 reads lane 16
}
__global__ void masks_disagree(float* y) {
  if (threadIdx.x < 16) y[threadIdx.x] = __shfl_sync(threadIdx.x == 0 ? 0xffffffffu : 0x0000ffffu, 1.f, 0);
}
__global__ void partial_warp_full_mask(float* y) { y[threadIdx.x] = __shfl_down_sync(0xffffffffu, 1.f, 1); }

void test_warp_errors(cudasim_test::Checker& t) {
  std::vector<float> y(64);
  t.expect_error([&] { cudasim::launch(lane_not_in_mask, dim3(1), dim3(32))(y.data()); }, "does not include it",
                 "a lane missing from its own mask");
  t.expect_error([&] { cudasim::launch(mask_names_exited, dim3(1), dim3(32))(y.data()); }, "lane 5 has exited",
                 "a mask naming an exited lane");
  t.expect_error([&] { cudasim::launch(read_outside_mask, dim3(1), dim3(32))(y.data()); }, "outside the shuffle's mask",
                 "a shuffle reading a lane outside the mask");
  t.expect_error([&] { cudasim::launch(masks_disagree, dim3(1), dim3(32))(y.data()); }, "the lanes disagree",
                 "lanes that disagree on the mask");
  t.expect_error([&] { cudasim::launch(partial_warp_full_mask, dim3(1), dim3(48))(y.data()); }, "does not exist",
                 "a full mask in a partial warp (48 threads)");
  t.expect_error([&] { cudasim::launch(warp_vs_block, dim3(1), dim3(64))(y.data()); }, "cudasim",
                 "a warp operation against a barrier");
}

// ---- launch limits ----

__global__ void count_blocks(unsigned* hits, unsigned* order, unsigned* next) {
  if (threadIdx.x != 0) return;
  const unsigned b = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
  atomicAdd(hits + b, 1u);
  order[atomicAdd(next, 1u)] = b;
}

void test_launch_limits(cudasim_test::Checker& t) {
  auto bad = [&](dim3 g, dim3 b, size_t smem, const char* what, const char* msg) {
    t.expect_error([&] { cudasim::check_launch(g, b, smem, "k"); }, what, msg);
  };
  bad(dim3(1, 65536), dim3(32), 0, "grid.y = 65536 exceeds 65535", "grid.y = 65536");
  bad(dim3(1, 1, 65536), dim3(32), 0, "grid.z = 65536 exceeds 65535", "grid.z = 65536");
  bad(dim3(0), dim3(32), 0, "empty grid", "an empty grid");
  bad(dim3(1), dim3(1025), 0, "exceeds (1024, 1024, 64)", "block.x = 1025");
  bad(dim3(1), dim3(1, 1, 65), 0, "exceeds (1024, 1024, 64)", "block.z = 65");
  bad(dim3(1), dim3(64, 32), 0, "2048 threads per block exceed 1024", "64 x 32 threads");
  bad(dim3(1), dim3(32), 48 * 1024 + 1, "exceed 48 KiB", "48 KiB + 1 of dynamic shared memory");
  bool ok = true;
  try {
    cudasim::check_launch(dim3(2147483647u, 65535, 65535), dim3(1024), 48 * 1024, "k");
  } catch (const cudasim::Error&) {
    ok = false;
  }
  t.expect(ok, "the largest valid launch passes the check");
  std::vector<float> y(4);
  t.expect_error([&] { cudasim::launch(partial_warp_full_mask, dim3(1, 70000), dim3(32))(y.data()); },
                 "grid.y = 70000", "launch() itself checks the limits");
  // every block runs exactly once in every order; random order is a permutation that differs from forward
  for (cudasim::Order order : {cudasim::Order::kForward, cudasim::Order::kReverse, cudasim::Order::kRandom}) {
    cudasim::options().order = order;
    const unsigned nb = 3 * 5 * 2;
    std::vector<unsigned> hits(nb, 0), seq(nb, 0);
    unsigned next = 0;
    cudasim::launch(count_blocks, dim3(3, 5, 2), dim3(33))(hits.data(), seq.data(), &next);
    bool once = next == nb;
    for (unsigned h : hits) once = once && h == 1;
    bool forward = true;
    for (unsigned i = 0; i < nb; ++i) forward = forward && seq[i] == i;
    t.expect(once, "every block runs once");
    if (order == cudasim::Order::kForward) t.expect(forward, "forward order runs blocks in index order");
    if (order == cudasim::Order::kReverse) t.expect(seq[0] == nb - 1, "reverse order starts at the last block");
    if (order == cudasim::Order::kRandom) t.expect(!forward, "random order permutes the blocks");
  }
  cudasim::options().order = cudasim::Order::kForward;
}

// ---- atomics and intrinsics ----

__global__ void atomics(float* f, int* i, unsigned long long* u, int* mx) {
  atomicAdd(f, 0.5f);
  atomicAdd(i, 1);
  atomicAdd(u, 2ull);
  atomicMax(mx, static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x));
}

void test_atomics_and_math(cudasim_test::Checker& t) {
  float f = 0.f;
  int i = 0, mx = -1;
  unsigned long long u = 0;
  cudasim::launch(atomics, dim3(7), dim3(96))(&f, &i, &u, &mx);
  t.expect(f == 0.5f * 7 * 96 && i == 7 * 96 && u == 2ull * 7 * 96 && mx == 7 * 96 - 1, "atomicAdd / atomicMax");
  bool ok = true;
  for (float x = -20.f; x <= 20.f; x += 0.7f) ok = ok && std::fabs(__expf(x) - std::exp(x)) <= 2e-6f * std::exp(x);
  t.expect(ok, "__expf within 2e-6 relative of expf");
  t.expect(__fdividef(1.f, 1e38f) == 0.f && __fdividef(6.f, 3.f) == 2.f, "__fdividef: 0 for a divisor above 2^126");
  t.expect_error([] { __syncthreads(); }, "outside a kernel", "__syncthreads outside a kernel");
}

// --race: thread 0 writes shared memory that the others read with no barrier (TSan reports the race).
__global__ void racy(const float* x, float* y) {
  __shared__ float s;
  if (threadIdx.x == 0) s = x[0];
  y[threadIdx.x] = s;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc > 1 && std::strcmp(argv[1], "--race") == 0) {
    std::vector<float> x(1, 2.f), y(64);
    cudasim::launch(racy, dim3(1), dim3(64), 0, "racy")(x.data(), y.data());
    std::printf("racy kernel ran (y[0] = %g)\n", y[0]);
    return 0;
  }
  cudasim_test::Checker t("test_cudasim");
  test_worked_example(t);
  test_barrier_and_poison(t);
  test_uninitialised_shared(t);
  test_dynamic_shared(t);
  test_barrier_errors(t);
  test_warp_ops(t);
  test_warp_errors(t);
  test_launch_limits(t);
  test_atomics_and_math(t);
  return t.finish();
}
