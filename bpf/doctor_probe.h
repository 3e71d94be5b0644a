/* Shared by doctor_probe.bpf.c and its userspace loader, so the counter
 * layout and the tracepoint name cannot drift between the two sides.
 * Plain C types only: this is compiled by clang -target bpf and by g++. */
#ifndef FERRY_BPF_DOCTOR_PROBE_H
#define FERRY_BPF_DOCTOR_PROBE_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* getppid(2) has its own syscall tracepoint on every kernel built with
 * CONFIG_FTRACE_SYSCALLS (Debian 6.1, the 6.18 host), takes no arguments,
 * is never cached by glibc, and is rare enough that the probe's own calls
 * dominate. Userspace can therefore trigger it an exact number of times. */
#define DOCTOR_PROBE_TP_CATEGORY "syscalls"
#define DOCTOR_PROBE_TP_NAME "sys_enter_getppid"

struct doctor_probe_counters {
	/* Tracepoint hits from the target process. */
	__u64 hits;
	/* Hits where a CO-RE read of current->tgid disagreed with the
	 * helper's answer: non-zero means relocation against this kernel's
	 * BTF went wrong even though the program loaded. */
	__u64 core_mismatches;
};

#endif /* FERRY_BPF_DOCTOR_PROBE_H */
