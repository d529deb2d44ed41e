// cudasim: a CPU emulator of CUDA's execution model, so the project's CUDA kernels run in every test run (no GPU),
// under AddressSanitizer + UBSan or ThreadSanitizer. Header-only, host C++20 (g++ / clang++).
//
// How to test a kernel in the emulator
// ------------------------------------
// 1. Keep the kernel ATen-free in a `*_kernels.cuh` (see csrc/cuda/dwconv_bn_act_kernels.cuh) and put its launch
//    configuration in a host function there that returns a cudasim-independent `dim3` grid / block (the real
//    launcher in the `.cu` and the test both call it, so the test covers the launcher's grid arithmetic too).
//    Launch with DNA_LAUNCH(grid, block, smem, stream, kernel<T, ...>)(args...) (csrc/cuda/cuda_launch.h): `<<<>>>`
//    under nvcc, cudasim::launch under the emulator. Dynamic shared memory: DNA_EXTERN_SHARED(float, smem) instead
//    of `extern __shared__ float smem[];`.
// 2. In a test .cpp under csrc/tests/cudasim/: include this header FIRST, then the kernel header, then write a plain
//    C++ reference and compare:
//
//        #include "cudasim/cudasim.h"
//        #include "my_kernels.cuh"
//        std::vector<float> x = ..., y(n, -1.f);
//        const dim3 grid = my_grid(n), block = my_block();          // the launch-configuration functions
//        cudasim::launch(my_kernel<float>, grid, block)(x.data(), y.data(), n);
//        for (...) check(y[i], reference(x[i]));                     // plain loops, fp32 / fp64
//
//    Host vectors are "device memory": the emulator runs the kernel on the calling thread, one block after another,
//    the threads of a block as fibers that switch at __syncthreads / __syncwarp / warp shuffles and votes. A worked
//    example is the first test of csrc/tests/cudasim/test_cudasim.cpp; kernel suites are test_*_emu.cpp beside it.
// 3. Add the file to CMakeLists.txt's CUDASIM_TESTS list; `make test-cuda` builds it with ASan + UBSan and runs it,
//    also with CUDASIM_ORDER=random (blocks and threads in random order); `make test-cuda-tsan` under TSan.
//
// What it checks (each error throws cudasim::Error naming the kernel, block, thread and source line):
// - launch limits: 1 <= block threads <= 1024 (x, y <= 1024, z <= 64), grid.x <= 2^31 - 1, grid.y / grid.z <= 65535,
//   dynamic shared memory <= 48 KiB (no opt-in), an empty grid or block;
// - __syncthreads that not every thread of the block reaches (one exited, or waits at another __syncthreads);
// - warp shuffles / votes / __syncwarp: the calling lane missing from its mask, a mask naming an exited or
//   non-existent lane, lanes that disagree on the mask, a shuffle reading a lane outside the mask; deadlocks;
// - shared memory (static and dynamic) is filled with 0xFF bytes (NaN as float, -1 as int) before every block, so
//   a read of an element the block never wrote shows in the result;
// - CUDASIM_ORDER=reverse|random (CUDASIM_SEED) permutes the block order and the order threads run between barriers,
//   so a result that depends on it (a race between blocks or a missing barrier) changes;
// - under TSan, fibers synchronise only at barriers and warp operations: a missing __syncthreads is a data race.
// Not emulated: lockstep warps (warp-synchronous code without *_sync is not run in lockstep), the weak memory model,
// races between blocks other than through order permutation, tensor cores, TMA / cp.async, clusters, inline PTX,
// textures, streams (every launch is synchronous), __launch_bounds__ and register limits. `__CUDA_ARCH__` is not
// defined: code behind it (e.g. __expf in math.h) runs its host branch. See docs/emulator.md.
#pragma once

#define DNA_CUDASIM 1

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---- CUDA's keywords as host C++ (defined before CUDA's headers, which keep these definitions) ----
#ifndef __host__
#define __host__
#endif
#ifndef __device__
#define __device__
#endif
#ifndef __global__
#define __global__
#endif
// __shared__ variables are function statics in one linker section, poisoned with 0xFF before every block. GCC drops
// the section attribute of a static in a function template: there, declare shared memory with CUDASIM_SHARED
// (DNA_SHARED in the kernels), which poisons it when the block's first thread passes the declaration. Dynamic
// shared memory: CUDASIM_EXTERN_SHARED (DNA_EXTERN_SHARED; `extern static` is not C++).
#undef __shared__
#define __shared__ __attribute__((section("cudasim_shared"), aligned(16))) static
#ifndef __constant__
#define __constant__ static
#endif

