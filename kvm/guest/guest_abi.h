/* The contract between Ferry's VMM and its built-in test guest, shared by
 * the freestanding guest (C) and the VMM (C++). Plain fixed-width types only;
 * the VMM static_asserts the layout. Addresses are guest-physical, identity
 * mapped by the VMM's page tables. */
#ifndef FERRY_GUEST_ABI_H
#define FERRY_GUEST_ABI_H

#include <stdint.h>

/* Fixed guest memory layout (the working set goes wherever params say). */
#define FG_GDT_GPA 0x1000ull
#define FG_PML4_GPA 0x2000ull
#define FG_PDPT_GPA 0x3000ull
#define FG_PD_GPA 0x4000ull      /* 4 pages: identity map of 0..4 GiB in 2 MiB pages */
#define FG_PARAMS_GPA 0x8000ull  /* struct fg_params */
#define FG_STATUS_GPA 0x9000ull  /* struct fg_status[FG_MAX_VCPUS] */
#define FG_STACKS_GPA 0x20000ull /* FG_STACK_BYTES per vCPU, growing down */
#define FG_STACK_BYTES 0x4000ull
#define FG_CODE_GPA 0x100000ull /* code and data of the guest image */
#define FG_CODE_MAX 0x100000ull
#define FG_DATA_GPA 0x200000ull /* generation table, then the working set */
#define FG_MAX_VCPUS 16

/* I/O ports (OUT dword). */
#define FG_PORT_HEARTBEAT 0x500 /* vCPU 0, every heartbeat_ticks: sequence number */
#define FG_PORT_FAIL 0x501      /* a verification failed: value = vCPU; details in its status */
#define FG_PORT_READY 0x502     /* value = vCPU: entered guest_main */
#define FG_PORT_DONE 0x503      /* value = vCPU: max_rewrites reached, then halts */
#define FG_PORT_POWEROFF 0x504  /* the last vCPU to finish powers the VM off (when asked to) */
#define FG_COM1 0x3f8           /* 8250 UART: the guest prints a banner there */

#define FG_MAGIC 0x46455252594755ull /* "FERRYGU" */

enum fg_workload { FG_IDLE = 0, FG_DIRTY = 1 };
enum fg_pattern { FG_SEQUENTIAL = 0, FG_RANDOM = 1, FG_HOTCOLD = 2 };

struct fg_params {
  uint64_t magic;           /* FG_MAGIC: the guest refuses to run otherwise */
  uint32_t vcpus;           /* how many vCPUs run the guest */
  uint32_t workload;        /* enum fg_workload */
  uint32_t pattern;         /* enum fg_pattern */
  uint32_t hot_percent;     /* FG_HOTCOLD: share of pages that are hot (1..99) */
  uint64_t gen_table_gpa;   /* uint32_t generation per working-set page */
  uint64_t ws_gpa;          /* first working-set page */
  uint64_t ws_pages;        /* working-set size in pages, split evenly per vCPU */
  uint64_t ticks_per_page;  /* TSC ticks between page writes per vCPU; 0 = unpaced */
  uint64_t heartbeat_ticks; /* TSC ticks between heartbeats (about 1 ms) */
  uint64_t max_rewrites;    /* per vCPU; 0 = run forever */
  uint64_t seed;            /* for FG_RANDOM / FG_HOTCOLD */
  uint32_t poweroff_when_done; /* 1: the last vCPU to reach max_rewrites powers off */
  uint32_t finished;        /* vCPUs that reached max_rewrites (guest-maintained) */
};

/* Per-vCPU status the guest keeps up to date in its own memory; the VMM
 * reads it (it travels with the guest through snapshots and migrations). */
struct fg_status {
  uint64_t rewrites;        /* pages written */
  uint64_t verified;        /* rewrites whose previous contents checked out */
  uint64_t heartbeats;      /* vCPU 0 only */
  uint64_t failures;        /* verification failures (the guest stops at the first) */
  uint64_t fail_page;       /* working-set page index that failed */
  uint64_t fail_expected_gen;
  uint64_t fail_found_gen;  /* generation found in the page header */
  uint64_t fail_kind;       /* 1 header index, 2 generation, 3 checksum, 4 content */
};

/* The header every working-set page starts with. The rest of the page is
 * fg_word(index, gen, k) for word k; checksum covers those words. */
struct fg_page_header {
  uint64_t index;
  uint64_t generation;
  uint64_t checksum;
  uint64_t reserved;
};

/* Content of word k (k >= 4) of a page: cheap, and different for every
 * (page, generation, word), so stale or misplaced pages are caught. */
static inline uint64_t fg_word(uint64_t index, uint64_t gen, uint64_t k) {
  uint64_t x = index * 0x9E3779B97F4A7C15ull ^ gen * 0xC2B2AE3D27D4EB4Full ^ k * 0x165667B19E3779F9ull;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  return x ^ (x >> 32);
}

#endif
