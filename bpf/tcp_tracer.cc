#include "bpf/tcp_tracer.hh"

#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string_view>

#include <bpf/libbpf.h>
#include <fmt/format.h>

#include "bpf/libbpf_log.hh"
#include "bpf/load_errors.hh"
#include "bpf/tcp_conn.h"
#include "tcp_conn.skel.h"

namespace ferry::bpf {
namespace {

constexpr std::string_view kProgram = "tcp_conn";

std::string endpoint(uint16_t family, const uint8_t (&addr)[16], uint16_t port) {
  char text[INET6_ADDRSTRLEN] = "?";
  if (family == AF_INET6) {
    ::inet_ntop(AF_INET6, addr, text, sizeof text);
    return fmt::format("[{}]:{}", text, port);
  }
  ::inet_ntop(AF_INET, addr, text, sizeof text);
  return fmt::format("{}:{}", text, port);
}

TcpConnStats to_stats(uint64_t cookie, const tcp_conn_stats& raw) {
  return TcpConnStats{
      .cookie = cookie,
      .local = endpoint(raw.tuple.family, raw.tuple.laddr, raw.tuple.lport),
      .remote = endpoint(raw.tuple.family, raw.tuple.raddr, raw.tuple.rport),
      .local_port = raw.tuple.lport,
      .remote_port = raw.tuple.rport,
      .srtt_us = static_cast<double>(raw.srtt_us),
      .cwnd_segments = raw.cwnd,
      .ssthresh = raw.ssthresh,
      .snd_wnd_bytes = raw.snd_wnd,
      .mss = raw.mss,
      .bytes_acked = raw.bytes_acked,
      .retransmits = raw.retransmits,
      .samples = raw.samples,
      .last_update_ns = raw.last_update_ns,
  };
}

}  // namespace

double TcpConnStats::capacity_bytes_per_s() const {
  if (srtt_us <= 0 || mss == 0 || cwnd_segments == 0) return 0;
  return static_cast<double>(cwnd_segments) * mss / (srtt_us * 1e-6);
}

void TcpTracer::SkeletonDeleter::operator()(tcp_conn_bpf* skel) const {
  tcp_conn_bpf__destroy(skel);
}

Result<TcpTracer> TcpTracer::open() {
  install_libbpf_logging();
  SkeletonPtr skel(tcp_conn_bpf__open());
  if (!skel) return std::unexpected(load_error(kProgram, "open", errno));
  if (int err = tcp_conn_bpf__load(skel.get()); err != 0) {
    return std::unexpected(load_error(kProgram, "load", -err));
  }

  struct Attachment {
    bpf_program* prog;
    bpf_link** link;  // in the skeleton, so destroy() detaches it
    std::string_view tracepoint;
  };
  const Attachment attachments[] = {
      {skel->progs.handle_tcp_probe, &skel->links.handle_tcp_probe, "tcp/tcp_probe"},
      {skel->progs.handle_retransmit, &skel->links.handle_retransmit,
       "tcp/tcp_retransmit_skb"},
      {skel->progs.handle_set_state, &skel->links.handle_set_state,
       "sock/inet_sock_set_state"},
  };
  for (const Attachment& a : attachments) {
    bpf_link* link = bpf_program__attach(a.prog);
    if (!link) return std::unexpected(attach_error(kProgram, a.tracepoint, errno));
    *a.link = link;
  }
  return TcpTracer(std::move(skel));
}

Status TcpTracer::watch_port(uint16_t port) {
  if (!skel_) return fail("watch port {}: {} is not loaded", port, kProgram);
  if (port == 0) return fail("watch port 0: not a connection's port");
  const uint8_t on = 1;
  if (bpf_map__update_elem(skel_->maps.watched_ports, &port, sizeof port, &on, sizeof on,
                           BPF_ANY) != 0) {
    const int e = errno;
    if (e == E2BIG) {
      return fail("watch port {}: already watching the maximum of {} ports", port,
                  TCP_CONN_MAX_PORTS);
    }
    return std::unexpected(sys_error(fmt::format("watch port {}: update watched_ports", port), e));
  }
  return {};
}

Result<std::vector<TcpConnStats>> TcpTracer::connections() const {
  if (!skel_) return fail("read connections: {} is not loaded", kProgram);
  const bpf_map* map = skel_->maps.conns;

  // Keys first. If the kernel evicts the key we stand on, the walk starts
  // over from the first key: the bound stops it, sorting drops repeats.
  std::vector<uint64_t> keys;
  uint64_t key = 0;
  const uint64_t* prev = nullptr;  // nullptr: start from the first key
  while (keys.size() < 2 * TCP_CONN_MAX_CONNS &&
         bpf_map__get_next_key(map, prev, &key, sizeof key) == 0) {
    keys.push_back(key);
    prev = &keys.back();
  }
  if (keys.size() < 2 * TCP_CONN_MAX_CONNS && errno != ENOENT) {
    const int e = errno;
    return std::unexpected(sys_error("read connections: iterate conns", e));
  }
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());

  std::vector<TcpConnStats> out;
  out.reserve(keys.size());
  for (uint64_t cookie : keys) {
    tcp_conn_stats raw{};
    if (bpf_map__lookup_elem(map, &cookie, sizeof cookie, &raw, sizeof raw, 0) != 0) {
      const int e = errno;
      if (e == ENOENT) continue;  // evicted since we saw its key
      return std::unexpected(sys_error("read connections: lookup in conns", e));
    }
    out.push_back(to_stats(cookie, raw));
  }
  return out;
}

}  // namespace ferry::bpf