#if __has_include(<vector_types.h>) && __has_include(<cuda_fp16.h>)
#include <vector_types.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define CUDASIM_HAVE_CUDA_TYPES 1
#else
#define CUDASIM_HAVE_CUDA_TYPES 0
struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};
#endif

typedef struct CUstream_st* cudaStream_t;  // as CUDA's driver_types.h declares it; the emulator ignores streams

#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#undef __launch_bounds__
#define __launch_bounds__(...)

#if defined(__SANITIZE_ADDRESS__)
#define CUDASIM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define CUDASIM_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define CUDASIM_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define CUDASIM_TSAN 1
#endif
#endif

#ifdef CUDASIM_ASAN
extern "C" {
void __sanitizer_start_switch_fiber(void** fake_stack_save, const void* bottom, size_t size);
void __sanitizer_finish_switch_fiber(void* fake_stack_save, const void** bottom_old, size_t* size_old);
void __asan_unpoison_memory_region(void const volatile* addr, size_t size);
}
#endif
#ifdef CUDASIM_TSAN
extern "C" {
void* __tsan_get_current_fiber(void);
void* __tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void* fiber);
void __tsan_switch_to_fiber(void* fiber, unsigned flags);
void __tsan_acquire(void* addr);
void __tsan_release(void* addr);
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
}
#endif

extern "C" __attribute__((weak, visibility("hidden"))) unsigned char __start_cudasim_shared[];
extern "C" __attribute__((weak, visibility("hidden"))) unsigned char __stop_cudasim_shared[];

// The built-in variables. One launch runs at a time (a mutex serialises launches from several OS threads).
inline uint3 threadIdx{0, 0, 0};
inline uint3 blockIdx{0, 0, 0};
inline dim3 blockDim{1, 1, 1};
inline dim3 gridDim{1, 1, 1};
constexpr int warpSize = 32;

namespace cudasim {

// Every failed check throws this; what() names the kernel, block, thread and source line.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Order { kForward, kReverse, kRandom };

struct Options {
  Order order = Order::kForward;  // blocks, and threads between barriers
  unsigned seed = 1;
  size_t stack_bytes = size_t(256) << 10;  // per fiber (a kernel's locals; ASan frames are larger)
};

inline Options options_from_env() {
  Options o;
  if (const char* s = std::getenv("CUDASIM_ORDER")) {
    const std::string v(s);
    if (v == "reverse") o.order = Order::kReverse;
    else if (v == "random") o.order = Order::kRandom;
    else if (v != "forward" && !v.empty())
      throw Error("cudasim: CUDASIM_ORDER=" + v + " is not one of forward, reverse, random");
  }
  if (const char* s = std::getenv("CUDASIM_SEED")) o.seed = static_cast<unsigned>(std::strtoul(s, nullptr, 10));
  return o;
}

// The options of the next launches (initialised from CUDASIM_ORDER / CUDASIM_SEED); tests may change them.
inline Options& options() {
  static Options o = options_from_env();
  return o;
}

struct Stats {
  uint64_t launches = 0, blocks = 0, threads = 0, switches = 0;
};
inline Stats& stats() {
  static Stats s;
  return s;
}

constexpr size_t kMaxDynamicShared = 48 * 1024;

// Throws cudasim::Error when a launch of `grid` x `block` with `dyn_smem` bytes of dynamic shared memory would fail
// on a GPU with "invalid configuration argument" (limits of compute capability 7.0 - 9.0 without opt-in).
inline void check_launch(dim3 grid, dim3 block, size_t dyn_smem = 0, const char* name = "kernel") {
  auto bad = [&](const std::string& why) {
    throw Error(std::string("cudasim: invalid launch configuration of ") + name + ": " + why);
  };
  auto s = [](uint64_t v) { return std::to_string(v); };
  if (grid.x == 0 || grid.y == 0 || grid.z == 0)
    bad("empty grid (" + s(grid.x) + ", " + s(grid.y) + ", " + s(grid.z) + "); return early on empty inputs");
  if (block.x == 0 || block.y == 0 || block.z == 0)
    bad("empty block (" + s(block.x) + ", " + s(block.y) + ", " + s(block.z) + ")");
  if (grid.x > 2147483647u) bad("grid.x = " + s(grid.x) + " exceeds 2^31 - 1");
  if (grid.y > 65535u) bad("grid.y = " + s(grid.y) + " exceeds 65535 (fold the excess into a loop or grid.z)");
  if (grid.z > 65535u) bad("grid.z = " + s(grid.z) + " exceeds 65535 (fold the excess into a loop)");
  if (block.x > 1024u || block.y > 1024u || block.z > 64u)
    bad("block (" + s(block.x) + ", " + s(block.y) + ", " + s(block.z) + ") exceeds (1024, 1024, 64)");
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads > 1024) bad(s(threads) + " threads per block exceed 1024");
  if (dyn_smem > kMaxDynamicShared)
    bad(s(dyn_smem) + " bytes of dynamic shared memory exceed 48 KiB (49152) without cudaFuncSetAttribute opt-in");
}

