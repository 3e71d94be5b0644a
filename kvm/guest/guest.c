/* Ferry's built-in test guest: freestanding 64-bit code, entered by the VMM
 * in long mode with paging on, rsp on this vCPU's stack and rdi = vCPU index.
 * No interrupts, no IDT: a fault triple-faults, which the VMM reports.
 *
 * It dirties its share of the working set at a TSC-paced rate and checks,
 * before rewriting a page, that the page still holds exactly what it last
 * wrote: a lost, stale or corrupted page is detected here, by the guest
 * itself, and reported on FG_PORT_FAIL. */
#include "guest_abi.h"

__asm__(".section .text.entry, \"ax\"\n"
        ".global _start\n"
        "_start:\n"
        "  call guest_main\n"
        "1: cli\n"
        "  hlt\n"
        "  jmp 1b\n"
        ".text\n");

#define WORDS (4096 / 8)

static inline void outl(uint16_t port, uint32_t v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

static inline void outb(uint16_t port, uint8_t v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline uint8_t inb(uint16_t port) {
  uint8_t v;
  __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
  return v;
}

/* Console output on COM1, polling LSR.THRE like any early console. */
static void putc_serial(char c) {
  while (!(inb(FG_COM1 + 5) & 0x20)) __asm__ volatile("pause");
  outb(FG_COM1, (uint8_t)c);
}
static void puts_serial(const char* s) {
  while (*s) putc_serial(*s++);
}
static void putu_serial(uint64_t v) {
  char buf[21];
  int n = 0;
  do buf[n++] = (char)('0' + v % 10); while ((v /= 10) && n < 20);
  while (n) putc_serial(buf[--n]);
}

static inline uint64_t rdtsc(void) {
  uint32_t lo, hi;
  __asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
  return ((uint64_t)hi << 32) | lo;
}

static uint64_t xorshift(uint64_t* s) {
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static uint64_t page_checksum(const volatile uint64_t* p) {
  uint64_t c = 0x243F6A8885A308D3ull;
  for (uint64_t k = 4; k < WORDS; ++k) c = (c ^ p[k]) * 0x100000001B3ull;
  return c;
}

static int verify_page(volatile uint64_t* p, uint64_t index, uint64_t gen, volatile struct fg_status* st) {
  uint64_t kind = 0;
  if (p[0] != index) kind = 1;
  else if (p[1] != gen) kind = 2;
  else if (p[2] != page_checksum(p)) kind = 3;
  else
    for (uint64_t k = 4; k < WORDS; ++k)
      if (p[k] != fg_word(index, gen, k)) {
        kind = 4;
        break;
      }
  if (kind == 0) return 1;
  st->fail_page = index;
  st->fail_expected_gen = gen;
  st->fail_found_gen = p[1];
  st->fail_kind = kind;
  st->failures++;
  return 0;
}

static void write_page(volatile uint64_t* p, uint64_t index, uint64_t gen) {
  for (uint64_t k = 4; k < WORDS; ++k) p[k] = fg_word(index, gen, k);
  p[0] = index;
  p[1] = gen;
  p[3] = 0;
  p[2] = page_checksum(p);
}

void guest_main(uint64_t cpu) {
  volatile struct fg_params* prm = (volatile struct fg_params*)FG_PARAMS_GPA;
  volatile struct fg_status* st = (volatile struct fg_status*)FG_STATUS_GPA + cpu;
  if (prm->magic != FG_MAGIC || cpu >= prm->vcpus || cpu >= FG_MAX_VCPUS) return;
  outl(FG_PORT_READY, (uint32_t)cpu);
  if (cpu == 0) {
    puts_serial("ferry test guest: ");
    putu_serial(prm->vcpus);
    puts_serial(" vCPUs, ");
    putu_serial(prm->ws_pages);
    puts_serial(prm->workload == FG_DIRTY ? " pages to dirty\n" : " pages, idle\n");
  }

  /* This vCPU's slice of the working set: pages [first, first + count). */
  const uint64_t per = prm->ws_pages / prm->vcpus;
  const uint64_t first = cpu * per;
  const uint64_t count = cpu + 1 == prm->vcpus ? prm->ws_pages - first : per;
  volatile uint32_t* gens = (volatile uint32_t*)prm->gen_table_gpa;
  const uint64_t hot = count * (prm->hot_percent ? prm->hot_percent : 10) / 100 + 1;
  uint64_t seed = prm->seed * 0x9E3779B97F4A7C15ull + cpu + 1;
  uint64_t seq = 0, next = 0;

  uint64_t now = rdtsc();
  uint64_t next_beat = now + prm->heartbeat_ticks;
  uint64_t next_write = now;
  for (;;) {
    now = rdtsc();
    if (cpu == 0 && (int64_t)(now - next_beat) >= 0) {
      st->heartbeats++;
      outl(FG_PORT_HEARTBEAT, (uint32_t)++seq);
      next_beat += prm->heartbeat_ticks;
      if ((int64_t)(now - next_beat) > 0) next_beat = now + prm->heartbeat_ticks; /* paused: don't burst */
    }
    if (prm->workload != FG_DIRTY || count == 0) {
      __asm__ volatile("pause");
      continue;
    }
    if (prm->ticks_per_page && (int64_t)(now - next_write) < 0) {
      __asm__ volatile("pause");
      continue;
    }
    next_write += prm->ticks_per_page;
    if ((int64_t)(now - next_write) > (int64_t)(64 * prm->ticks_per_page)) next_write = now; /* no catch-up burst after a pause */

    uint64_t i;
    if (prm->pattern == FG_SEQUENTIAL) {
      i = next;
      next = next + 1 == count ? 0 : next + 1;
    } else if (prm->pattern == FG_RANDOM) {
      i = xorshift(&seed) % count;
    } else { /* hot/cold: 90% of writes go to the first `hot` pages */
      const uint64_t r = xorshift(&seed);
      i = (r % 10) ? (r >> 8) % hot : (r >> 8) % count;
    }
    const uint64_t index = first + i;
    volatile uint64_t* page = (volatile uint64_t*)(prm->ws_gpa + index * 4096);
    const uint64_t gen = gens[index];
    if (gen != 0) {
      if (!verify_page(page, index, gen, st)) {
        outl(FG_PORT_FAIL, (uint32_t)cpu);
        return; /* the VMM fails the run; stop touching memory */
      }
      st->verified++;
    }
    write_page(page, index, gen + 1);
    gens[index] = (uint32_t)(gen + 1);
    st->rewrites++;
    if (prm->max_rewrites && st->rewrites >= prm->max_rewrites) {
      outl(FG_PORT_DONE, (uint32_t)cpu);
      const uint32_t finished = __atomic_add_fetch(&((struct fg_params*)prm)->finished, 1, __ATOMIC_SEQ_CST);
      if (prm->poweroff_when_done && finished == prm->vcpus) outl(FG_PORT_POWEROFF, 0);
      return;
    }
  }
}
