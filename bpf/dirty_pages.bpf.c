// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Who dirties which guest pages, measured inside KVM: per vCPU thread and
 * per page, aggregated in the kernel so userspace only reads totals.
 *
 * Two sources, because a VM uses one of two dirty-logging backends:
 *   ring  kvm:kvm_dirty_ring_push, once per page per harvest/reset cycle;
 *   wp    kvmmmu:fast_page_fault that un-write-protected a page on a write,
 *         which is how KVM notices the first write to a page it
 *         write-protected for dirty logging (bitmap VMs; ring VMs too).
 * Fields are read through vmlinux.h's trace_event_raw_* types: CO-RE
 * relocates them to the running kernel (6.1 keeps them in the kvm module's
 * BTF, 6.18 in vmlinux when KVM is built in). */
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "dirty_pages.h"

#define EEXIST 17 /* vmlinux.h carries no errno values */

/* Architectural bits, the same in EPT, NPT and shadow-paging SPTEs and in
 * the x86 page-fault error code. RET_PF_* would be simpler but was
 * renumbered between 6.1 and 6.18. */
#define SPTE_READABLE (1ull << 0) /* NPT/shadow: present; EPT: readable */
#define SPTE_WRITABLE (1ull << 1) /* PT_WRITABLE_MASK, EPT write */
#define PFERR_WRITE (1ull << 1)

/* Set by the loader before load (frozen rodata: the verifier prunes the
 * branches not taken, and the hot path costs no map lookup). The target is
 * fixed for a tracer's life; tracing another VM is another tracer, which
 * loads in milliseconds. */
const volatile __u32 target_tgid = 0; /* 0: every process (--all) */
/* 1: also count write faults of threads that push to a dirty ring (tests
 * use it to check the fault filter on ring VMs); 0 skips them. */
const volatile __u8 wp_under_ring = 0;
/* 0: per-vCPU counts only; the pages map is then shrunk to one entry. */
const volatile __u8 count_pages = 1;
/* The caller's pid namespace. In the initial one, global ids are the
 * caller's view and also cover VMs inside containers; elsewhere the
 * namespace helper translates, and tasks it cannot see are skipped. */
const volatile __u8 use_global_ids = 1;
const volatile __u64 pidns_dev = 0;
const volatile __u64 pidns_ino = 0;

/* Per-CPU: vCPUs on different CPUs never contend for one counter's cache
 * line and counting needs no atomics; userspace sums the CPUs. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, DIRTY_VCPU_ENTRIES);
	__type(key, struct dirty_vcpu_key);
	__type(value, struct dirty_vcpu_value);
} vcpu_counts SEC(".maps");

/* Shared (not per-CPU) so a page's count and timestamps are one value
 * whichever vCPU dirtied it; see DIRTY_PAGE_ENTRIES for what eviction
 * does. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, DIRTY_PAGE_ENTRIES);
	__type(key, struct dirty_page_key);
	__type(value, struct dirty_page_value);
} pages SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, DIRTY_EVENTS_BYTES);
} first_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dirty_drops);
} drops SEC(".maps");

static __always_inline struct dirty_drops *drop_counters(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&drops, &zero);
}

/* The current task's tgid and tid in the caller's view; false when it is
 * not the traced process or not visible from the caller's namespace. */
static __always_inline bool current_ids(__u32 *tgid, __u32 *tid)
{
	if (use_global_ids) {
		__u64 id = bpf_get_current_pid_tgid();
		*tgid = id >> 32;
		*tid = (__u32)id;
	} else {
		struct bpf_pidns_info ns = {};
		if (bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, &ns, sizeof(ns)))
			return false;
		*tgid = ns.tgid;
		*tid = ns.pid;
	}
	return target_tgid == 0 || *tgid == target_tgid;
}

static __always_inline void count_vcpu(struct dirty_vcpu_key *key, __u64 now)
{
	struct dirty_vcpu_value *v = bpf_map_lookup_elem(&vcpu_counts, key);
	if (v) {
		/* Classic tracepoints run their programs with preemption off,
		 * so nothing else touches this CPU's slot meanwhile. */
		v->events++;
		return;
	}
	struct dirty_vcpu_value one = {.events = 1};
	long err = bpf_map_update_elem(&vcpu_counts, key, &one, BPF_NOEXIST);
	if (err == 0) {
		/* Only the creator of a key reports it: one record per key. */
		struct dirty_first_event *e =
			bpf_ringbuf_reserve(&first_events, sizeof(*e), 0);
		if (e) {
			e->key = *key;
			e->ts_ns = now;
			bpf_ringbuf_submit(e, 0);
		} else {
			struct dirty_drops *d = drop_counters();
			if (d)
				d->events_full++;
		}
		return;
	}
	if (err == -EEXIST) {
		/* Another CPU created it between our lookup and update. */
		v = bpf_map_lookup_elem(&vcpu_counts, key);
		if (v) {
			v->events++;
			return;
		}
	}
	struct dirty_drops *d = drop_counters();
	if (d)
		d->vcpu_map_full++;
}