namespace detail {

enum class St : uint8_t { kReady, kBarrier, kWarp, kDone };
enum class WarpOp : uint8_t { kSync, kShfl, kVote };

inline const char* op_name(WarpOp op) {
  return op == WarpOp::kSync ? "__syncwarp" : op == WarpOp::kShfl ? "a warp shuffle" : "a warp vote";
}

struct Fiber {
  ucontext_t ctx;
  unsigned char* stack = nullptr;
  St st = St::kDone;
  uint3 tid{0, 0, 0};
  const char* file = "";
  int line = 0;
  // the pending warp operation
  WarpOp op = WarpOp::kSync;
  unsigned mask = 0;
  uint64_t value = 0;
  int src = 0;
  bool pred = false;
  uint64_t result = 0;
  unsigned vote = 0;
  unsigned warp_count = 0;    // warp operations so far (TSan token parity)
  unsigned group_parity = 0;  // parities of the tokens of the lanes released together with this one
  uint64_t bar_episode = 0;   // the barrier episode this thread waits for
  void* fake_stack = nullptr;  // ASan
  void* tsan = nullptr;        // TSan fiber
};

struct Runtime {
  std::vector<Fiber*> pool;
  ucontext_t sched{};
  void* sched_fake = nullptr;
  const void* sched_bottom = nullptr;
  size_t sched_size = 0;
  void* sched_tsan = nullptr;
  Fiber* cur = nullptr;
  int nthreads = 0;
  std::string error;
  std::string kernel;
  void (*body)(void*) = nullptr;
  void* body_arg = nullptr;
  std::vector<unsigned char> dyn_smem;
  size_t dyn_bytes = 0;
  size_t stack_bytes = 0;
  // TSan happens-before edges (addresses only): scheduler -> fibers at block start, fibers -> scheduler at every
  // switch back, barrier arrivals -> departures (double-buffered by episode), each lane's warp-operation arrival ->
  // the departures of its group (double-buffered per lane).
  char start_token = 0, exit_token = 0, bar_token[2] = {};
  char lane_token[1024][2] = {};
  uint64_t bar_episode = 0;
  uint64_t block_serial = 0;                            // CUDASIM_SHARED: poisoned once per block
  std::vector<std::pair<const void*, uint64_t>> shared_seen;
  std::mutex launch_mutex;
};

inline Runtime& rt() {
  static Runtime& r = *new Runtime();  // never destroyed: fibers may outlive static destruction
  return r;
}

struct IgnoreScope {  // TSan: the emulator's own bookkeeping is not kernel memory traffic
#ifdef CUDASIM_TSAN
  IgnoreScope() { __tsan_ignore_thread_begin(); }
  ~IgnoreScope() { __tsan_ignore_thread_end(); }
#else
  IgnoreScope() {}
#endif
};

inline void tsan_release(void* p) {
#ifdef CUDASIM_TSAN
  __tsan_release(p);
#else
  (void)p;
#endif
}
inline void tsan_acquire(void* p) {
#ifdef CUDASIM_TSAN
  __tsan_acquire(p);
#else
  (void)p;
#endif
}

inline std::string where(const Fiber& f) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "block (%u, %u, %u), thread (%u, %u, %u)", blockIdx.x, blockIdx.y, blockIdx.z, f.tid.x,
                f.tid.y, f.tid.z);
  return buf;
}

