// emulator.cpp — the launch: checks a configuration like CUDA, then runs the
// blocks one by one, every thread of a block a fiber on its own stack,
// resumed round-robin until it returns or parks at a barrier; barriers are
// released when every live thread they wait for has arrived; a block where
// no thread can go on is reported and abandoned. Also the device functions
// that need the scheduler (barriers, shuffles, votes) or a body (erfinvf,
// clock64). The design and its limits: emulator.h.
//
// Context switches are a few instructions of assembly on x86-64 (ucontext
// elsewhere: glibc's swapcontext makes a system call per switch). Under
// AddressSanitizer every switch is announced with
// __sanitizer_{start,finish}_switch_fiber so ASan knows which stack is live.
#include "emulator.h"

#include <chrono>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define SERE_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SERE_EMU_ASAN 1
#endif
#endif
#ifdef SERE_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

enum { MAX_THREADS = 1024, DEFAULT_MAX_DYNAMIC_SHARED = 48 * 1024, OPTIN_MAX_DYNAMIC_SHARED = 227 * 1024 };
#ifdef SERE_EMU_ASAN
static const size_t STACK_BYTES = 256 * 1024;  // ASan's redzones make frames larger
#else
static const size_t STACK_BYTES = 64 * 1024;
#endif

enum fiber_state { RUNNABLE, AT_BLOCK_BARRIER, AT_WARP_BARRIER, RETURNED };

// A saved execution context: a stack pointer (x86-64) or a ucontext.
struct context {
#if defined(__x86_64__)
  void *sp;
#else
  ucontext_t uc;
#endif
};

struct fiber : sere_emu_fiber {
  fiber_state state;
  unsigned warp_mask;  // the mask of the warp operation it is parked at
  uint64_t exchange;   // what it offers to a shuffle, vote or counting barrier
  context ctx;
  char *stack;         // lowest usable byte; a guard page lies below
  void *asan_fake_stack;
};

sere_emu_fiber *sere_emu_current_fiber;
uint3 sere_emu_block_idx;
dim3 sere_emu_block_dim, sere_emu_grid_dim;

static fiber fibers[MAX_THREADS];
static int block_threads;
static context scheduler_ctx;
static void (*launch_invoke)(const void *);
static const void *launch_closure;
static void *block_dynamic_shared;
static uint64_t launch_count;
static size_t max_dynamic_shared = DEFAULT_MAX_DYNAMIC_SHARED;

extern "C" uint64_t sere_emu_launch_count(void) { return launch_count; }
void sere_emu_count_launch(void) { launch_count++; }
void *sere_emu_dynamic_shared(void) { return block_dynamic_shared; }

cudaError_t sere_emu_set_max_dynamic_shared(int bytes) {
  if (bytes < 0 || bytes > OPTIN_MAX_DYNAMIC_SHARED) return sere_emu_set_error(cudaErrorInvalidValue);
  if ((size_t)bytes > max_dynamic_shared) max_dynamic_shared = (size_t)bytes;
  return cudaSuccess;
}

// ---- ASan's view of the stacks ------------------------------------------------

#ifdef SERE_EMU_ASAN
static const void *scheduler_stack_bottom;
static size_t scheduler_stack_size;
#define ASAN_START_SWITCH(fake_save, bottom, size) __sanitizer_start_switch_fiber(fake_save, bottom, size)
#define ASAN_FINISH_SWITCH(fake, bottom_out, size_out) __sanitizer_finish_switch_fiber(fake, bottom_out, size_out)
#else
#define ASAN_START_SWITCH(fake_save, bottom, size) ((void)(fake_save))
#define ASAN_FINISH_SWITCH(fake, bottom_out, size_out) ((void)(fake))
#endif

// ---- contexts ---------------------------------------------------------------------

[[noreturn]] static void fiber_main(void);

#if defined(__x86_64__)
// sere_emu_switch(save, load): push the callee-saved registers, save the
// stack pointer in *save, load `load`, pop the registers of the context
// saved there and return into it. (The SSE and x87 control words are also
// callee-saved, but no kernel changes them, so they are not switched.)
extern "C" void sere_emu_switch(void **save, void *load);
asm(R"(
  .text
  .p2align 4
  .globl sere_emu_switch
  .hidden sere_emu_switch
  .type sere_emu_switch, @function
sere_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size sere_emu_switch, .-sere_emu_switch
)");

static void switch_context(context *save, context *load) { sere_emu_switch(&save->sp, load->sp); }

