/* Shared by tcp_conn.bpf.c and its userspace loader (tcp_tracer.cc), so the
 * map layouts cannot drift between the two sides.
 * Plain C types only: this is compiled by clang -target bpf and by g++. */
#ifndef FERRY_BPF_TCP_CONN_H
#define FERRY_BPF_TCP_CONN_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Ports userspace may register (local or remote side of a connection). */
#define TCP_CONN_MAX_PORTS 64
/* Connections tracked at once. The maps are LRU: connections that closed
 * long ago are the ones evicted when migrations come and go. */
#define TCP_CONN_MAX_CONNS 4096

/* A connection's addresses as the socket sees them. IPv4 addresses sit in
 * the first 4 bytes of laddr/raddr (the rest zero); IPv6 use all 16. Also
 * the key of the tuple -> socket map, so every byte (pad included) must be
 * written before use. */
struct tcp_conn_tuple {
	__u16 family; /* AF_INET or AF_INET6 */
	__u16 lport;  /* host byte order */
	__u16 rport;  /* host byte order */
	__u16 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

/* Value of the `conns` map, keyed by the socket cookie (__u64). Latest
 * values are copied from the most recent tcp_probe event, which fires
 * before the kernel processes that incoming segment. */
struct tcp_conn_stats {
	struct tcp_conn_tuple tuple;
	__u64 sk;	      /* struct sock *, 0 until known (for mss) */
	__u64 bytes_acked;    /* sum of snd_una advances since the first sample */
	__u64 retransmits;    /* retransmitted skbs that were sent */
	__u64 samples;	      /* tcp_probe events seen */
	__u64 last_update_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 last_snd_una;
	__u32 srtt_us;	/* smoothed RTT in microseconds (tcp_probe's srtt) */
	__u32 cwnd;	/* congestion window, segments */
	__u32 ssthresh; /* tcp_current_ssthresh(); 0x7fffffff = none yet */
	__u32 snd_wnd;	/* peer's receive window, bytes */
	__u32 mss;	/* tcp_sock::mss_cache, bytes; 0 if sk unknown */
};

#endif /* FERRY_BPF_TCP_CONN_H */