inline std::string site(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

// Fiber -> scheduler. `final`: the fiber never runs again (its ASan fake stack is released).
inline void yield_to_scheduler(Fiber& f, bool final) {
  (void)final;
  Runtime& r = rt();
  tsan_release(&r.exit_token);
#ifdef CUDASIM_ASAN
  __sanitizer_start_switch_fiber(final ? nullptr : &f.fake_stack, r.sched_bottom, r.sched_size);
#endif
#ifdef CUDASIM_TSAN
  __tsan_switch_to_fiber(r.sched_tsan, 1);
#endif
  swapcontext(&f.ctx, &r.sched);
#ifdef CUDASIM_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &r.sched_bottom, &r.sched_size);
#endif
}

// Scheduler -> fiber f, until it blocks or finishes.
inline void resume(Fiber& f) {
  Runtime& r = rt();
  r.cur = &f;
  threadIdx = f.tid;
  ++stats().switches;
#ifdef CUDASIM_ASAN
  __sanitizer_start_switch_fiber(&r.sched_fake, f.stack, r.stack_bytes);
#endif
#ifdef CUDASIM_TSAN
  __tsan_switch_to_fiber(f.tsan, 1);
#endif
  swapcontext(&r.sched, &f.ctx);
#ifdef CUDASIM_ASAN
  __sanitizer_finish_switch_fiber(r.sched_fake, nullptr, nullptr);
#endif
  r.cur = nullptr;
}

// A failed check inside a kernel: the message is recorded (set_error) in a scope that ends before the fiber is
// abandoned (abandon), so no temporary is left on its stack; the scheduler throws.
inline void set_error(Fiber& f, const std::string& msg) {
  Runtime& r = rt();
  r.error = "cudasim: " + r.kernel + ", " + where(f) + ": " + msg;
}
[[noreturn]] inline void abandon(Fiber& f) {
  yield_to_scheduler(f, true);
  std::abort();  // never resumed
}

__attribute__((noinline)) inline void run_body() {
  Runtime& r = rt();
  try {
    r.body(r.body_arg);
  } catch (const std::exception& e) {
    IgnoreScope ig;
    if (r.error.empty()) r.error = "cudasim: " + r.kernel + ", " + where(*r.cur) + ": exception: " + e.what();
  }
}

inline void fiber_entry() {
  Runtime& r = rt();
#ifdef CUDASIM_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.sched_bottom, &r.sched_size);
#endif
  tsan_acquire(&r.start_token);
  run_body();
  Fiber& f = *r.cur;
  {
    IgnoreScope ig;
    f.st = St::kDone;
  }
  yield_to_scheduler(f, true);
  std::abort();  // a finished fiber is never resumed
}

inline Fiber& current(const char* what) {
  Fiber* f = rt().cur;
  if (f == nullptr) throw Error(std::string("cudasim: ") + what + " called outside a kernel");
  return *f;
}

inline int linear_tid(uint3 t) { return int((t.z * blockDim.y + t.y) * blockDim.x + t.x); }

// Block-wide barrier.
inline void block_barrier(const char* file, int line) {
  Fiber& f = current("__syncthreads");
  Runtime& r = rt();
  {
    IgnoreScope ig;
    f.st = St::kBarrier;
    f.file = file;
    f.line = line;
    f.bar_episode = r.bar_episode;
  }
  tsan_release(&r.bar_token[f.bar_episode & 1]);
  yield_to_scheduler(f, false);
  tsan_acquire(&r.bar_token[f.bar_episode & 1]);
}

// A warp operation of the calling lane: posts its value, waits for every lane of `mask`, returns the result.
inline Fiber& warp_op(WarpOp op, unsigned mask, uint64_t value, int src, bool pred, const char* file, int line) {
  Fiber& f = current(op_name(op));
  Runtime& r = rt();
  const int i = linear_tid(f.tid), lane = i & 31;
  if (!(mask >> lane & 1u)) {
    {
      IgnoreScope ig;
      char buf[128];
      std::snprintf(buf, sizeof buf, "lane %d calls %s with mask 0x%08x that does not include it", lane, op_name(op),
                    mask);
      set_error(f, std::string(buf) + " (" + site(file, line) + ")");
    }
    abandon(f);
  }
  const unsigned parity = f.warp_count & 1;
  {
    IgnoreScope ig;
    ++f.warp_count;
    f.st = St::kWarp;
    f.op = op;
    f.mask = mask;
    f.value = value;
    f.src = src;
    f.pred = pred;
    f.file = file;
    f.line = line;
  }
  tsan_release(&r.lane_token[i][parity]);
  yield_to_scheduler(f, false);
#ifdef CUDASIM_TSAN
  for (int k = 0; k < 32; ++k)
    if (mask >> k & 1u) tsan_acquire(&r.lane_token[(i & ~31) + k][f.group_parity >> k & 1u]);
#endif
  return f;
}

inline std::string hex(unsigned m) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", m);
  return buf;
}