// A stack that "returns" into fiber_main with the alignment of a call:
// six zero registers, fiber_main's address, and a null return address.
static void start_context(fiber *f) {
  void **sp = (void **)(((uintptr_t)(f->stack + STACK_BYTES)) & ~(uintptr_t)15);
  *--sp = nullptr;
  *--sp = (void *)fiber_main;
  for (int i = 0; i < 6; i++) *--sp = nullptr;
  f->ctx.sp = sp;
}
#else
static void switch_context(context *save, context *load) { swapcontext(&save->uc, &load->uc); }

static void start_context(fiber *f) {
  getcontext(&f->ctx.uc);
  f->ctx.uc.uc_stack.ss_sp = f->stack;
  f->ctx.uc.uc_stack.ss_size = STACK_BYTES;
  f->ctx.uc.uc_link = nullptr;
  makecontext(&f->ctx.uc, fiber_main, 0);
}
#endif

// Stacks are mapped once, on first use, and kept for the next launches.
static void map_stack(fiber *f) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  char *base = (char *)mmap(nullptr, STACK_BYTES + page, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) {
    perror("sere CUDA emulator: mmap of a thread stack");
    abort();
  }
  mprotect(base, page, PROT_NONE);  // overflowing the stack faults here
  f->stack = base + page;
}

// ---- switching between the scheduler and the fibers --------------------------------

static void resume(fiber *f) {
  sere_emu_current_fiber = f;
  void *fake_stack = nullptr;
  ASAN_START_SWITCH(&fake_stack, f->stack, STACK_BYTES);
  switch_context(&scheduler_ctx, &f->ctx);
  ASAN_FINISH_SWITCH(fake_stack, nullptr, nullptr);
  sere_emu_current_fiber = nullptr;
}

static void to_scheduler(fiber *f, bool returning) {
  ASAN_START_SWITCH(returning ? nullptr : &f->asan_fake_stack, scheduler_stack_bottom, scheduler_stack_size);
  switch_context(&f->ctx, &scheduler_ctx);
  ASAN_FINISH_SWITCH(f->asan_fake_stack, nullptr, nullptr);
}

static void fiber_main(void) {
  ASAN_FINISH_SWITCH(nullptr, &scheduler_stack_bottom, &scheduler_stack_size);
  fiber *f = (fiber *)sere_emu_current_fiber;
  launch_invoke(launch_closure);
  f->state = RETURNED;
  to_scheduler(f, true);
  __builtin_unreachable();
}

static fiber *running(const char *what) {
  if (!sere_emu_current_fiber) {
    fprintf(stderr, "sere CUDA emulator: %s called outside a kernel\n", what);
    abort();
  }
  return (fiber *)sere_emu_current_fiber;
}

static void park(fiber *f, fiber_state at, unsigned warp_mask) {
  f->state = at;
  f->warp_mask = warp_mask;
  to_scheduler(f, false);
}

// ---- barriers, shuffles, votes --------------------------------------------------

void __syncthreads(void) { park(running("__syncthreads"), AT_BLOCK_BARRIER, 0); }

static int count_at_block_barrier(const char *what, int predicate) {
  fiber *f = running(what);
  f->exchange = predicate != 0;
  park(f, AT_BLOCK_BARRIER, 0);
  int count = 0;
  for (int i = 0; i < block_threads; i++) count += fibers[i].state != RETURNED && fibers[i].exchange;
  park(f, AT_BLOCK_BARRIER, 0);  // nobody overwrites its value before everyone has counted
  return count;
}
int __syncthreads_count(int predicate) { return count_at_block_barrier("__syncthreads_count", predicate); }
int __syncthreads_or(int predicate) { return count_at_block_barrier("__syncthreads_or", predicate) != 0; }
int __syncthreads_and(int predicate) { return count_at_block_barrier("__syncthreads_and", !predicate) == 0; }

void __syncwarp(unsigned mask) { park(running("__syncwarp"), AT_WARP_BARRIER, mask); }

uint64_t sere_emu_warp_exchange(unsigned mask, uint64_t mine, int src_lane) {
  fiber *f = running("a warp shuffle");
  f->exchange = mine;
  park(f, AT_WARP_BARRIER, mask);
  int src = (f->linear_id & ~31) + src_lane;
  uint64_t v = src_lane >= 0 && src_lane < 32 && src < block_threads ? fibers[src].exchange : mine;
  park(f, AT_WARP_BARRIER, mask);
  return v;
}

