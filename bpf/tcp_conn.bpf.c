// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* What the kernel's TCP stack knows about Ferry's migration connections:
 * RTT, congestion window, MSS, bytes acknowledged and retransmissions, per
 * connection, for connections whose local or remote port userspace has
 * registered. Everything else costs the two watched_ports lookups.
 *
 * Keyed by socket cookie rather than by the struct sock pointer: a cookie is
 * never reused for the life of the boot, while a freed sock's address comes
 * back for the next connection and would inherit a dead one's counters.
 * tcp_probe carries the cookie on every kernel we support; for the events
 * that do not, the cookie is read from the socket (sock_gen_cookie() stored
 * it there the first time tcp_probe fired).
 *
 * One plain (LRU) hash entry per connection, not per-CPU values: every
 * writer of an entry (tcp_probe in tcp_rcv_established, retransmits from
 * the ACK path or the retransmit timer, state changes) runs under that
 * socket's lock, so the read-modify-write updates cannot race, and only the
 * CPU handling the socket touches the line. Per-CPU copies would only spread
 * one socket's counters over CPUs for userspace to add up. */
#include "vmlinux.h"

#include <bpf/bpf_core_read.h>
#include <bpf/bpf_helpers.h>

#include "tcp_conn.h"

#define AF_INET 2
#define AF_INET6 10

/* Fields that only some kernels have. The ___suffix is dropped by libbpf
 * when it matches types against the running kernel's BTF, and defining them
 * here keeps the object buildable against any kernel's vmlinux.h. */

/* tcp_probe has skaddr on newer kernels (the 6.18 host), not on 6.1. */
struct trace_event_raw_tcp_probe___skaddr {
	const void *skaddr;
} __attribute__((preserve_access_index));

/* On newer kernels (6.18) tcp_retransmit_skb is its own event, fired also
 * for retransmits that failed to go out (err != 0)... */
struct trace_event_raw_tcp_retransmit_skb___err {
	const void *skaddr;
	__u16 sport;
	__u16 dport;
	int err;
} __attribute__((preserve_access_index));

/* ...on 6.1 it is an instance of the tcp_event_sk_skb class, fired only
 * for retransmits that were sent. */
struct trace_event_raw_tcp_event_sk_skb___old {
	const void *skaddr;
	__u16 sport;
	__u16 dport;
} __attribute__((preserve_access_index));

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, TCP_CONN_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} watched_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TCP_CONN_MAX_CONNS);
	__type(key, __u64); /* socket cookie */
	__type(value, struct tcp_conn_stats);
} conns SEC(".maps");

/* Only for kernels whose tcp_probe lacks skaddr: inet_sock_set_state (which
 * has it) records each TCP connection's sock when it is established, so
 * tcp_probe can find it by address to read mss_cache. Connections
 * established before the tracer was loaded stay without mss there. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, TCP_CONN_MAX_CONNS);
	__type(key, struct tcp_conn_tuple);
	__type(value, __u64); /* struct sock * */
} socks_by_tuple SEC(".maps");

static __always_inline bool watched(__u16 lport, __u16 rport)
{
	return bpf_map_lookup_elem(&watched_ports, &lport) ||
	       bpf_map_lookup_elem(&watched_ports, &rport);
}

static __always_inline bool probe_has_skaddr(void)
{
	return bpf_core_field_exists(
		((struct trace_event_raw_tcp_probe___skaddr *)0)->skaddr);
}

/* tcp_probe stores addresses as a sockaddr_in or sockaddr_in6 image. */
static __always_inline void addr_from_sockaddr(__u8 dst[16], const void *src,
					       __u16 family)
{
	if (family == AF_INET6) {
		struct sockaddr_in6 sa = {};
		bpf_probe_read_kernel(&sa, sizeof(sa), src);
		__builtin_memcpy(dst, &sa.sin6_addr, 16);
	} else {
		struct sockaddr_in sa = {};
		bpf_probe_read_kernel(&sa, sizeof(sa), src);
		__builtin_memcpy(dst, &sa.sin_addr, 4);
	}
}

/* The same tuple tcp_probe reports, read from the socket itself. */
static __always_inline void tuple_from_sock(struct tcp_conn_tuple *t,
					    const struct sock *sk)
{
	t->family = BPF_CORE_READ(sk, __sk_common.skc_family);
	t->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	t->rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (t->family == AF_INET6) {
		BPF_CORE_READ_INTO(t->laddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(t->raddr, sk, __sk_common.skc_v6_daddr);
	} else {
		BPF_CORE_READ_INTO((__u32 *)t->laddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)t->raddr, sk, __sk_common.skc_daddr);
	}
}

/* The entry for `cookie`, created from `tuple` if missing. */
static __always_inline struct tcp_conn_stats *
conn_entry(__u64 cookie, const struct tcp_conn_tuple *tuple)
{
	struct tcp_conn_stats *st = bpf_map_lookup_elem(&conns, &cookie);
	if (st)
		return st;
	struct tcp_conn_stats fresh = {};
	fresh.tuple = *tuple;
	bpf_map_update_elem(&conns, &cookie, &fresh, BPF_NOEXIST);
	return bpf_map_lookup_elem(&conns, &cookie);
}

