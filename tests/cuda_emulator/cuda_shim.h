// CUDA C++ as plain C++ on the CPU: included before a kernel source (g++ -include), it gives the
// source CUDA's built-ins. Every CUDA thread of a block runs as a fiber of one OS thread (see
// runtime.cpp); blocks run one after another, so a block's __shared__ variables can be statics.
#pragma once
#include <math.h>
#include <stdint.h>

#include <algorithm>
#include <cmath>

namespace xemu {
struct uint3 { unsigned int x, y, z; };
struct dim3 { unsigned int x, y, z; };
// Set by the scheduler before it switches to a fiber; read through the macros below.
extern uint3 thread_idx, block_idx;
extern dim3 block_dim, grid_dim;
void barrier(int line);  // __syncthreads(): parks the calling fiber
}  // namespace xemu

using xemu::dim3;
using xemu::uint3;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __shared__ static
#define threadIdx (static_cast<const ::xemu::uint3&>(::xemu::thread_idx))
#define blockIdx (static_cast<const ::xemu::uint3&>(::xemu::block_idx))
#define blockDim (static_cast<const ::xemu::dim3&>(::xemu::block_dim))
#define gridDim (static_cast<const ::xemu::dim3&>(::xemu::grid_dim))
#define warpSize 32
#define __syncthreads() ::xemu::barrier(__LINE__)

// CUDA's math library: the float overloads of the C names, the *f names, and intrinsics as the
// C library's functions (CUDA's are within 2 ulp of them; its fast intrinsics are coarser).
using std::abs; using std::exp; using std::log; using std::tanh; using std::sqrt;
using std::fmax; using std::fmin; using std::fabs; using std::pow; using std::floor;
using std::ceil; using std::log1p; using std::expm1; using std::isnan; using std::isinf;
using std::min; using std::max;
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
template <class T> inline T __ldg(const T* p) { return *p; }
// Fibers never run at the same time, so a read-modify-write is atomic as it stands.
template <class T> inline T atomicAdd(T* p, T v) { T old = *p; *p = old + v; return old; }
template <class T> inline T atomicMax(T* p, T v) { T old = *p; *p = old < v ? v : old; return old; }
