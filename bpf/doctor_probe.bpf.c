// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* `ferry doctor`'s proof that a CO-RE tracepoint program loads, attaches and
 * runs on this host: it counts getppid() calls made by one target process. */
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "doctor_probe.h"

/* Set by userspace before load. The tgid is as seen in the caller's pid
 * namespace (identified by the nsfs dev/inode of /proc/self/ns/pid), so the
 * filter is right inside containers too, where getpid() differs from the
 * kernel's global tgid. */
const volatile __u32 target_tgid = 0;
const volatile __u64 target_pidns_dev = 0;
const volatile __u64 target_pidns_ino = 0;

struct doctor_probe_counters counters = {};

SEC("tracepoint/" DOCTOR_PROBE_TP_CATEGORY "/" DOCTOR_PROBE_TP_NAME)
int handle_getppid(void *ctx)
{
	struct bpf_pidns_info ns = {};

	if (bpf_get_ns_current_pid_tgid(target_pidns_dev, target_pidns_ino,
					&ns, sizeof(ns)))
		return 0; /* current task is outside the caller's namespace */
	if (ns.tgid != target_tgid)
		return 0;

	__sync_fetch_and_add(&counters.hits, 1);

	/* Exercise a real CO-RE relocation: task_struct's layout differs
	 * between kernels, so a wrong offset would read garbage here. */
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 core_tgid = BPF_CORE_READ(task, tgid);
	if (core_tgid != (__u32)(bpf_get_current_pid_tgid() >> 32))
		__sync_fetch_and_add(&counters.core_mismatches, 1);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
