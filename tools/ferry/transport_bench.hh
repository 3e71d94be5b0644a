#pragma once
// `ferry bench-transport`'s moving parts (cmd_bench_transport.cc runs them
// and prints): guest-like memory, the paths (loopback, or a veth pair
// between two network namespaces made for the run), and the transfers
// timed on them: the engine's page path (migration/page_path.hh, the very
// functions the source and the destination run), raw TCP send()/recv() of
// the same byte count, and memcpy.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "userspace/base/error.hh"
#include "userspace/base/unique_fd.hh"
#include "kvm/guest_memory.hh"
#include "userspace/transport/tls.hh"

namespace ferry::cli::bench {

// Wall time (steady_clock) and the CPU time the whole process spent
// meanwhile (getrusage: user + system, every thread, both ends).
struct Timing {
  double seconds = 0;
  double cpu_seconds = 0;
};

// Fills `r` like a guest's memory: `zero_share` (0..1) of its pages, picked
// at random (fixed seed), hold zeros, written so that they exist in the
// memfd as a guest's freed pages do; the others hold random bytes.
// Returns the number of zero pages.
std::uint64_t fill_guest_like(const kvm::GuestRegion& r, double zero_share);
// Gives every page back (FALLOC_FL_PUNCH_HOLE): fresh memory, as an
// incoming VM's, whose first touch faults in a zeroed page. With
// `populate`, then maps every page again, zeroed (MADV_POPULATE_WRITE), so
// a transfer into it pays no page faults.
Status reset_memory(const kvm::GuestRegion& r, bool populate);
// Touches every page (reads a word of each): on hosts where translations
// go cold after other memory churns (a PVM guest's shadow page tables:
// about 3 us per page to rebuild, more than copying the page), the timed
// transfers then start from the same warm state a running guest's memory is in.
void touch_pages(const kvm::GuestRegion& r);
// The first page where the two regions differ, or none.
std::optional<std::uint64_t> first_difference(const kvm::GuestRegion& a, const kvm::GuestRegion& b);

// page_checksum() bytes/s on one thread, over up to `max_bytes` of the
// region's non-zero pages; 0 when it has none.
double checksum_rate(const kvm::GuestRegion& r, std::uint64_t max_bytes);
// One memcpy of the whole region, on this thread.
Timing time_memcpy(const kvm::GuestRegion& from, const kvm::GuestRegion& to);

// A connected TCP connection made like the migration's (transport/tcp.cc):
// `tx` at the sending end, `rx` at the receiving end.
struct SocketPair {
  UniqueFd tx, rx;
};

struct Path {
  std::string name;                // "loopback", "veth"
  std::string address;             // where the receiving end listens
  std::string tx_netns, rx_netns;  // network namespaces of the ends; empty: this process's
};
Path loopback_path();
// With `tls`, each pair is then secured as a migration's is (TLS 1.3:
// kernel TLS, or the userspace relay); `handshake_ms` gets the mean
// handshake time and `channel` what secured them.
struct TlsSetup {
  const transport::Security* security = nullptr;
  double handshake_ms = 0;
  std::string channel;
  bool userspace = false;  // the relay even where the kernel has TLS
};
Result<std::vector<SocketPair>> connect_pairs(const Path& p, std::uint32_t n, TlsSetup* tls = nullptr);

// Two network namespaces joined by a veth pair (169.254.77.1/30 and
// 169.254.77.2/30: link-local, and only inside them). Needs root and `ip`.
// The destructor deletes both namespaces (and with them the veth), and so
// does SIGINT/SIGTERM/SIGHUP while the object exists.
class VethPair {
 public:
  static Result<std::unique_ptr<VethPair>> create();
  ~VethPair();
  VethPair(const VethPair&) = delete;
  VethPair& operator=(const VethPair&) = delete;
  Path path() const;

 private:
  VethPair() = default;
  std::string ip_, tx_ns_, rx_ns_;
};

struct EngineFigures {
  Timing t;
  std::uint64_t pages = 0, zero_pages = 0;                 // sent: with data, as markers
  std::uint64_t pages_verified = 0, zero_pages_received = 0;  // received
  std::uint64_t checksum_failures = 0;
  std::uint64_t bytes_sent = 0, bytes_received = 0;  // frame bytes, headers included
};
// Every page of `from` into `to` (fresh memory) through the engine's page
// path, as one round over the pairs' streams: page p goes on stream
// (p / 512) % streams, as the engine's stream_of(). Fails on a transport
// error, an unexpected frame, or a page that fails its checksum (memory
// does not change here, so none may).
Result<EngineFigures> run_engine(std::vector<SocketPair> pairs, const kvm::GuestRegion& from,
                                 const kvm::GuestRegion& to);

struct RawFigures {
  Timing t;
  std::uint64_t bytes = 0;
};
// At least `bytes` (rounded up to 1 MiB per stream) from `from` into `to`
// with plain send()/recv() in 1 MiB chunks, split evenly over the pairs,
// each stream from its own offset, wrapping around the region. With
// `hot_chunk`, each stream sends its first chunk again and again into one
// chunk: buffers that stay in cache and TLB, what the link itself carries.
Result<RawFigures> run_raw(std::vector<SocketPair> pairs, const kvm::GuestRegion& from, const kvm::GuestRegion& to,
                           std::uint64_t bytes, bool hot_chunk = false);

}  // namespace ferry::cli::bench