// Releases the complete warp groups; returns whether any was; throws on a malformed operation.
inline bool release_warps(std::vector<Fiber*>& fs) {
  const int n = static_cast<int>(fs.size());
  bool any = false;
  for (int base = 0; base < n; base += 32) {
    for (int l = 0; l < 32 && base + l < n; ++l) {
      Fiber& f = *fs[base + l];
      if (f.st != St::kWarp) continue;
      bool complete = true;
      for (int k = 0; k < 32; ++k) {
        if (!(f.mask >> k & 1u)) continue;
        if (base + k >= n || fs[base + k]->st != St::kWarp || fs[base + k]->mask != f.mask ||
            fs[base + k]->op != f.op) {
          complete = false;
          break;
        }
      }
      if (!complete) continue;
      unsigned vote = 0, parity = 0;
      for (int k = 0; k < 32; ++k)
        if (f.mask >> k & 1u) {
          if (fs[base + k]->pred) vote |= 1u << k;
          if ((fs[base + k]->warp_count - 1) & 1u) parity |= 1u << k;  // the token its arrival released into
        }
      for (int k = 0; k < 32; ++k) {
        if (!(f.mask >> k & 1u)) continue;
        Fiber& g = *fs[base + k];
        if (g.op == WarpOp::kShfl) {
          if (g.src < 0 || g.src > 31 || !(f.mask >> g.src & 1u)) {
            throw Error("cudasim: " + rt().kernel + ", " + where(g) + ": lane " + std::to_string(k) +
                        " reads lane " + std::to_string(g.src) + " outside the shuffle's mask " + hex(f.mask) +
                        " (" + site(g.file, g.line) + ")");
          }
          g.result = fs[base + g.src]->value;
        }
        g.vote = vote;
        g.group_parity = parity;
        g.st = St::kReady;
      }
      any = true;
    }
  }
  return any;
}

// Why nothing can run: a divergent barrier, an incomplete warp operation or a deadlock.
[[noreturn]] inline void diagnose(std::vector<Fiber*>& fs) {
  const int n = static_cast<int>(fs.size());
  const std::string k = "cudasim: " + rt().kernel + ", block (" + std::to_string(blockIdx.x) + ", " +
                        std::to_string(blockIdx.y) + ", " + std::to_string(blockIdx.z) + "): ";
  auto tid = [&](int i) {
    const uint3 t = fs[i]->tid;
    return "thread (" + std::to_string(t.x) + ", " + std::to_string(t.y) + ", " + std::to_string(t.z) + ")";
  };
  for (int i = 0; i < n; ++i) {  // a warp operation that cannot complete
    Fiber& f = *fs[i];
    if (f.st != St::kWarp) continue;
    const int base = i & ~31;
    for (int l = 0; l < 32; ++l) {
      if (!(f.mask >> l & 1u)) continue;
      const std::string at = tid(i) + " in " + std::string(op_name(f.op)) + " with mask " + hex(f.mask) + " (" +
                             site(f.file, f.line) + "): ";
      if (base + l >= n)
        throw Error(k + at + "lane " + std::to_string(l) + " does not exist (" + std::to_string(n) +
                    " threads in the block)");
      Fiber& g = *fs[base + l];
      if (g.st == St::kDone) throw Error(k + at + "lane " + std::to_string(l) + " has exited");
      if (g.st == St::kBarrier)
        throw Error(k + at + "lane " + std::to_string(l) + " waits at __syncthreads (" + site(g.file, g.line) +
                    "): deadlock");
      if (g.mask != f.mask || g.op != f.op)
        throw Error(k + at + "lane " + std::to_string(l) + " waits in " + op_name(g.op) + " with mask " +
                    hex(g.mask) + " (" + site(g.file, g.line) + "): the lanes disagree");
    }
  }
  int first = -1;
  for (int i = 0; i < n; ++i)
    if (fs[i]->st == St::kBarrier) {
      first = i;
      break;
    }
  for (int i = 0; i < n; ++i) {
    if (fs[i]->st == St::kDone)
      throw Error(k + "divergent __syncthreads: " + tid(first) + " waits at " +
                  site(fs[first]->file, fs[first]->line) + " but " + tid(i) + " has exited");
    if (fs[i]->file != fs[first]->file || fs[i]->line != fs[first]->line)
      throw Error(k + "divergent __syncthreads: " + tid(first) + " waits at " +
                  site(fs[first]->file, fs[first]->line) + ", " + tid(i) + " at " + site(fs[i]->file, fs[i]->line));
  }
  throw Error(k + "deadlock");
}