static __always_inline void count_page(__u32 tgid, __u32 slot, __u64 page,
				       __u64 now)
{
	struct dirty_page_key key = {.tgid = tgid, .slot = slot, .page = page};
	struct dirty_page_value *p = bpf_map_lookup_elem(&pages, &key);
	if (!p) {
		struct dirty_page_value first = {
			.count = 1, .first_seen_ns = now, .last_seen_ns = now};
		long err = bpf_map_update_elem(&pages, &key, &first, BPF_NOEXIST);
		if (err == 0)
			return;
		p = err == -EEXIST ? bpf_map_lookup_elem(&pages, &key) : NULL;
		if (!p) {
			struct dirty_drops *d = drop_counters();
			if (d)
				d->page_insert++;
			return;
		}
	}
	/* Two vCPUs can dirty one page at once: the count is atomic. The
	 * timestamp is a plain store; racing writers differ by nanoseconds. */
	__sync_fetch_and_add(&p->count, 1);
	p->last_seen_ns = now;
}

static __always_inline void record(__u32 tgid, __u32 tid, __u32 vcpu,
				   __u32 source, __u32 slot, __u64 page)
{
	__u64 now = bpf_ktime_get_ns();
	struct dirty_vcpu_key key = {
		.tgid = tgid, .tid = tid, .vcpu = vcpu, .source = source};
	count_vcpu(&key, now);
	if (count_pages)
		count_page(tgid, slot, page, now);
}

/* The two tracepoints' records, declared here rather than taken from
 * vmlinux.h: where KVM is a module (Debian's 6.1) its trace_event_raw_*
 * types are in the module's BTF, not in the vmlinux.h this is built
 * against. libbpf drops the ___ferry suffix and relocates each field
 * against the running kernel's type, module BTF included (and shrinks the
 * error_code load where the field is a u32, as on 6.1). */
struct trace_event_raw_kvm_dirty_ring_push___ferry {
	int index;
	__u32 slot;
	__u64 offset;
} __attribute__((preserve_access_index));

struct trace_event_raw_fast_page_fault___ferry {
	int vcpu_id;
	__u64 cr2_or_gpa;
	__u64 error_code;
	__u64 old_spte;
	__u64 new_spte;
} __attribute__((preserve_access_index));

SEC("tracepoint/" DIRTY_TP_RING_CATEGORY "/" DIRTY_TP_RING_NAME)
int on_ring_push(struct trace_event_raw_kvm_dirty_ring_push___ferry *ctx)
{
	__u32 tgid, tid;
	if (!current_ids(&tgid, &tid))
		return 0;
	/* Runs on the vCPU thread; index is the vCPU's index (its ring). */
	record(tgid, tid, (__u32)ctx->index, DIRTY_SOURCE_RING, ctx->slot,
	       ctx->offset);
	return 0;
}

SEC("tracepoint/" DIRTY_TP_WP_CATEGORY "/" DIRTY_TP_WP_NAME)
int on_fast_page_fault(struct trace_event_raw_fast_page_fault___ferry *ctx)
{
	/* error_code is u32 on 6.1 and u64 on 6.18: CO-RE resizes the load,
	 * and the write bit is in the low half either way. */
	__u64 error_code = ctx->error_code;
	__u64 old_spte = ctx->old_spte;
	__u64 new_spte = ctx->new_spte;
	/* Every ctx field is read here, up front: the verifier refuses loads
	 * through a ctx pointer the compiler has offset and kept. */
	__u32 vcpu_id = (__u32)ctx->vcpu_id;
	__u64 address = ctx->cr2_or_gpa;

	/* A write that turned a readable, read-only SPTE writable: KVM
	 * un-protecting a page it write-protected to log it. Requiring the
	 * old SPTE to be readable excludes EPT access-tracked SPTEs (all
	 * permission bits cleared), whose restoration is not dirtying. */
	if (!(error_code & PFERR_WRITE) || !(old_spte & SPTE_READABLE) ||
	    (old_spte & SPTE_WRITABLE) || !(new_spte & SPTE_WRITABLE))
		return 0;

	__u32 tgid, tid;
	if (!current_ids(&tgid, &tid))
		return 0;
	/* A dirty-ring VM on AMD fires this and the ring push for the same
	 * write. Once this thread's ring key exists (keys of a per-CPU hash
	 * are shared by all CPUs, so one lookup finds it), the ring program
	 * counts the write: stop here, which halves what tracing adds to a
	 * logged write (measured by `ferry bench-trace`). */
	struct dirty_vcpu_key ring_key = {.tgid = tgid, .tid = tid,
		.vcpu = vcpu_id, .source = DIRTY_SOURCE_RING};
	if (!wp_under_ring && bpf_map_lookup_elem(&vcpu_counts, &ring_key))
		return 0;
	/* With TDP (EPT/NPT) cr2_or_gpa is a guest-physical address; under
	 * shadow paging it is the faulting guest-virtual address, so the
	 * "page" is then a virtual page of whichever guest process wrote. */
	record(tgid, tid, vcpu_id, DIRTY_SOURCE_WP, DIRTY_SLOT_NONE,
	       address >> 12);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
