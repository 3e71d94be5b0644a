#pragma once
// Loader for tcp_conn.bpf.c: what the kernel's TCP stack knows about the
// migration connections (RTT, congestion window, MSS, bytes acknowledged,
// retransmissions), gathered in the kernel for the ports Ferry registers.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "userspace/base/error.hh"

struct tcp_conn_bpf;  // generated skeleton (tcp_conn.skel.h)

namespace ferry::bpf {

// One connection as of the last segment it received (tcp_probe fires for
// every incoming segment on an established socket, so on a sender each ACK
// refreshes it).
struct TcpConnStats {
  uint64_t cookie = 0;  // socket cookie: getsockopt(fd, SOL_SOCKET, SO_COOKIE)
  std::string local;    // "127.0.0.1:5000", "[::1]:5000"
  std::string remote;
  uint16_t local_port = 0;
  uint16_t remote_port = 0;
  double srtt_us = 0;          // smoothed round-trip time, microseconds
  uint32_t cwnd_segments = 0;  // congestion window
  uint32_t ssthresh = 0;       // slow-start threshold, segments (0x7fffffff: none yet)
  uint32_t snd_wnd_bytes = 0;  // the peer's advertised receive window
  uint32_t mss = 0;            // bytes per segment; 0 when the socket is not known
  uint64_t bytes_acked = 0;    // acknowledged since the tracer first saw the connection
  uint64_t retransmits = 0;    // retransmissions sent (one per skb; TSO skbs hold several segments)
  uint64_t samples = 0;        // tcp_probe events counted
  uint64_t last_update_ns = 0; // CLOCK_MONOTONIC (bpf_ktime_get_ns) of the last sample

  // The window-limited rate: TCP keeps at most cwnd segments of mss bytes
  // unacknowledged per round trip, so cwnd * mss / srtt is what this
  // connection can carry right now if the sender keeps it fed (a smaller
  // peer window, snd_wnd_bytes, would limit it further). 0 when unknown.
  double capacity_bytes_per_s() const;
};

class TcpTracer {
 public:
  // Loads the programs and attaches them to tcp:tcp_probe,
  // tcp:tcp_retransmit_skb and sock:inet_sock_set_state. Nothing is
  // recorded until a port is watched.
  static Result<TcpTracer> open();

  // Records connections whose local or remote port is `port` (from now on;
  // at most TCP_CONN_MAX_PORTS ports). Watching a port twice is a no-op.
  Status watch_port(uint16_t port);

  // Every connection recorded so far, including ones since closed, until
  // the kernel map evicts them (least recently updated first).
  Result<std::vector<TcpConnStats>> connections() const;

  TcpTracer(TcpTracer&&) noexcept = default;
  TcpTracer& operator=(TcpTracer&&) noexcept = default;
  TcpTracer(const TcpTracer&) = delete;
  TcpTracer& operator=(const TcpTracer&) = delete;
  ~TcpTracer() = default;

 private:
  // Destroying the skeleton detaches its links, then frees maps and programs.
  struct SkeletonDeleter {
    void operator()(tcp_conn_bpf* skel) const;
  };
  using SkeletonPtr = std::unique_ptr<tcp_conn_bpf, SkeletonDeleter>;

  explicit TcpTracer(SkeletonPtr skel) : skel_(std::move(skel)) {}

  SkeletonPtr skel_;
};

}  // namespace ferry::bpf