inline unsigned char* new_stack(size_t bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  void* p = mmap(nullptr, bytes + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) throw Error("cudasim: cannot map a fiber stack");
  mprotect(p, page, PROT_NONE);  // guard page: a stack overflow faults instead of corrupting a neighbour
  return static_cast<unsigned char*>(p) + page;
}

inline void poison_shared() {
  if (__start_cudasim_shared != nullptr && __stop_cudasim_shared != nullptr)
    std::memset(__start_cudasim_shared, 0xFF, static_cast<size_t>(__stop_cudasim_shared - __start_cudasim_shared));
  Runtime& r = rt();
  if (r.dyn_bytes) std::memset(r.dyn_smem.data(), 0xFF, r.dyn_bytes);
}

// CUDASIM_SHARED: the first thread of a block to pass the declaration fills the variable with 0xFF.
inline void touch_shared(const void* p, size_t bytes) {
  IgnoreScope ig;
  Runtime& r = rt();
  for (auto& e : r.shared_seen)
    if (e.first == p) {
      if (e.second != r.block_serial) {
        std::memset(const_cast<void*>(p), 0xFF, bytes);
        e.second = r.block_serial;
      }
      return;
    }
  std::memset(const_cast<void*>(p), 0xFF, bytes);
  r.shared_seen.emplace_back(p, r.block_serial);
}

inline void run_block(std::vector<Fiber*>& fs, std::vector<int>& order, std::mt19937& rng) {
  Runtime& r = rt();
  ++r.block_serial;
  poison_shared();
  const int n = static_cast<int>(fs.size());
  for (int i = 0; i < n; ++i) {
    Fiber& f = *fs[i];
    const unsigned u = static_cast<unsigned>(i);
    f.tid = uint3{u % blockDim.x, u / blockDim.x % blockDim.y, u / (blockDim.x * blockDim.y)};
    f.st = St::kReady;
    f.fake_stack = nullptr;
    f.ctx.uc_stack.ss_sp = f.stack;
    f.ctx.uc_stack.ss_size = r.stack_bytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry, 0);
  }
  tsan_release(&r.start_token);
  stats().threads += static_cast<uint64_t>(n);
  for (;;) {
    if (options().order == Order::kRandom) std::shuffle(order.begin(), order.end(), rng);
    bool ran = false;
    for (int i : order) {
      if (fs[i]->st != St::kReady) continue;
      resume(*fs[i]);
      ran = true;
      if (!r.error.empty()) throw Error(r.error);
    }
    if (ran) continue;
    int done = 0, barrier = 0;
    for (Fiber* f : fs) {
      done += f->st == St::kDone;
      barrier += f->st == St::kBarrier;
    }
    if (done == n) break;
    if (release_warps(fs)) continue;
    if (barrier == n) {
      bool same = true;
      for (Fiber* f : fs) same = same && f->file == fs[0]->file && f->line == fs[0]->line;
      if (same) {
        for (Fiber* f : fs) f->st = St::kReady;
        ++r.bar_episode;
        continue;
      }
    }
    diagnose(fs);
  }
  tsan_acquire(&r.exit_token);  // the next block (and the host after the launch) sees this block's writes
}

// After a failed block: the fibers left mid-kernel are abandoned; their stacks are reused later.
inline void reset_after_error(int nthreads) {
  Runtime& r = rt();
  for (int i = 0; i < nthreads; ++i) {
    Fiber& f = *r.pool[i];
#ifdef CUDASIM_ASAN
    __asan_unpoison_memory_region(f.stack, r.stack_bytes);
#endif
#ifdef CUDASIM_TSAN
    if (f.st != St::kDone) {
      __tsan_destroy_fiber(f.tsan);
      f.tsan = __tsan_create_fiber(0);
    }
#endif
    f.st = St::kDone;
  }
}

