/* Shared by dirty_pages.bpf.c and its loader (bpf/dirty_tracer.*), so the
 * map layouts and tracepoint names cannot drift between the two sides.
 * Plain C types only: this is compiled by clang -target bpf and by g++. */
#ifndef FERRY_BPF_DIRTY_PAGES_H
#define FERRY_BPF_DIRTY_PAGES_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* KVM pushed a dirty GFN to a vCPU's dirty ring (KVM_CAP_DIRTY_LOG_RING). */
#define DIRTY_TP_RING_CATEGORY "kvm"
#define DIRTY_TP_RING_NAME "kvm_dirty_ring_push"
/* A fast page fault; counted only when it made a write-protected SPTE
 * writable on a write, i.e. KVM un-protecting a page for dirty logging. */
#define DIRTY_TP_WP_CATEGORY "kvmmmu"
#define DIRTY_TP_WP_NAME "fast_page_fault"

/* Where a dirty event came from (the tracepoint). */
enum dirty_source {
	DIRTY_SOURCE_RING = 0,
	DIRTY_SOURCE_WP = 1,
};

/* Page-map slot for DIRTY_SOURCE_WP events: that tracepoint names an
 * address, not a memslot, so the page is cr2_or_gpa >> 12 instead of an
 * offset within a slot. */
#define DIRTY_SLOT_NONE 0xffffffffu

/* Capacities. The vCPU map holds a handful of keys per VM. The page map is
 * an LRU shared by every traced VM: past DIRTY_PAGE_ENTRIES distinct pages
 * (1 GiB of 4 KiB pages) the kernel evicts roughly the least recently
 * dirtied ones. An evicted page loses its count; dirtied again, it comes
 * back with a count of 1 and a new first_seen. So cold pages drop out of
 * the working set first, and hot pages keep exact counts. Preallocated:
 * 26 MiB (about 104 bytes an entry, as bpftool reports its memlock). */
#define DIRTY_VCPU_ENTRIES 4096
#define DIRTY_PAGE_ENTRIES 262144
#define DIRTY_EVENTS_BYTES (16 * 1024)

struct dirty_vcpu_key {
	__u32 tgid;   /* as seen in the loader's pid namespace */
	__u32 tid;
	__u32 vcpu;   /* ring: the vCPU's index; wp: its KVM vcpu_id */
	__u32 source; /* enum dirty_source */
};

struct dirty_vcpu_value {
	__u64 events;
};

struct dirty_page_key {
	__u32 tgid;
	__u32 slot; /* as_id << 16 | slot id, or DIRTY_SLOT_NONE */
	__u64 page; /* page offset within the slot, or address >> 12 */
};

struct dirty_page_value {
	__u64 count;         /* atomically added */
	__u64 first_seen_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 last_seen_ns;
};

/* Sent on the ring buffer once per vCPU-map key, when the key is created:
 * a new VM process, or a vCPU thread of it, dirtied its first page. Rare by
 * construction (a few per VM), so `--all` can name new VMs as they appear
 * without polling the maps. */
struct dirty_first_event {
	struct dirty_vcpu_key key;
	__u64 ts_ns;
};

/* Per-CPU failure counters (one-entry array): what the tracer lost. */
struct dirty_drops {
	__u64 vcpu_map_full;    /* vCPU key not inserted: counts lost */
	__u64 page_insert;      /* page key not inserted (LRU memory): page lost */
	__u64 events_full;      /* ring buffer full: first-event record lost */
};

#endif /* FERRY_BPF_DIRTY_PAGES_H */