unsigned __ballot_sync(unsigned mask, int predicate) {
  fiber *f = running("__ballot_sync");
  f->exchange = predicate != 0;
  park(f, AT_WARP_BARRIER, mask);
  int base = f->linear_id & ~31;
  unsigned votes = 0;
  for (int lane = 0; lane < 32 && base + lane < block_threads; lane++) {
    const fiber &l = fibers[base + lane];
    if ((mask >> lane & 1) && l.state != RETURNED && l.exchange) votes |= 1u << lane;
  }
  park(f, AT_WARP_BARRIER, mask);
  return votes;
}

unsigned __activemask(void) {
  fiber *f = running("__activemask");
  int base = f->linear_id & ~31;
  unsigned live = 0;
  for (int lane = 0; lane < 32 && base + lane < block_threads; lane++)
    if (fibers[base + lane].state != RETURNED) live |= 1u << lane;
  return live;
}

// ---- the scheduler ------------------------------------------------------------------

// After a round in which every fiber ran until it parked or returned: let
// through the barriers everybody they wait for has reached. False when
// nothing can move.
static bool release_barriers(int alive) {
  int at_block = 0;
  for (int i = 0; i < block_threads; i++) at_block += fibers[i].state == AT_BLOCK_BARRIER;
  if (at_block == alive) {
    for (int i = 0; i < block_threads; i++)
      if (fibers[i].state == AT_BLOCK_BARRIER) fibers[i].state = RUNNABLE;
    return true;
  }
  bool released = false;
  for (int base = 0; base < block_threads; base += 32) {
    int lanes = block_threads - base < 32 ? block_threads - base : 32;
    unsigned live = 0, parked = 0, go = 0;
    for (int lane = 0; lane < lanes; lane++) {
      live |= (unsigned)(fibers[base + lane].state != RETURNED) << lane;
      parked |= (unsigned)(fibers[base + lane].state == AT_WARP_BARRIER) << lane;
    }
    for (int lane = 0; lane < lanes; lane++) {
      unsigned waits_for = (fibers[base + lane].warp_mask | 1u << lane) & live;
      if ((parked >> lane & 1) && (waits_for & ~parked) == 0) go |= 1u << lane;
    }
    for (int lane = 0; lane < lanes; lane++)
      if (go >> lane & 1) fibers[base + lane].state = RUNNABLE;
    released |= go != 0;
  }
  return released;
}

static void report_deadlock(void) {
  int at_block = 0, at_warp = 0, first_block = -1, first_warp = -1, alive = 0;
  for (int i = 0; i < block_threads; i++) {
    if (fibers[i].state == AT_BLOCK_BARRIER && !at_block++) first_block = i;
    if (fibers[i].state == AT_WARP_BARRIER && !at_warp++) first_warp = i;
    alive += fibers[i].state != RETURNED;
  }
  fprintf(stderr,
          "sere CUDA emulator: launch abandoned in block (%u,%u,%u): none of its %d unfinished threads "
          "(of %d) can go on; %d wait at __syncthreads (first: linear thread %d), %d at a warp "
          "operation (first: %d) — a barrier inside a branch not every thread takes?\n",
          sere_emu_block_idx.x, sere_emu_block_idx.y, sere_emu_block_idx.z, alive, block_threads, at_block,
          first_block, at_warp, first_warp);
#ifdef SERE_EMU_ASAN
  // The abandoned frames leave their redzones poisoned on stacks we reuse.
  for (int i = 0; i < block_threads; i++)
    if (fibers[i].state != RETURNED) ASAN_UNPOISON_MEMORY_REGION(fibers[i].stack, STACK_BYTES);
#endif
}

// Runs one block; false when it had to be abandoned.
static bool run_block(bool reverse) {
  int n = block_threads, bx = (int)sere_emu_block_dim.x, by = (int)sere_emu_block_dim.y;
  for (int i = 0; i < n; i++) {
    fiber *f = &fibers[i];
    if (!f->stack) map_stack(f);
    f->thread_idx = uint3{(unsigned)(i % bx), (unsigned)(i / bx % by), (unsigned)(i / (bx * by))};
    f->linear_id = i;
    f->state = RUNNABLE;
    start_context(f);
  }
  int alive = n;
  for (;;) {
    for (int k = 0; k < n; k++) {
      fiber *f = &fibers[reverse ? n - 1 - k : k];
      if (f->state != RUNNABLE) continue;
      resume(f);
      alive -= f->state == RETURNED;
    }
    if (alive == 0) return true;
    if (!release_barriers(alive)) {
      report_deadlock();
      return false;
    }
  }
}