inline void run(dim3 grid, dim3 block, size_t dyn_smem, const char* name, void (*body)(void*), void* arg) {
  check_launch(grid, block, dyn_smem, name);
  Runtime& r = rt();
  std::lock_guard<std::mutex> lock(r.launch_mutex);
  if (r.cur != nullptr) throw Error(std::string("cudasim: ") + name + " launched from inside a kernel");
  IgnoreScope ig;
  const Options opt = options();
  if (r.stack_bytes != opt.stack_bytes) {  // a new stack size: new stacks
    for (Fiber* f : r.pool) f->stack = nullptr;  // the old mappings are leaked (rare; tests only)
    r.stack_bytes = opt.stack_bytes;
  }
  const int n = static_cast<int>(block.x * block.y * block.z);
  while (static_cast<int>(r.pool.size()) < n) r.pool.push_back(new Fiber());
  for (int i = 0; i < n; ++i) {
    Fiber& f = *r.pool[i];
    if (f.stack == nullptr) {
      f.stack = new_stack(r.stack_bytes);
      getcontext(&f.ctx);
    }
#ifdef CUDASIM_TSAN
    if (f.tsan == nullptr) f.tsan = __tsan_create_fiber(0);
#endif
  }
#ifdef CUDASIM_TSAN
  r.sched_tsan = __tsan_get_current_fiber();
#endif
  std::vector<Fiber*> fs(r.pool.begin(), r.pool.begin() + n);
  r.kernel = name;
  r.error.clear();
  r.body = body;
  r.body_arg = arg;
  r.dyn_bytes = dyn_smem;
  if (r.dyn_smem.size() < dyn_smem) r.dyn_smem.resize(dyn_smem);
  blockDim = block;
  gridDim = grid;
  ++stats().launches;
  const uint64_t nblocks = uint64_t(grid.x) * grid.y * grid.z;
  std::vector<int> order(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) order[i] = opt.order == Order::kReverse ? n - 1 - i : i;
  std::mt19937 rng(opt.seed);
  std::mt19937_64 brng(opt.seed ^ 0x9e3779b97f4a7c15ull);
  // block order: forward, reverse, or a random permutation drawn as a random affine map b -> (a * b + c) mod nblocks
  uint64_t step = 1, offset = 0;
  if (opt.order == Order::kRandom && nblocks > 1) {
    auto gcd = [](uint64_t a, uint64_t b) {
      while (b) std::swap(a %= b, b);
      return a;
    };
    do step = brng() % nblocks; while (step == 0 || gcd(step, nblocks) != 1);
    offset = brng() % nblocks;
  }
  for (uint64_t b = 0; b < nblocks; ++b) {
    uint64_t id = b;
    if (opt.order == Order::kReverse) id = nblocks - 1 - b;
    if (opt.order == Order::kRandom)
      id = static_cast<uint64_t>((static_cast<unsigned __int128>(step) * b + offset) % nblocks);
    blockIdx = uint3{static_cast<unsigned>(id % grid.x), static_cast<unsigned>(id / grid.x % grid.y),
                     static_cast<unsigned>(id / (uint64_t(grid.x) * grid.y))};
    try {
      run_block(fs, order, rng);
    } catch (...) {
      tsan_acquire(&r.exit_token);
      reset_after_error(n);
      r.error.clear();
      throw;
    }
    ++stats().blocks;
  }
}

template <typename T>
uint64_t to_bits(T v) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "warp shuffles move values of at most 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof(T));
  return v;
}

template <typename T>
T shfl(unsigned mask, T v, int src, const char* file, int line) {
  Fiber& f = warp_op(WarpOp::kShfl, mask, to_bits(v), src, false, file, line);
  IgnoreScope ig;
  return from_bits<T>(f.result);
}

inline int lane_id() { return linear_tid(current("a warp operation").tid) & 31; }

// CAS loop on the bit pattern (what atomics on types without a native atomic do; TSan sees an atomic access).
template <typename T, typename F>
T atomic_update(T* p, F op) {
  static_assert(sizeof(T) == 4 || sizeof(T) == 8, "cudasim atomics: 4- or 8-byte types");
  using U = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  U* u = reinterpret_cast<U*>(p);
  U old = __atomic_load_n(u, __ATOMIC_RELAXED);
  for (;;) {
    T o;
    std::memcpy(&o, &old, sizeof(T));
    const T nv = op(o);
    U nb;
    std::memcpy(&nb, &nv, sizeof(T));
    if (__atomic_compare_exchange_n(u, &old, nb, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return o;
  }
}

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;
  const char* name;
  template <typename... A>
  void operator()(A&&... args) const {
    static_assert(sizeof...(A) == sizeof...(P), "cudasim::launch: wrong number of kernel arguments");
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);  // converted as a real launch converts them
    auto call = [&] { std::apply(kernel, params); };
    run(grid, block, smem, name, [](void* c) { (*static_cast<decltype(call)*>(c))(); }, &call);
  }
};

}  // namespace detail

