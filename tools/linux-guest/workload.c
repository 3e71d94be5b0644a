/* ferry-workload: the Linux guest's counterpart of the built-in test guest.
 * Runs as a static binary in the guest's initramfs. It dirties MIB of its
 * own memory at RATE MiB/s and, like the built-in guest, checks before
 * rewriting a page that the page still holds exactly what it last wrote
 * (index, generation, checksum): a page lost or corrupted by a snapshot,
 * restore or migration is caught inside the guest. Once a second it prints
 * a heartbeat line with its own clock on the console:
 *
 *   ferry-workload: hb=12 uptime_ms=15321 rewrites=24576 verified=20480 failures=0 max_gap_ms=3
 *
 * max_gap_ms is the longest time, on the guest's CLOCK_MONOTONIC, between
 * two iterations of its loop: the pause the guest itself saw.
 *
 *   usage: ferry-workload MIB RATE_MIB_S */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "kvm/guest/guest_abi.h" /* fg_word: the same page contents as the built-in guest */

#define WORDS (4096 / 8)

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t checksum(const uint64_t* p) {
  uint64_t c = 0x243F6A8885A308D3ull;
  for (uint64_t k = 4; k < WORDS; ++k) c = (c ^ p[k]) * 0x100000001B3ull;
  return c;
}

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    fprintf(stderr, "usage: ferry-workload MIB RATE_MIB_S [HEARTBEAT_MS]\n");
    return 2;
  }
  const uint64_t pages = strtoull(argv[1], NULL, 10) * 256;
  const double rate = strtod(argv[2], NULL);
  const uint64_t beat_ms = argc == 4 ? strtoull(argv[3], NULL, 10) : 1000;
  if (pages == 0 || rate <= 0 || beat_ms == 0) {
    fprintf(stderr, "ferry-workload: MIB and RATE must be positive\n");
    return 2;
  }
  uint64_t* mem = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  uint32_t* gens = calloc(pages, sizeof *gens);
  if (mem == MAP_FAILED || !gens) {
    perror("ferry-workload: memory");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("ferry-workload: ready, %llu pages at %.1f MiB/s\n", (unsigned long long)pages, rate);

  const double pages_per_ms = rate * 256 / 1000.0;
  uint64_t rewrites = 0, verified = 0, failures = 0, hb = 0, next = 0, max_gap = 0;
  const uint64_t start = now_ms();
  uint64_t last = start, next_beat = start + beat_ms;
  double due = 0;
  for (;;) {
    const uint64_t t = now_ms();
    if (t - last > max_gap) max_gap = t - last;
    due += (double)(t - last) * pages_per_ms;
    last = t;
    for (; due >= 1; due -= 1) {
      const uint64_t i = next;
      next = next + 1 == pages ? 0 : next + 1;
      uint64_t* p = mem + i * WORDS;
      const uint64_t gen = gens[i];
      if (gen) {
        int bad = p[0] != i || p[1] != gen || p[2] != checksum(p);
        for (uint64_t k = 4; !bad && k < WORDS; ++k) bad = p[k] != fg_word(i, gen, k);
        if (bad) {
          ++failures;
          printf("ferry-workload: FAIL page %llu generation %llu holds index %llu generation %llu\n",
                 (unsigned long long)i, (unsigned long long)gen, (unsigned long long)p[0], (unsigned long long)p[1]);
        } else {
          ++verified;
        }
      }
      for (uint64_t k = 4; k < WORDS; ++k) p[k] = fg_word(i, gen + 1, k);
      p[0] = i;
      p[1] = gen + 1;
      p[3] = 0;
      p[2] = checksum(p);
      gens[i] = (uint32_t)(gen + 1);
      ++rewrites;
    }
    if (t >= next_beat) {
      printf("ferry-workload: hb=%llu uptime_ms=%llu rewrites=%llu verified=%llu failures=%llu max_gap_ms=%llu\n",
             (unsigned long long)++hb, (unsigned long long)(t - start), (unsigned long long)rewrites,
             (unsigned long long)verified, (unsigned long long)failures, (unsigned long long)max_gap);
      next_beat += beat_ms;
      if (next_beat <= t) next_beat = t + beat_ms;
    }
    usleep(beat_ms < 20 ? 1000 : 5000);
  }
}
