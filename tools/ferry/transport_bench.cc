#include "userspace/base/io.hh"
#include "tools/ferry/transport_bench.hh"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "userspace/migration/digest.hh"
#include "userspace/migration/page_ledger.hh"
#include "userspace/migration/page_path.hh"
#include "userspace/transport/receiver.hh"
#include "userspace/transport/sender.hh"
#include "userspace/transport/tcp.hh"

extern char** environ;

namespace ferry::cli::bench {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
constexpr std::uint64_t kPage = kvm::kPageSize;
constexpr std::uint64_t kChunk = 1 << 20;  // raw TCP: bytes per send()/recv()

class Stopwatch {
 public:
  Stopwatch() : t0_(Clock::now()), cpu0_(cpu_now()) {}
  Timing stop() const {
    return {std::chrono::duration<double>(Clock::now() - t0_).count(), cpu_now() - cpu0_};
  }

 private:
  static double cpu_now() {
    rusage u{};
    ::getrusage(RUSAGE_SELF, &u);
    auto s = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
    return s(u.ru_utime) + s(u.ru_stime);
  }
  Clock::time_point t0_;
  double cpu0_;
};

std::uint64_t splitmix64(std::uint64_t& s) {
  std::uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Runs fn on a thread that joined the network namespace `ns` (`ip netns`
// name; empty: here). A socket stays in the namespace it was made in, so
// what fn returns works from any thread afterwards.
template <class F>
auto in_netns(const std::string& ns, F&& fn) -> decltype(fn()) {
  if (ns.empty()) return fn();
  std::optional<decltype(fn())> out;
  std::thread([&] {
    const std::string path = "/var/run/netns/" + ns;
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd)
      out.emplace(fail_sys(fmt::format("open {}", path)));
    else if (::setns(fd.get(), CLONE_NEWNET) != 0)
      out.emplace(fail_sys(fmt::format("setns {}", path)));
    else
      out.emplace(fn());
  }).join();
  return std::move(*out);
}

// Runs `ip args...`; fails with its output when it fails.
Status run_ip(const std::string& ip, const std::vector<std::string>& args) {
  std::vector<std::string> all{ip};
  all.insert(all.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : all) argv.push_back(a.data());
  argv.push_back(nullptr);
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return fail_sys("pipe2");
  const pid_t pid = ::fork();
  if (pid < 0) return fail_sys("fork");
  if (pid == 0) {
    ::dup2(p[1], 1);
    ::dup2(p[1], 2);
    ::execve(ip.c_str(), argv.data(), environ);
    ::_exit(127);
  }
  ::close(p[1]);
  std::string out;
  char buf[512];
  for (ssize_t n; (n = ::read(p[0], buf, sizeof buf)) > 0 || (n < 0 && errno == EINTR);)
    if (n > 0) out.append(buf, static_cast<std::size_t>(n));
  ::close(p[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return fail("`ip {}` failed: {}", fmt::join(args, " "), out.empty() ? "no output" : out.substr(0, out.find('\n')));
  return {};
}

// What the signal handler needs, prepared beforehand: it may only fork,
// exec and wait (async-signal-safe).
struct SignalCleanup {
  char ip[256] = {};
  char ns[2][64] = {};
  char netns[6] = "netns", del[4] = "del";
  struct sigaction old[3] = {};
} g_cleanup;
constexpr int kSignals[3] = {SIGINT, SIGTERM, SIGHUP};

extern "C" void delete_namespaces_on_signal(int sig) {
  for (auto* ns : g_cleanup.ns) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      char* argv[] = {g_cleanup.ip, g_cleanup.netns, g_cleanup.del, ns, nullptr};
      ::execve(g_cleanup.ip, argv, environ);
      ::_exit(127);
    }
    if (pid > 0) ::waitpid(pid, nullptr, 0);
  }
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

std::string find_ip() {
  for (const char* dir : {"/usr/sbin", "/sbin", "/usr/bin", "/bin"}) {
    const std::string p = std::string(dir) + "/ip";
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return {};
}



}  // namespace

std::uint64_t fill_guest_like(const kvm::GuestRegion& r, double zero_share) {
  std::uint64_t seed = 0x5eed, zeros = 0;
  const auto threshold = static_cast<std::uint64_t>(zero_share * 18446744073709551615.0);
  for (std::uint64_t p = 0; p < r.pages(); ++p) {
    auto* words = reinterpret_cast<std::uint64_t*>(r.host() + p * kPage);
    if (zero_share >= 1.0 || (zero_share > 0 && splitmix64(seed) < threshold)) {
      std::memset(words, 0, kPage);
      ++zeros;
      continue;
    }
    for (std::uint64_t w = 0; w < kPage / 8; ++w) words[w] = splitmix64(seed);
  }
  return zeros;
}

Status reset_memory(const kvm::GuestRegion& r, bool populate) {
  if (::fallocate(r.memfd(), FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(r.size())) != 0)
    return fail_sys("fallocate(PUNCH_HOLE) on the destination memfd");
  if (!populate) return {};
  if (::madvise(r.host(), r.size(), MADV_POPULATE_WRITE) != 0)
    return fail_sys("madvise(MADV_POPULATE_WRITE) on the destination memory");
  // Written, not read: a shadow MMU may map a page read-only on a read.
  for (std::uint64_t p = 0; p < r.pages(); ++p) *reinterpret_cast<volatile std::uint64_t*>(r.host() + p * kPage) = 0;
  return {};
}

void touch_pages(const kvm::GuestRegion& r) {
  std::uint64_t sink = 0;
  for (std::uint64_t p = 0; p < r.pages(); ++p) sink += *reinterpret_cast<volatile std::uint64_t*>(r.host() + p * kPage);
  [[maybe_unused]] volatile std::uint64_t keep = sink;
}

std::optional<std::uint64_t> first_difference(const kvm::GuestRegion& a, const kvm::GuestRegion& b) {
  for (std::uint64_t p = 0; p < a.pages(); ++p)
    if (std::memcmp(a.host() + p * kPage, b.host() + p * kPage, kPage) != 0) return p;
  return std::nullopt;
}

double checksum_rate(const kvm::GuestRegion& r, std::uint64_t max_bytes) {
  std::vector<std::uint64_t> pages;
  for (std::uint64_t p = 0; p < r.pages() && pages.size() * kPage < max_bytes; ++p)
    if (!kvm::page_is_zero(r.host() + p * kPage)) pages.push_back(p);
  if (pages.empty()) return 0;
  std::uint64_t sink = 0;
  const Stopwatch sw;
  for (std::uint64_t p : pages) sink ^= migration::page_checksum(p, {r.host() + p * kPage, kPage});
  const double s = sw.stop().seconds;
  [[maybe_unused]] volatile std::uint64_t keep = sink;
  return s > 0 ? static_cast<double>(pages.size() * kPage) / s : 0;
}

Timing time_memcpy(const kvm::GuestRegion& from, const kvm::GuestRegion& to) {
  const Stopwatch sw;
  std::memcpy(to.host(), from.host(), from.size());
  return sw.stop();
}

Path loopback_path() { return {"loopback", "127.0.0.1", {}, {}}; }

Result<std::vector<SocketPair>> connect_pairs(const Path& p, std::uint32_t n, TlsSetup* tls) {
  auto listener = in_netns(p.rx_netns, [&] { return transport::TcpListener::open({p.address, 0}); });
  if (!listener) return std::unexpected(std::move(listener.error()).context(fmt::format("{}: listen", p.name)));
  const transport::Endpoint to{p.address, (*listener)->port()};
  transport::TcpDialer dialer;
  std::optional<transport::TlsContext> client, server;
  if (tls) {
    auto c = transport::TlsContext::load(*tls->security, transport::TlsRole::kClient);
    auto s = transport::TlsContext::load(*tls->security, transport::TlsRole::kServer);
    if (!c || !s) return std::unexpected(c ? s.error() : c.error());
    client.emplace(std::move(*c));
    server.emplace(std::move(*s));
    if (tls->userspace) {
      client->disable_kernel_tls();
      server->disable_kernel_tls();
    }
  }
  double handshakes_s = 0;
  std::vector<SocketPair> out;
  for (std::uint32_t i = 0; i < n; ++i) {
    auto c = in_netns(p.tx_netns, [&] { return dialer.dial(to, 10s); });
    if (!c) return std::unexpected(std::move(c.error()).context(fmt::format("{}: connect to {}", p.name, to.str())));
    auto a = in_netns(p.rx_netns, [&] { return (*listener)->accept(10s); });
    if (!a) return std::unexpected(std::move(a.error()).context(fmt::format("{}: accept", p.name)));
    if (tls) {
      // Both ends at once, as two hosts would; timed from the ClientHello
      // to both ends holding their keys.
      const auto t0 = std::chrono::steady_clock::now();
      const auto deadline = t0 + 10s;
      std::thread srv([&] { a = server->secure(std::move(*a), "", deadline); });
      c = client->secure(std::move(*c), to.host, deadline);
      srv.join();
      handshakes_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (!c || !a) return std::unexpected(std::move(c ? a.error() : c.error()).context(p.name));
      tls->channel = c->security();
    }
    out.push_back(SocketPair{c->release(), a->release()});
  }
  if (tls && n > 0) tls->handshake_ms = 1000 * handshakes_s / n;
  return out;
}

Result<std::unique_ptr<VethPair>> VethPair::create() {
  if (::geteuid() != 0) return fail("the veth path needs root (network namespaces)");
  std::unique_ptr<VethPair> v(new VethPair);
  v->ip_ = find_ip();
  if (v->ip_.empty()) return fail("the veth path needs `ip` (iproute2), not found in /usr/sbin, /sbin, /usr/bin, /bin");
  const auto pid = ::getpid();
  v->tx_ns_ = fmt::format("ferry-bt-{}-tx", pid);
  v->rx_ns_ = fmt::format("ferry-bt-{}-rx", pid);
  const std::string tx_if = fmt::format("fbt{}t", pid), rx_if = fmt::format("fbt{}r", pid);
  // The signal handler first: from here on an interrupt must not leave
  // namespaces behind.
  fmt::format_to_n(g_cleanup.ip, sizeof g_cleanup.ip - 1, "{}", v->ip_);
  fmt::format_to_n(g_cleanup.ns[0], sizeof g_cleanup.ns[0] - 1, "{}", v->tx_ns_);
  fmt::format_to_n(g_cleanup.ns[1], sizeof g_cleanup.ns[1] - 1, "{}", v->rx_ns_);
  struct sigaction sa {};
  sa.sa_handler = delete_namespaces_on_signal;
  for (int i = 0; i < 3; ++i) {
    ::sigaction(kSignals[i], &sa, &g_cleanup.old[i]);
    // A signal this process was told to ignore (nohup, a background job)
    // stays ignored.
    if (g_cleanup.old[i].sa_handler == SIG_IGN) ::sigaction(kSignals[i], &g_cleanup.old[i], nullptr);
  }
  const std::vector<std::vector<std::string>> steps{
      {"netns", "add", v->tx_ns_},
      {"netns", "add", v->rx_ns_},
      {"link", "add", tx_if, "netns", v->tx_ns_, "type", "veth", "peer", "name", rx_if, "netns", v->rx_ns_},
      {"-n", v->tx_ns_, "addr", "add", "169.254.77.1/30", "dev", tx_if},
      {"-n", v->rx_ns_, "addr", "add", "169.254.77.2/30", "dev", rx_if},
      {"-n", v->tx_ns_, "link", "set", tx_if, "up"},
      {"-n", v->rx_ns_, "link", "set", rx_if, "up"}};
  for (const auto& s : steps)
    if (auto ok = run_ip(v->ip_, s); !ok) return std::unexpected(ok.error());  // ~VethPair cleans up
  return v;
}

VethPair::~VethPair() {
  // Deleting a namespace deletes the veth end in it, and with it the peer.
  for (const auto& ns : {tx_ns_, rx_ns_})
    if (!ns.empty()) (void)run_ip(ip_, {"netns", "del", ns});
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &g_cleanup.old[i], nullptr);
}

Path VethPair::path() const { return {"veth", "169.254.77.2", tx_ns_, rx_ns_}; }

Result<EngineFigures> run_engine(std::vector<SocketPair> pairs, const kvm::GuestRegion& from,
                                 const kvm::GuestRegion& to) {
  using namespace migration;
  const std::size_t n = pairs.size();
  std::vector<std::vector<std::uint64_t>> lists(n);  // as the source's split(): ascending per stream
  for (std::uint64_t p = 0; p < from.pages(); ++p) lists[stream_of(p, static_cast<std::uint32_t>(n))].push_back(p);
  // As SourceMigration::connect(): one limiter shared by the streams (here
  // unlimited), zero-copy on auto; as the destination: io_uring receivers.
  transport::RateLimiter limiter(0);
  std::vector<std::unique_ptr<transport::Sender>> senders;
  std::vector<std::unique_ptr<FrameSender>> framers;
  std::vector<UniqueFd> rx(n);
  std::vector<std::unique_ptr<FrameSource>> sources;
  for (std::size_t i = 0; i < n; ++i) {
    transport::SenderOptions so;
    so.limiter = &limiter;
    so.name = fmt::format("stream {}", i);
    auto s = transport::Sender::start(std::move(pairs[i].tx), so);
    if (!s) return std::unexpected(s.error());
    senders.push_back(std::move(*s));
    framers.push_back(std::make_unique<FrameSender>(*senders.back()));
    rx[i] = std::move(pairs[i].rx);
    auto r = transport::Receiver::create(rx[i].get(), fmt::format("stream {} (receiving)", i));
    if (!r) return std::unexpected(r.error());
    sources.push_back(std::make_unique<FrameSource>(std::move(*r), 30s));
  }
  // The destination's bookkeeping, as receive_vm keeps it.
  const PageMemory src{0, from.host(), from.pages()}, dst{0, to.host(), to.pages()};
  std::vector<std::uint64_t> written((to.pages() + 63) / 64, 0);
  PageLedger ledger;
  if (auto ok = ledger.add_slot(0, to.pages()); !ok) return std::unexpected(ok.error());
  PageDigests digests(to.pages());
  std::mutex mu;
  EngineFigures fig;
  auto receive = [&](std::size_t i) -> Status {
    for (;;) {
      auto h = sources[i]->next_header();
      if (!h) return std::unexpected(h.error());
      if (!*h) return fail("the connection closed before ROUND_END");
      if ((*h)->type == FrameType::kPages) {
        auto r = receive_page_frame(*sources[i], **h, dst, written, i, n);
        if (!r) return std::unexpected(r.error());
        const auto& pages = r->header.pages;
        for (std::size_t k = 0; k < pages.size(); ++k)
          if (r->good[k]) digests.set(pages[k].page_index, pages[k].checksum);
        std::lock_guard lock(mu);
        for (std::size_t k = 0; k < pages.size(); ++k) {
          auto ok = r->good[k] ? ledger.mark_good(0, pages[k].page_index) : ledger.mark_bad(0, pages[k].page_index);
          if (!ok) return ok;
          ++(r->good[k] ? fig.pages_verified : fig.checksum_failures);
        }
        continue;
      }
      auto payload = sources[i]->payload(**h);
      if (!payload) return std::unexpected(payload.error());
      if ((*h)->type == FrameType::kRoundEnd) return {};
      if ((*h)->type != FrameType::kZeroPages) return fail("unexpected {} frame", frame_type_name((*h)->type));
      auto z = decode_zero_pages(*payload);
      if (!z) return std::unexpected(z.error());
      if (auto ok = apply_zero_page_frame(*z, dst, written, i, n); !ok) return std::unexpected(ok.error());
      for (std::uint64_t page : z->page_index) digests.zero(page);
      std::lock_guard lock(mu);
      for (std::uint64_t page : z->page_index)
        if (auto ok = ledger.mark_good(0, page); !ok) return ok;
      fig.zero_pages_received += z->page_index.size();
    }
  };
  std::vector<RoundFigures> sent(n);
  std::vector<Status> tx_ok(n), rx_ok(n);
  std::vector<std::thread> threads;
  const Stopwatch sw;
  for (std::size_t i = 0; i < n; ++i)
    threads.emplace_back([&, i] {
      // A failed end shuts its socket down, so the other end fails too
      // instead of waiting for its idle timeout.
      if (rx_ok[i] = receive(i); !rx_ok[i]) ::shutdown(rx[i].get(), SHUT_RDWR);
    });
  for (std::size_t i = 0; i < n; ++i)
    threads.emplace_back([&, i] {
      tx_ok[i] = send_stream_pages(*framers[i], src, 0, lists[i], sent[i], [] { return Status{}; });
      if (!tx_ok[i]) senders[i]->abort(tx_ok[i].error().what());
    });
  for (auto& t : threads) t.join();
  fig.t = sw.stop();
  for (std::size_t i = 0; i < n; ++i) {
    if (!rx_ok[i]) return std::unexpected(std::move(rx_ok[i].error()).context(fmt::format("receiving stream {}", i)));
    if (!tx_ok[i]) return std::unexpected(std::move(tx_ok[i].error()).context(fmt::format("sending stream {}", i)));
    fig.pages += sent[i].pages;
    fig.zero_pages += sent[i].zero_pages;
    fig.bytes_sent += framers[i]->bytes();
    fig.bytes_received += sources[i]->bytes();
  }
  if (auto ok = ledger.check_ready(); !ok) return std::unexpected(std::move(ok.error()).context("destination"));
  return fig;
}

Result<RawFigures> run_raw(std::vector<SocketPair> pairs, const kvm::GuestRegion& from, const kvm::GuestRegion& to,
                           std::uint64_t bytes, bool hot_chunk) {
  const std::size_t n = pairs.size();
  const std::uint64_t chunks = std::max<std::uint64_t>(1, (bytes + n * kChunk - 1) / (n * kChunk));
  const std::uint64_t size = from.size() / kChunk * kChunk;
  if (size == 0) return fail("raw TCP: the memory is smaller than one {} byte chunk", kChunk);
  std::vector<Status> ok(2 * n);
  std::vector<std::thread> threads;
  const Stopwatch sw;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint64_t base = size / n / kChunk * kChunk * i;
    const std::uint64_t step = hot_chunk ? 0 : kChunk;
    threads.emplace_back([&, i, base, step] {
      for (std::uint64_t k = 0; k < chunks && ok[i]; ++k)
        ok[i] = recv_all(pairs[i].rx.get(), {to.host() + (base + k * step) % size, kChunk});
      if (!ok[i]) ::shutdown(pairs[i].rx.get(), SHUT_RDWR);
    });
    threads.emplace_back([&, i, base, step] {
      for (std::uint64_t k = 0; k < chunks && ok[n + i]; ++k)
        ok[n + i] = send_all(pairs[i].tx.get(), {from.host() + (base + k * step) % size, kChunk});
      if (!ok[n + i]) ::shutdown(pairs[i].tx.get(), SHUT_RDWR);
    });
  }
  for (auto& t : threads) t.join();
  RawFigures f{sw.stop(), chunks * kChunk * n};
  for (std::size_t i = 0; i < 2 * n; ++i)
    if (!ok[i])
      return std::unexpected(std::move(ok[i].error()).context(fmt::format("raw TCP stream {}", i % n)));
  return f;
}

}  // namespace ferry::cli::bench
