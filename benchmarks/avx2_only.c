/* An LD_PRELOAD library that makes this process see an AVX2 machine on an AVX-512 one, so that
 * `bench_condensed --as-avx2` times dense ONNX Runtime on the AVX2 kernels it would run on the
 * issue's target machine (MLAS picks its kernels from CPUID and has no switch of its own).
 *
 * Linux's CPUID faulting (arch_prctl ARCH_SET_CPUID, CPU flag cpuid_fault) makes every CPUID
 * instruction of this thread and the threads it starts raise SIGSEGV; the handler runs the real
 * CPUID with faulting briefly off, clears the AVX-512, AMX and VNNI bits of leaf 7, and steps
 * over the instruction. Only CPUID is affected: the instructions still run, so a library that
 * ignores CPUID still uses AVX-512 (glibc's string functions, chosen before this library loads).
 * Benchmarks only; nothing in the package loads it. */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static long cpuid_faulting(int off) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, off); }

static void on_segv(int sig, siginfo_t* info, void* context) {
  (void)info;
  greg_t* r = ((ucontext_t*)context)->uc_mcontext.gregs;
  const unsigned char* ip = (const unsigned char*)r[REG_RIP];
  if (ip[0] != 0x0f || ip[1] != 0xa2) { /* a real fault: die of it */
    signal(sig, SIG_DFL);
    return;
  }
  uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
  cpuid_faulting(1);
  __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
  cpuid_faulting(0);
  if (leaf == 7 && sub == 0) {
    /* EBX: AVX512F, DQ, IFMA, PF, ER, CD, BW, VL; ECX: VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ;
     * EDX: 4VNNIW, 4FMAPS, VP2INTERSECT, AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8 */
    b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) |
           (1u << 30) | (1u << 31));
    c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
    d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));
  } else if (leaf == 7 && sub == 1) {
    a &= ~((1u << 4) | (1u << 5)); /* AVX-VNNI, AVX512-BF16 */
  }
  r[REG_RAX] = a;
  r[REG_RBX] = b;
  r[REG_RCX] = c;
  r[REG_RDX] = d;
  r[REG_RIP] += 2;
}

__attribute__((constructor)) static void hide_avx512(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO | SA_NODEFER;
  sigaction(SIGSEGV, &sa, 0);
  cpuid_faulting(0);
}
