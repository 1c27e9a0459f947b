// The emulator's scheduler: a launch runs the grid's blocks one after another (in an order drawn
// from the seed, or in order), and a block's threads as ucontext fibers on one OS thread. A fiber
// runs until it calls __syncthreads() or returns; when every fiber of the block has stopped, all
// of them must wait at the same __syncthreads() (else the launch fails, as a divergent barrier or
// an early exit is undefined behaviour in CUDA), and the round repeats (in a new order) until
// every thread has returned. A launch can run in a forked child, so that a fault (a guard page
// touched) ends the child, not the caller.
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <ucontext.h>
#include <unistd.h>

#include <vector>
#if defined(__x86_64__)
#include <xmmintrin.h>
#endif

#include "cuda_shim.h"

namespace xemu {
uint3 thread_idx, block_idx;
dim3 block_dim, grid_dim;

namespace {
enum State { RUNNABLE, WAITING, DONE };
struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  State state = DONE;
  int line = 0;  // the __syncthreads() it waits at, by its line: g++ may copy one call site
                 // (unswitching a loop on a thread's index), CUDA's barrier is the source's
  uint3 tid{};
};
const size_t kStackBytes = 128 * 1024;
std::vector<Fiber> fibers;
ucontext_t scheduler;
size_t running = 0;
void (*kernel)(void**) = nullptr;
void** kernel_args = nullptr;
char error[2048];

void fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  vsnprintf(error, sizeof error, format, args);
  va_end(args);
}

uint64_t next(uint64_t& state) {  // splitmix64
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

void shuffle(std::vector<unsigned>& order, uint64_t& state) {
  for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[next(state) % i]);
}

void fiber_main() {
  kernel(kernel_args);
  fibers[running].state = DONE;
  swapcontext(&fibers[running].context, &scheduler);  // never resumed
}

char* new_stack() {  // with a PROT_NONE page below it: an overflow faults
  long page = sysconf(_SC_PAGESIZE);
  void* base = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return nullptr;
  mprotect(base, page, PROT_NONE);
  return static_cast<char*>(base) + page;
}

bool start_fibers(unsigned count) {
  if (fibers.size() < count) fibers.resize(count);
  for (unsigned k = 0; k < count; ++k) {
    Fiber& f = fibers[k];
    if (!f.stack && !(f.stack = new_stack())) return fail("out of memory for fiber stacks"), false;
    f.tid = {k % block_dim.x, k / block_dim.x % block_dim.y, k / (block_dim.x * block_dim.y)};
    f.state = RUNNABLE;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, fiber_main, 0);
  }
  return true;
}

// Runs one block to its end; false (with ``error`` set) on a barrier error.
bool run_block(unsigned count, uint64_t* shuffle_state) {
  if (!start_fibers(count)) return false;
  std::vector<unsigned> order(count);
  for (unsigned k = 0; k < count; ++k) order[k] = k;
  for (;;) {
    if (shuffle_state) shuffle(order, *shuffle_state);
    for (unsigned k : order) {
      if (fibers[k].state != RUNNABLE) continue;
      running = k;
      thread_idx = fibers[k].tid;
      swapcontext(&scheduler, &fibers[k].context);
    }
    const Fiber* waiting = nullptr;
    const Fiber* done = nullptr;
    unsigned n_waiting = 0;
    for (unsigned k = 0; k < count; ++k) {
      const Fiber& f = fibers[k];
      if (f.state == DONE) {
        done = done ? done : &f;
        continue;
      }
      ++n_waiting;
      if (!waiting) waiting = &f;
      if (f.line != waiting->line)
        return fail("divergent __syncthreads() in block (%u,%u,%u): thread (%u,%u,%u) waits at "
                    "line %d, thread (%u,%u,%u) at line %d", block_idx.x, block_idx.y,
                    block_idx.z, waiting->tid.x, waiting->tid.y, waiting->tid.z, waiting->line,
                    f.tid.x, f.tid.y, f.tid.z, f.line), false;
    }
    if (!waiting) return true;
    if (done)
      return fail("__syncthreads() at line %d: %u of the %u threads of block (%u,%u,%u) wait "
                  "there, but thread (%u,%u,%u) returned without reaching it (a divergent "
                  "barrier or an early exit)", waiting->line, n_waiting, count, block_idx.x,
                  block_idx.y, block_idx.z, done->tid.x, done->tid.y, done->tid.z), false;
    for (unsigned k = 0; k < count; ++k) fibers[k].state = RUNNABLE;
  }
}

bool run_grid(void (*function)(void**), void** args, const unsigned* grid, const unsigned* block,
              uint64_t seed) {
  kernel = function;
  kernel_args = args;
  grid_dim = {grid[0], grid[1], grid[2]};
  block_dim = {block[0], block[1], block[2]};
  const unsigned threads = block[0] * block[1] * block[2];
  const unsigned long long blocks = 1ull * grid[0] * grid[1] * grid[2];
  uint64_t state = seed;
  std::vector<unsigned long long> order;
  if (seed) {
    order.resize(blocks);
    for (unsigned long long b = 0; b < blocks; ++b) order[b] = b;
    for (size_t i = order.size(); i > 1; --i) std::swap(order[i - 1], order[next(state) % i]);
  }
  for (unsigned long long n = 0; n < blocks; ++n) {
    const unsigned long long b = seed ? order[n] : n;
    block_idx = {unsigned(b % grid[0]), unsigned(b / grid[0] % grid[1]),
                 unsigned(b / (1ull * grid[0] * grid[1]))};
    if (!run_block(threads, seed ? &state : nullptr)) return false;
  }
  return true;
}