// cudasim::launch(kernel, grid, block[, dynamic shared bytes][, name])(args...): runs the kernel synchronously.
template <typename... P>
detail::Launch<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem = 0,
                            const char* name = "kernel") {
  return detail::Launch<P...>{kernel, grid, block, smem, name};
}

// The dynamic shared memory of the running block (DNA_EXTERN_SHARED), poisoned like the static one.
template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(detail::rt().dyn_smem.data());
}

}  // namespace cudasim

// ---- device functions ----
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  cudasim::detail::block_barrier(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  cudasim::detail::warp_op(cudasim::detail::WarpOp::kSync, mask, 0, 0, false, file, line);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  const int lane = cudasim::detail::lane_id();
  return cudasim::detail::shfl(mask, v, (lane & ~(width - 1)) + (src & (width - 1)), file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                   int line = __builtin_LINE()) {
  const int lane = cudasim::detail::lane_id();
  const int src = (lane & (width - 1)) + static_cast<int>(delta) < width ? lane + static_cast<int>(delta) : lane;
  return cudasim::detail::shfl(mask, v, src, file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                 int line = __builtin_LINE()) {
  const int lane = cudasim::detail::lane_id();
  const int src = (lane & (width - 1)) >= static_cast<int>(delta) ? lane - static_cast<int>(delta) : lane;
  return cudasim::detail::shfl(mask, v, src, file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, const char* file = __builtin_FILE(),
                  int line = __builtin_LINE()) {
  const int lane = cudasim::detail::lane_id();
  const int src = lane ^ lane_mask;
  return cudasim::detail::shfl(mask, v, (src & ~(width - 1)) == (lane & ~(width - 1)) ? src : lane, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return cudasim::detail::warp_op(cudasim::detail::WarpOp::kVote, mask, 0, 0, pred != 0, file, line).vote;
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return __ballot_sync(mask, pred, file, line) != 0;
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return __ballot_sync(mask, pred, file, line) == mask;
}

template <typename T>
T atomicAdd(T* p, T v) {
  return cudasim::detail::atomic_update(p, [v](T o) { return static_cast<T>(o + v); });
}
template <typename T>
T atomicMax(T* p, T v) {
  return cudasim::detail::atomic_update(p, [v](T o) { return o < v ? v : o; });
}
template <typename T>
T atomicMin(T* p, T v) {
  return cudasim::detail::atomic_update(p, [v](T o) { return v < o ? v : o; });
}
template <typename T>
T atomicExch(T* p, T v) {
  return cudasim::detail::atomic_update(p, [v](T) { return v; });
}
template <typename T>
T atomicCAS(T* p, T cmp, T v) {
  return cudasim::detail::atomic_update(p, [cmp, v](T o) { return o == cmp ? v : o; });
}

template <typename T>
T __ldg(const T* p) {
  return *p;
}
// The fast-math intrinsics (glibc declares some of these names itself: macros onto cudasim's versions).
namespace cudasim {
inline float expf_approx(float x) { return exp2f(x * 1.4426950408889634f); }  // ex2.approx of x * log2(e)
inline float logf_approx(float x) { return log2f(x) * 0.6931471805599453f; }
inline float fdividef(float a, float b) {  // 0 for 2^126 < |b| < 2^128, like the hardware approximation
  if (std::fabs(b) > 8.507059e37f && std::isfinite(b)) return 0.f;
  return a / b;
}
}  // namespace cudasim
#define __expf ::cudasim::expf_approx
#define __logf ::cudasim::logf_approx
#define __fdividef ::cudasim::fdividef
inline float __frcp_rn(float x) { return 1.f / x; }
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }

// CUDA's host+device min / max overloads for the built-in types (the kernels call them unqualified).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// `extern __shared__ T name[];` of a kernel, under the emulator (the launch's dynamic shared memory).
#define CUDASIM_EXTERN_SHARED(T, name) T* name = ::cudasim::dynamic_shared<T>()
// `__shared__ T name dims;` (dims: `[8][33]`), poisoned per block also inside function templates.
#define CUDASIM_SHARED(T, name, dims) \
  static T name dims;                 \
  ::cudasim::detail::touch_shared(&name, sizeof(name))