static bool reverse_order(void) {
  const char *order = getenv("SERE_EMU_ORDER");
  if (!order || !*order || !strcmp(order, "forward")) return false;
  if (!strcmp(order, "reverse")) return true;
  static bool warned;
  if (!warned) fprintf(stderr, "sere CUDA emulator: SERE_EMU_ORDER=%s ignored (forward or reverse)\n", order);
  warned = true;
  return false;
}

static bool valid_configuration(dim3 grid, dim3 block, size_t dynamic_shared_bytes) {
  uint64_t threads = (uint64_t)block.x * block.y * block.z;
  return threads >= 1 && threads <= MAX_THREADS && block.x <= 1024 && block.y <= 1024 && block.z <= 64 &&
         grid.x >= 1 && grid.y >= 1 && grid.z >= 1 && grid.x <= 0x7fffffffu && grid.y <= 65535 &&
         grid.z <= 65535 && dynamic_shared_bytes <= max_dynamic_shared;
}

void sere_emu_run(dim3 grid, dim3 block, size_t dynamic_shared_bytes, void (*invoke)(const void *),
                  const void *closure) {
  if (sere_emu_current_fiber) {
    fprintf(stderr, "sere CUDA emulator: a kernel launched a kernel (dynamic parallelism is not emulated)\n");
    sere_emu_set_error(cudaErrorLaunchFailure);
    return;
  }
  if (!valid_configuration(grid, block, dynamic_shared_bytes)) {
    sere_emu_set_error(cudaErrorInvalidConfiguration);
    return;
  }
  launch_count++;
  launch_invoke = invoke;
  launch_closure = closure;
  sere_emu_grid_dim = grid;
  sere_emu_block_dim = block;
  block_threads = (int)(block.x * block.y * block.z);
  bool reverse = reverse_order();
  for (unsigned z = 0; z < grid.z; z++)
    for (unsigned y = 0; y < grid.y; y++)
      for (unsigned x = 0; x < grid.x; x++) {
        sere_emu_block_idx = uint3{x, y, z};
        // Fresh for every block, exactly the launch's size (ASan checks the
        // bounds), and NaN-filled so reading what was never written shows.
        block_dynamic_shared = malloc(dynamic_shared_bytes ? dynamic_shared_bytes : 1);
        if (!block_dynamic_shared) {
          sere_emu_set_error(cudaErrorMemoryAllocation);
          return;
        }
        memset(block_dynamic_shared, 0xff, dynamic_shared_bytes);
        bool finished = run_block(reverse);
        free(block_dynamic_shared);
        block_dynamic_shared = nullptr;
        if (!finished) {
          sere_emu_set_error(cudaErrorLaunchFailure);
          return;
        }
      }
}

// ---- device functions with a body -------------------------------------------------

long long clock64(void) {
  return (long long)std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Giles' single-precision approximation ("Approximating the erfinv
// function", GPU Computing Gems, 2011) refined by two Newton steps on
// erf(y) = x in double, which makes it correctly rounded in practice.
float erfinvf(float x) {
  if (isnan(x) || x < -1.0f || x > 1.0f) return NAN;
  if (x == 1.0f || x == -1.0f) return x * INFINITY;
  double w = -log((1.0 - x) * (1.0 + x)), p;
  if (w < 5.0) {
    w -= 2.5;
    p = 2.81022636e-08;
    p = 3.43273939e-07 + p * w;
    p = -3.5233877e-06 + p * w;
    p = -4.39150654e-06 + p * w;
    p = 0.00021858087 + p * w;
    p = -0.00125372503 + p * w;
    p = -0.00417768164 + p * w;
    p = 0.246640727 + p * w;
    p = 1.50140941 + p * w;
  } else {
    w = sqrt(w) - 3.0;
    p = -0.000200214257;
    p = 0.000100950558 + p * w;
    p = 0.00134934322 + p * w;
    p = -0.00367342844 + p * w;
    p = 0.00573950773 + p * w;
    p = -0.0076224613 + p * w;
    p = 0.00943887047 + p * w;
    p = 1.00167406 + p * w;
    p = 2.83297682 + p * w;
  }
  double y = p * x;
  for (int i = 0; i < 2; i++) y -= (erf(y) - x) / (1.1283791670955126 * exp(-y * y));
  return (float)y;
}