SEC("tracepoint/tcp/tcp_probe")
int handle_tcp_probe(struct trace_event_raw_tcp_probe *ctx)
{
	__u16 lport = ctx->sport, rport = ctx->dport;

	if (!watched(lport, rport))
		return 0;

	struct tcp_conn_tuple tuple = {};
	tuple.family = ctx->family;
	tuple.lport = lport;
	tuple.rport = rport;
	addr_from_sockaddr(tuple.laddr, &ctx->saddr, tuple.family);
	addr_from_sockaddr(tuple.raddr, &ctx->daddr, tuple.family);

	struct tcp_conn_stats *st = conn_entry(ctx->sock_cookie, &tuple);
	if (!st)
		return 0;

	if (!st->sk) {
		if (probe_has_skaddr()) {
			st->sk = (__u64)((struct trace_event_raw_tcp_probe___skaddr *)ctx)->skaddr;
		} else {
			__u64 *sk = bpf_map_lookup_elem(&socks_by_tuple, &tuple);
			if (sk)
				st->sk = *sk;
		}
	}
	/* Out of the map first: inside BPF_CORE_READ, st->sk itself would be
	 * relocated against the kernel's types, which have no tcp_conn_stats. */
	const struct tcp_sock *tp = (const struct tcp_sock *)st->sk;
	if (tp)
		st->mss = BPF_CORE_READ(tp, mss_cache);

	/* snd_una is sampled before this segment's ACK is processed, so each
	 * event sees the advance up to the previous one. The first sample
	 * only sets the baseline: what was acked before it is not ours. */
	__u32 snd_una = ctx->snd_una;
	if (st->samples == 0) {
		st->last_snd_una = snd_una;
	} else if ((__s32)(snd_una - st->last_snd_una) > 0) {
		st->bytes_acked += snd_una - st->last_snd_una; /* mod 2^32 */
		st->last_snd_una = snd_una;
	}
	st->srtt_us = ctx->srtt; /* the kernel stores tp->srtt_us >> 3 here */
	st->cwnd = ctx->snd_cwnd;
	st->ssthresh = ctx->ssthresh;
	st->snd_wnd = ctx->snd_wnd;
	st->samples++;
	st->last_update_ns = bpf_ktime_get_ns();
	return 0;
}

SEC("tracepoint/tcp/tcp_retransmit_skb")
int handle_retransmit(void *ctx)
{
	const struct sock *sk;
	__u16 lport, rport;

	/* BPF_CORE_READ, not direct loads: clang merges the two layouts' loads
	 * into one through a computed ctx pointer, which the verifier refuses. */
	if (bpf_core_type_exists(struct trace_event_raw_tcp_retransmit_skb___err)) {
		struct trace_event_raw_tcp_retransmit_skb___err *c = ctx;
		if (BPF_CORE_READ(c, err))
			return 0; /* not sent: the older kernels never report these */
		sk = BPF_CORE_READ(c, skaddr);
		lport = BPF_CORE_READ(c, sport);
		rport = BPF_CORE_READ(c, dport);
	} else {
		struct trace_event_raw_tcp_event_sk_skb___old *c = ctx;
		sk = BPF_CORE_READ(c, skaddr);
		lport = BPF_CORE_READ(c, sport);
		rport = BPF_CORE_READ(c, dport);
	}
	if (!watched(lport, rport))
		return 0;

	/* 0 until something asked for the cookie (tcp_probe, SO_COOKIE): a
	 * retransmit before the connection's first ACK cannot be keyed. */
	__u64 cookie = BPF_CORE_READ(sk, __sk_common.skc_cookie.counter);
	if (!cookie)
		return 0;

	struct tcp_conn_tuple tuple = {};
	tuple_from_sock(&tuple, sk);
	struct tcp_conn_stats *st = conn_entry(cookie, &tuple);
	if (st)
		st->retransmits++;
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int handle_set_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (probe_has_skaddr())
		return 0; /* tcp_probe names the socket itself */
	/* Every TCP connection, not just watched ports: callers register a
	 * socket's port after connect(), when this event has already fired.
	 * State changes are per connection, not per packet, so this is cheap. */
	if (ctx->protocol != IPPROTO_TCP)
		return 0;

	/* From the event, not the socket: on the way to TCP_CLOSE the kernel
	 * has already released the local port (inet_num = 0) when this fires. */
	struct tcp_conn_tuple tuple = {};
	tuple.family = ctx->family;
	tuple.lport = ctx->sport;
	tuple.rport = ctx->dport;
	if (tuple.family == AF_INET6) {
		bpf_probe_read_kernel(tuple.laddr, 16, &ctx->saddr_v6);
		bpf_probe_read_kernel(tuple.raddr, 16, &ctx->daddr_v6);
	} else {
		bpf_probe_read_kernel(tuple.laddr, 4, &ctx->saddr);
		bpf_probe_read_kernel(tuple.raddr, 4, &ctx->daddr);
	}
	if (ctx->newstate == TCP_ESTABLISHED) {
		__u64 sk = (__u64)ctx->skaddr;
		bpf_map_update_elem(&socks_by_tuple, &tuple, &sk, BPF_ANY);
	} else if (ctx->newstate == TCP_CLOSE) {
		bpf_map_delete_elem(&socks_by_tuple, &tuple);
	}
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