unsigned set_flush(bool on) {  // float32 as CUDA's -ftz=true: subnormals flushed, in and out
#if defined(__x86_64__)
  unsigned saved = _mm_getcsr();
  _mm_setcsr(on ? saved | 0x8040u : saved & ~0x8040u);  // FTZ (bit 15) and DAZ (bit 6)
  return saved;
#else
  return on ? (fail("flush-to-zero is emulated on x86-64 only"), ~0u) : 0u;
#endif
}

// Shared with a forked child: its error text, or the address of its fault.
struct Report {
  char error[2048];
  uintptr_t fault;
  int signal;
};
Report* report = nullptr;
char alt_stack[64 * 1024];

void on_fault(int signal, siginfo_t* info, void*) {
  report->fault = reinterpret_cast<uintptr_t>(info->si_addr);
  report->signal = signal;
  _exit(3);
}
}  // namespace

void barrier(int line) {
  Fiber& f = fibers[running];
  f.state = WAITING;
  f.line = line;
  swapcontext(&f.context, &scheduler);
}
}  // namespace xemu

using namespace xemu;

// 0: done; 1: a barrier or launch error (text in ``message``).
extern "C" int xemu_launch(void (*function)(void**), void** args, const unsigned* grid,
                           const unsigned* block, uint64_t seed, int ftz, char* message,
                           int size) {
  error[0] = 0;
  const unsigned saved = set_flush(ftz != 0);
  const bool ok = !error[0] && run_grid(function, args, grid, block, seed);
#if defined(__x86_64__)
  _mm_setcsr(saved);
#endif
  snprintf(message, size, "%s", error);
  return ok ? 0 : 1;
}

// As xemu_launch, in a child process that shares this one's memory (clone with CLONE_VM: no
// page tables copied, so it costs what a thread does): a fault in it ends the child, not us, and
// is reported. 2: the child faulted at ``*fault`` (a guard page: an access outside a buffer) or
// died of ``*signal``. The caller waits; the child touches only the kernel's buffers, the fiber
// pool and ``report``.
namespace {
struct Job {
  void (*function)(void**);
  void** args;
  const unsigned *grid, *block;
  uint64_t seed;
  int ftz;
};
Report report_page;
char child_stack[256 * 1024] __attribute__((aligned(64)));

int child_main(void* data) {
  const Job& job = *static_cast<Job*>(data);
  stack_t alt{};
  alt.ss_sp = alt_stack;
  alt.ss_size = sizeof alt_stack;
  sigaltstack(&alt, nullptr);
  struct sigaction action{};
  action.sa_sigaction = on_fault;
  action.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigaction(SIGSEGV, &action, nullptr);
  sigaction(SIGBUS, &action, nullptr);
  _exit(xemu_launch(job.function, job.args, job.grid, job.block, job.seed, job.ftz,
                    report->error, sizeof report->error));
}
}  // namespace

extern "C" int xemu_launch_forked(void (*function)(void**), void** args, const unsigned* grid,
                                  const unsigned* block, uint64_t seed, int ftz, char* message,
                                  int size, uintptr_t* fault, int* signal_number) {
  report = &report_page;
  memset(report, 0, sizeof(Report));
  Job job{function, args, grid, block, seed, ftz};
  const pid_t child = clone(child_main, child_stack + sizeof child_stack, CLONE_VM | SIGCHLD, &job);
  if (child < 0) return snprintf(message, size, "clone failed"), 1;
  int status = 0;
  while (waitpid(child, &status, 0) < 0) {}
  snprintf(message, size, "%s", report->error);
  *fault = report->fault;
  *signal_number = report->signal ? report->signal : WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  if (WIFEXITED(status) && WEXITSTATUS(status) <= 1) return WEXITSTATUS(status);
  return 2;
}

// ``bytes`` in MAP_SHARED memory between two PROT_NONE pages, ending where the second begins
// (``at_end``) or starting where the first ends; xemu_unmap takes the same arguments back.
static size_t page_size() { return size_t(sysconf(_SC_PAGESIZE)); }

extern "C" void* xemu_map(size_t bytes, int at_end) {
  const size_t page = page_size(), pages = (bytes + page - 1) / page;
  char* base = static_cast<char*>(mmap(nullptr, (pages + 2) * page, PROT_READ | PROT_WRITE,
                                       MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (base == MAP_FAILED) return nullptr;
  mprotect(base, page, PROT_NONE);
  mprotect(base + (pages + 1) * page, page, PROT_NONE);
  return at_end ? base + (pages + 1) * page - bytes : base + page;
}

extern "C" void xemu_unmap(void* data, size_t bytes, int at_end) {
  const size_t page = page_size(), pages = (bytes + page - 1) / page;
  char* base = static_cast<char*>(data) - (at_end ? (pages + 1) * page - bytes : page);
  munmap(base, (pages + 2) * page);
}
