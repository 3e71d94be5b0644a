// `ferry bench-transport`: the engine's page path against raw TCP and
// memcpy, in one run, without KVM. Not a test: it prints figures.
//
// Guest-like memory (a memfd, --zero-share of its pages zero, the rest
// random) goes into a second memfd of the same size, emptied before each
// transfer (and populated again unless --fresh-destination: first touches
// of fresh memory can cost more than the transport), over each path
// (loopback; a veth pair between two network namespaces it creates, when
// root) and each stream count, three ways:
// 1. the engine: page_path.hh's send_stream_pages() on every stream (zero
//    test, page checksum, PAGES / ZERO_PAGES frames, the io_uring Sender),
//    and on the other end receive_page_frame() / apply_zero_page_frame()
//    (RECVMSG straight into the destination memory, every checksum
//    verified), with the destination's ledger; then the two memfds are
//    compared, and any difference fails the run;
// 2. raw TCP: as many bytes as the engine put on the wire, plain send() /
//    recv() in 1 MiB chunks over as many connections;
// 3. memcpy of the whole memory on one thread.
// Also: a memory of zero pages only through the engine, and what the page
// checksums cost (this machine's checksum rate against the link rate).
#include <sys/prctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <random>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "tools/ferry/commands.hh"
#include "tools/ferry/transport_bench.hh"
#include "tools/ferry/vm_report.hh"

namespace ferry::cli {
namespace {

using nlohmann::json;

constexpr double kGB = 1e9;
constexpr double kZeroOnlyTargetGBs = 10;
constexpr double kChecksumTargetPercent = 5;
constexpr std::uint64_t kChecksumSample = 256ull << 20;
constexpr double kTlsTargetRatio = 0.8;  // the engine over TLS against the engine in clear

struct TransportOptions {
  std::string memory = "1G";
  double zero_share = 25;
  std::uint32_t streams = 1;
  std::vector<std::uint32_t> streams_list;
  std::string path = "all";
  bool fresh_destination = false;
  std::string huge_pages = "auto";
  bool json = false;
  bool no_tls = false;
};

double gbs(std::uint64_t bytes, double seconds) { return seconds > 0 ? static_cast<double>(bytes) / kGB / seconds : 0; }

// Names this thread, and so every thread it starts meanwhile (the engine's
// Sender threads too), for profilers: `perf report --comm bt-engine`.
class ThreadName {
 public:
  explicit ThreadName(const char* name) {
    ::prctl(PR_GET_NAME, old_);
    ::prctl(PR_SET_NAME, name);
  }
  ~ThreadName() { ::prctl(PR_SET_NAME, old_); }
  ThreadName(const ThreadName&) = delete;
  ThreadName& operator=(const ThreadName&) = delete;

 private:
  char old_[17] = {};
};

void progress(const std::string& line) { fmt::print(stderr, "bench-transport: {}\n", line); }

// One (path, streams) row: engine, zero pages only, raw TCP, memcpy.
Result<json> measure_row(const bench::Path& path, std::uint32_t streams, const kvm::GuestRegion& src,
                         const kvm::GuestRegion& zero, const kvm::GuestRegion& dst, double checksum_bps, bool fresh,
                         const transport::Security* tls) {
  const std::string where = fmt::format("{}, {} stream(s)", path.name, streams);
  json row{{"path", path.name}, {"streams", streams}};
  // Before each transfer: the destination emptied (and populated), the
  // source's pages touched, then new connections.
  auto prepare = [&](const kvm::GuestRegion& from,
                     bench::TlsSetup* secured = nullptr) -> Result<std::vector<bench::SocketPair>> {
    if (auto ok = bench::reset_memory(dst, !fresh); !ok) return std::unexpected(ok.error());
    bench::touch_pages(from);
    return bench::connect_pairs(path, streams, secured);
  };

  // 1. The engine, then the check that everything arrived intact.
  auto pairs = prepare(src);
  if (!pairs) return std::unexpected(pairs.error());
  progress(fmt::format("{}: engine transfer...", where));
  auto e = [&] {
    ThreadName name("bt-engine");
    return bench::run_engine(std::move(*pairs), src, dst);
  }();
  if (!e) return std::unexpected(std::move(e.error()).context(fmt::format("engine ({})", where)));
  const auto diff = bench::first_difference(src, dst);
  const double engine_gbs = gbs(e->bytes_sent, e->t.seconds);
  row.update({{"engine_gb_s", engine_gbs},
              {"engine_memory_gb_s", gbs(src.size(), e->t.seconds)},
              {"engine_seconds", e->t.seconds},
              {"engine_cpu_seconds", e->t.cpu_seconds},
              {"bytes_sent", e->bytes_sent},
              {"bytes_received", e->bytes_received},
              {"bytes_equal", e->bytes_sent == e->bytes_received},
              {"pages_sent", e->pages},
              {"zero_pages_sent", e->zero_pages},
              {"pages_verified", e->pages_verified},
              {"zero_pages_received", e->zero_pages_received},
              {"checksum_failures", e->checksum_failures},
              {"memory_equal", !diff.has_value()}});
  progress(fmt::format("{}: engine {:.2f} GB/s on the wire ({:.2f} GB/s of memory), {:.2f} s, {:.2f} CPU s", where,
                       engine_gbs, gbs(src.size(), e->t.seconds), e->t.seconds, e->t.cpu_seconds));
  if (diff)
    return fail("{}: the destination memory differs from the source at page {} after the engine's transfer", where,
                *diff);
  if (e->bytes_sent != e->bytes_received)
    return fail("{}: {} bytes sent but {} received", where, e->bytes_sent, e->bytes_received);
  if (e->pages + e->zero_pages != src.pages() || e->pages_verified != e->pages ||
      e->zero_pages_received != e->zero_pages)
    return fail("{}: {} of {} pages sent ({} zero), {} verified and {} zero received", where,
                e->pages + e->zero_pages, src.pages(), e->zero_pages, e->pages_verified, e->zero_pages_received);

  // 1b. The same over TLS, as migrations run by default: what encryption
  // costs the engine, and what a handshake costs a connection. Where the
  // kernel has TLS, the userspace relay too (what hosts without it get).
  auto over_tls = [&](bool userspace) -> Result<json> {
    bench::TlsSetup setup{tls, 0, "", userspace};
    pairs = prepare(src, &setup);
    if (!pairs) return std::unexpected(pairs.error());
    progress(fmt::format("{}: engine over TLS ({})...", where, setup.channel));
    auto t = [&] {
      ThreadName name("bt-tls");
      return bench::run_engine(std::move(*pairs), src, dst);
    }();
    if (!t) return std::unexpected(std::move(t.error()).context(fmt::format("engine over TLS ({})", where)));
    if (bench::first_difference(src, dst) || t->bytes_sent != t->bytes_received || t->pages_verified != t->pages)
      return fail("{}: the transfer over TLS did not arrive intact", where);
    const double tls_gbs = gbs(t->bytes_sent, t->t.seconds);
    progress(fmt::format("{}: engine over TLS {:.2f} GB/s ({:.2f}x in clear), handshake {:.1f} ms, {:.2f} CPU s", where,
                         tls_gbs, engine_gbs > 0 ? tls_gbs / engine_gbs : 0, setup.handshake_ms, t->t.cpu_seconds));
    return json{{"gb_s", tls_gbs},
                {"cpu_seconds", t->t.cpu_seconds},
                {"ratio_to_clear", engine_gbs > 0 ? tls_gbs / engine_gbs : 0},
                {"handshake_ms", setup.handshake_ms},
                {"channel", setup.channel}};
  };
  if (tls) {
    auto k = over_tls(false);
    if (!k) return std::unexpected(k.error());
    row.update({{"engine_tls_gb_s", (*k)["gb_s"]},
                {"engine_tls_cpu_seconds", (*k)["cpu_seconds"]},
                {"ratio_tls_plain", (*k)["ratio_to_clear"]},
                {"tls_handshake_ms", (*k)["handshake_ms"]},
                {"tls_channel", (*k)["channel"]}});
    if (transport::kernel_tls_available()) {
      auto u = over_tls(true);
      if (!u) return std::unexpected(u.error());
      row["tls_userspace_relay"] = *u;
    }
  }

  // 2. Zero pages only: the zero test and the markers, no data.
  pairs = prepare(zero);
  if (!pairs) return std::unexpected(pairs.error());
  auto z = [&] {
    ThreadName name("bt-zero");
    return bench::run_engine(std::move(*pairs), zero, dst);
  }();
  if (!z) return std::unexpected(std::move(z.error()).context(fmt::format("engine, zero pages only ({})", where)));
  if (z->zero_pages != zero.pages() || z->zero_pages_received != zero.pages() || bench::first_difference(zero, dst))
    return fail("{}: the zero-page transfer did not leave the destination all zero", where);
  row.update({{"zero_only_gb_s", gbs(zero.size(), z->t.seconds)},
              {"zero_only_seconds", z->t.seconds},
              {"zero_only_cpu_seconds", z->t.cpu_seconds}});
  progress(fmt::format("{}: zero pages only {:.2f} GB/s of memory", where, gbs(zero.size(), z->t.seconds)));

  // 3. Raw TCP: the engine's byte count, same connections, same memory.
  pairs = prepare(src);
  if (!pairs) return std::unexpected(pairs.error());
  progress(fmt::format("{}: raw TCP transfer...", where));
  auto raw = [&] {
    ThreadName name("bt-raw");
    return bench::run_raw(std::move(*pairs), src, dst, e->bytes_sent);
  }();
  if (!raw) return std::unexpected(std::move(raw.error()).context(where));
  const double raw_gbs = gbs(raw->bytes, raw->t.seconds);
  row.update({{"raw_tcp_gb_s", raw_gbs},
              {"raw_tcp_seconds", raw->t.seconds},
              {"raw_tcp_cpu_seconds", raw->t.cpu_seconds},
              {"raw_tcp_bytes", raw->bytes},
              {"ratio_engine_raw", raw_gbs > 0 ? engine_gbs / raw_gbs : 0}});
  progress(fmt::format("{}: raw TCP {:.2f} GB/s, {:.2f} CPU s", where, raw_gbs, raw->t.cpu_seconds));
  // The link alone: the same byte count from one hot 1 MiB chunk per stream.
  pairs = prepare(src);
  if (!pairs) return std::unexpected(pairs.error());
  auto hot = bench::run_raw(std::move(*pairs), src, dst, e->bytes_sent, /*hot_chunk=*/true);
  if (!hot) return std::unexpected(std::move(hot.error()).context(where));
  const double hot_gbs = gbs(hot->bytes, hot->t.seconds);
  row.update({{"raw_tcp_hot_gb_s", hot_gbs}, {"raw_tcp_hot_cpu_seconds", hot->t.cpu_seconds}});
  progress(fmt::format("{}: raw TCP from a hot 1 MiB chunk {:.2f} GB/s", where, hot_gbs));

  // 4. memcpy: into fresh memory (page faults included), then again into
  // the same, now populated, memory.
  if (auto ok = bench::reset_memory(dst, false); !ok) return std::unexpected(ok.error());
  bench::touch_pages(src);
  const auto cold = bench::time_memcpy(src, dst);
  const auto warm = bench::time_memcpy(src, dst);
  row.update({{"memcpy_gb_s", gbs(src.size(), warm.seconds)}, {"memcpy_fresh_gb_s", gbs(src.size(), cold.seconds)}});

  // 5. What the page checksums cost, per end (the source computes each,
  // the destination verifies each): checksummed bytes/s over checksum rate.
  auto share = [&](double link_bps) { return checksum_bps > 0 ? 100 * link_bps / checksum_bps : 0; };
  row["checksum_core_percent_at_link_rate"] = share(raw_gbs * kGB);
  row["checksum_core_percent_at_hot_link_rate"] = share(hot_gbs * kGB);
  row["checksum_core_percent_at_engine_rate"] =
      share(static_cast<double>(e->pages * kvm::kPageSize) / e->t.seconds);
  return row;
}

std::string text_report(const json& out) {
  std::string t = fmt::format(
      "Ferry transport benchmark: the engine's page path against raw TCP and memcpy\n"
      "  memory {} MiB, {:.0f}% zero pages ({} of {} pages); page checksum {:.2f} GB/s on one core\n",
      out["memory_bytes"].get<std::uint64_t>() >> 20, out["zero_share_percent"].get<double>(),
      out["zero_pages"].get<std::uint64_t>(), out["pages"].get<std::uint64_t>(), out["checksum_gb_s"].get<double>());
  t += fmt::format("  transfers into {} destination memory\n",
                   out["destination"] == "fresh" ? "fresh (page faults on first touch)" : "populated (no page faults)");
  for (const auto& [name, p] : out["paths"].items())
    if (!p["available"].get<bool>()) t += fmt::format("  {}: not run: {}\n", name, p["reason"].get<std::string>());
  t += "\n  path      streams  engine GB/s  (memory)  raw TCP GB/s  engine/raw  (hot chunk)  memcpy GB/s"
       "  zero-only GB/s  checksum %core raw/hot  CPU s engine/raw\n";
  for (const auto& r : out["rows"])
    t += fmt::format("  {:<9} {:>7}  {:>11.2f}  {:>8.2f}  {:>12.2f}  {:>10.2f}  {:>11.2f}  {:>11.2f}  {:>14.2f}  {:>13.1f} / {:<5.1f}"
                     "  {:>7.2f} / {:.2f}\n",
                     r["path"].get<std::string>(), r["streams"].get<unsigned>(), r["engine_gb_s"].get<double>(),
                     r["engine_memory_gb_s"].get<double>(), r["raw_tcp_gb_s"].get<double>(),
                     r["ratio_engine_raw"].get<double>(), r["raw_tcp_hot_gb_s"].get<double>(), r["memcpy_gb_s"].get<double>(),
                     r["zero_only_gb_s"].get<double>(), r["checksum_core_percent_at_link_rate"].get<double>(),
                     r["checksum_core_percent_at_hot_link_rate"].get<double>(), r["engine_cpu_seconds"].get<double>(), r["raw_tcp_cpu_seconds"].get<double>());
  if (out["rows"].empty()) return t;
  double zero_min = 1e300, sum_max = 0, hot_max = 0;
  for (const auto& r : out["rows"]) {
    zero_min = std::min(zero_min, r["zero_only_gb_s"].get<double>());
    sum_max = std::max(sum_max, r["checksum_core_percent_at_link_rate"].get<double>());
    hot_max = std::max(hot_max, r["checksum_core_percent_at_hot_link_rate"].get<double>());
  }
  const auto& first = out["rows"][0];
  t += fmt::format("\n  Fresh memory, first touch: memcpy into it {:.2f} GB/s ({} row), MADV_POPULATE_WRITE {:.2f} GB/s\n",
                   first["memcpy_fresh_gb_s"].get<double>(), first["path"].get<std::string>(),
                   out["populate_gb_s"].get<double>());
  if (out["rows"][0].contains("engine_tls_gb_s")) {
    t += fmt::format("\n  Over TLS 1.3 ({}):\n  path      streams  engine GB/s  TLS/clear  handshake ms  CPU s\n",
                     first["tls_channel"].get<std::string>());
    double tls_min = 1e300;
    for (const auto& r : out["rows"]) {
      tls_min = std::min(tls_min, r["ratio_tls_plain"].get<double>());
      t += fmt::format("  {:<9} {:>7}  {:>11.2f}  {:>9.2f}  {:>12.1f}  {:>5.2f}\n", r["path"].get<std::string>(),
                       r["streams"].get<unsigned>(), r["engine_tls_gb_s"].get<double>(),
                       r["ratio_tls_plain"].get<double>(), r["tls_handshake_ms"].get<double>(),
                       r["engine_tls_cpu_seconds"].get<double>());
      if (r.contains("tls_userspace_relay")) {
        const auto& u = r["tls_userspace_relay"];
        t += fmt::format("  {:<9} {:>7}  {:>11.2f}  {:>9.2f}  {:>12.1f}  {:>5.2f}   (userspace relay, for comparison)\n",
                         r["path"].get<std::string>(), r["streams"].get<unsigned>(), u["gb_s"].get<double>(),
                         u["ratio_to_clear"].get<double>(), u["handshake_ms"].get<double>(),
                         u["cpu_seconds"].get<double>());
      }
    }
    t += fmt::format("  Target: over TLS >= {:g}x the engine in clear: {} (lowest {:.2f}x)\n", kTlsTargetRatio,
                     tls_min >= kTlsTargetRatio ? "met" : "MISSED", tls_min);
  }
  t += fmt::format(
      "\n  Every row: destination memory equal to the source, bytes received = bytes sent, every page verified.\n"
      "  Targets: zero pages only >= {:g} GB/s: {} (lowest {:.2f});\n"
      "           checksums < {:g}% of a core per end at the link rate: {} (highest {:.1f}%; {:.1f}% at the hot-chunk "
      "rate)\n",
      kZeroOnlyTargetGBs, zero_min >= kZeroOnlyTargetGBs ? "met" : "MISSED", zero_min, kChecksumTargetPercent,
      sum_max < kChecksumTargetPercent ? "met" : "MISSED", sum_max, hot_max);
  return t;
}

int run_bench_transport(const TransportOptions& o) {
  if (o.json && spdlog::default_logger()->level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
  json out{{"benchmark", "transport"}, {"ok", false}, {"error", ""}, {"rows", json::array()}};
  auto finish = [&](const std::string& error) {
    out["ok"] = error.empty();
    out["error"] = error;
    if (!error.empty()) fmt::print(stderr, "ferry bench-transport: {}\n", error);
    if (o.json)
      fmt::print("{}\n", out.dump(2));
    else if (error.empty())
      fmt::print("{}", text_report(out));
    return error.empty() ? 0 : 1;
  };
  auto size = parse_size_mib_default(o.memory);
  if (!size) return finish(fmt::format("--memory: {}", size.error()));
  if (*size == 0 || *size % (2u << 20) != 0) return finish("--memory must be a positive multiple of 2 MiB");
  const auto streams = o.streams_list.empty() ? std::vector<std::uint32_t>{o.streams} : o.streams_list;

  progress(fmt::format("preparing 3 x {} MiB of memory (source, destination, zero pages)", *size >> 20));
  const auto huge = kvm::huge_pages_from_option(o.huge_pages);
  auto src = kvm::GuestRegion::create(0, 0, *size, "bench-source", huge);
  if (!src) return finish(src.error().what());
  auto dst = kvm::GuestRegion::create(0, 0, *size, "bench-destination", huge);
  if (!dst) return finish(dst.error().what());
  auto zero = kvm::GuestRegion::create(0, 0, *size, "bench-zero", huge);
  if (!zero) return finish(zero.error().what());
  const std::uint64_t zero_pages = bench::fill_guest_like(*src, o.zero_share / 100);
  bench::fill_guest_like(*zero, 1.0);
  const double checksum_bps = bench::checksum_rate(*src, kChecksumSample);
  out.update({{"memory_bytes", *size},
              {"zero_share_percent", o.zero_share},
              {"pages", src->pages()},
              {"zero_pages", zero_pages},
              {"checksum_gb_s", checksum_bps / kGB},
              {"targets", {{"zero_only_gb_s", kZeroOnlyTargetGBs}, {"checksum_core_percent", kChecksumTargetPercent}}}});
  progress(fmt::format("page checksum: {:.2f} GB/s on one core", checksum_bps / kGB));
  // What first touches of fresh memory cost here, populated in one call.
  if (auto ok = bench::reset_memory(*dst, false); !ok) return finish(ok.error().what());
  const auto t_populate = std::chrono::steady_clock::now();
  if (auto ok = bench::reset_memory(*dst, true); !ok) return finish(ok.error().what());
  const double populate_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_populate).count();
  out["populate_gb_s"] = gbs(*size, populate_s);
  out["destination"] = o.fresh_destination ? "fresh" : "populated";
  out["huge_pages"] = std::string(kvm::huge_pages_name(huge));

  // A fresh random pre-shared key for the TLS transfers, removed at the end.
  std::optional<transport::Security> tls;
  std::string psk_path;
  if (!o.no_tls) {
    char tmpl[] = "/tmp/ferry-bench-psk-XXXXXX";
    const int fd = ::mkstemp(tmpl);
    if (fd < 0) return finish("mkstemp for the TLS key failed");
    psk_path = tmpl;
    std::random_device rd;
    std::string hex;
    for (int i = 0; i < 8; ++i) hex += fmt::format("{:08x}", rd());
    const bool written = ::write(fd, hex.data(), hex.size()) == static_cast<ssize_t>(hex.size());
    ::close(fd);
    if (!written) return finish("writing the TLS key failed");
    tls = transport::Security{transport::Security::Kind::kPreSharedKey, psk_path};
    out["tls"] = {{"kernel_tls", transport::kernel_tls_available()}, {"target_ratio", kTlsTargetRatio}};
  }
  struct RemoveKey {
    std::string path;
    ~RemoveKey() {
      if (!path.empty()) ::unlink(path.c_str());
    }
  } remove_key{psk_path};
  std::vector<bench::Path> paths;
  std::unique_ptr<bench::VethPair> veth;  // deleted on every way out
  if (o.path != "veth") {
    paths.push_back(bench::loopback_path());
    out["paths"]["loopback"] = {{"available", true}};
  }
  if (o.path != "loopback") {
    auto v = bench::VethPair::create();
    if (v) {
      veth = std::move(*v);
      paths.push_back(veth->path());
      out["paths"]["veth"] = {{"available", true}, {"addresses", "169.254.77.1/30 -> 169.254.77.2/30"}};
    } else {
      out["paths"]["veth"] = {{"available", false}, {"reason", v.error().what()}};
      progress(fmt::format("veth path skipped: {}", v.error()));
      if (o.path == "veth") return finish(fmt::format("veth: {}", v.error()));
    }
  }
  for (const auto& p : paths)
    for (std::uint32_t n : streams) {
      auto row = measure_row(p, n, *src, *zero, *dst, checksum_bps, o.fresh_destination, tls ? &*tls : nullptr);
      if (!row) return finish(row.error().what());
      out["rows"].push_back(std::move(*row));
    }
  return finish("");
}

}  // namespace

void add_bench_transport(CLI::App& app, Globals& g) {
  auto o = std::make_shared<TransportOptions>();
  auto* cmd = app.add_subcommand(
      "bench-transport",
      "Benchmark without KVM: the migration engine's page path (zero test, page checksums, framing, io_uring "
      "sender, receive into memory, verification) against raw TCP and memcpy, on loopback and on a veth pair.");
  cmd->footer(
      "Memory: a memfd of --memory bytes, --zero-share of its pages zero (placed at random), the rest random bytes,\n"
      "sent into a memfd of the same size, emptied and populated again (MADV_POPULATE_WRITE, not timed) before each\n"
      "transfer, so that page faults do not hide the transport; --fresh-destination leaves it unpopulated, as an\n"
      "incoming VM's memory is. For each path and stream count:\n"
      "  engine GB/s     frame bytes on the wire (headers, descriptors, page data) per second, from the first page\n"
      "                  read to the last page verified; (memory) is the memory moved per second, zero pages\n"
      "                  included. Page p goes on stream (p / 512) % streams, as in a migration. Afterwards the two\n"
      "                  memfds are compared: a difference fails the run.\n"
      "  raw TCP GB/s    the same byte count with plain send()/recv() in 1 MiB chunks over as many connections\n"
      "                  (made like the engine's), from the source memory into the destination memory.\n"
      "  engine/raw      engine GB/s / raw TCP GB/s: the share of the link the engine achieves (1 = all of it).\n"
      "  (hot chunk)     raw TCP again, each stream sending one 1 MiB chunk over and over into one chunk: the link\n"
      "                  itself, without the cost of touching a large memory (what most TCP benchmarks report).\n"
      "  memcpy GB/s     one memcpy of the whole memory on one thread (destination already populated; JSON also\n"
      "                  has memcpy_fresh_gb_s, into fresh memory, page faults included).\n"
      "  zero-only GB/s  memory of zero pages only through the engine, per second (target >= 10 GB/s).\n"
      "  checksum %core  link rate / this machine's page checksum rate (one core): the share of a core each end\n"
      "                  spends on page checksums when the engine runs at the link rate (target < 5%); the link rate\n"
      "                  is raw TCP GB/s (raw), and the hot-chunk figure (hot).\n"
      "  CPU s           user + system CPU time of the process (both ends, every thread) during each transfer.\n"
      "The veth path needs root and `ip`: two network namespaces (ferry-bt-PID-tx/-rx) joined by a veth pair with\n"
      "169.254.77.1/30 and .2/30, deleted afterwards (also on error or Ctrl-C). Without them only loopback runs.\n"
      "Needs 3 x --memory of RAM. Progress goes to stderr. See docs/benchmarks.md.");
  cmd->add_option("--memory", o->memory, "memory size, a multiple of 2 MiB, e.g. 64M, 1G")->capture_default_str();
  cmd->add_option("--zero-share", o->zero_share, "percent of the pages that are zero")
      ->check(CLI::Range(0.0, 100.0))
      ->capture_default_str();
  cmd->add_option("--streams", o->streams, "TCP streams (connections)")->check(CLI::Range(1, 16))->capture_default_str();
  cmd->add_option("--streams-list", o->streams_list, "several stream counts, one row each, e.g. 1,2 (overrides --streams)")
      ->delimiter(',')
      ->check(CLI::Range(1, 16));
  cmd->add_option("--path", o->path, "all (loopback, and veth when possible), loopback, or veth")
      ->check(CLI::IsMember({"all", "loopback", "veth"}))
      ->capture_default_str();
  cmd->add_option("--hugepages", o->huge_pages,
                  "memory backing, as `ferry run --hugepages`: auto (THP where shmem_enabled allows it), off, thp")
      ->check(CLI::IsMember({"auto", "off", "thp"}))
      ->capture_default_str();
  cmd->add_flag("--fresh-destination", o->fresh_destination,
                "send into fresh (unpopulated) destination memory, as an incoming VM's, page faults included");
  cmd->add_flag("--json", o->json, "print the figures as one JSON object (progress stays on stderr)");
  cmd->add_flag("--no-tls", o->no_tls,
                "skip the transfer over TLS 1.3 (by default each row also runs the engine over TLS with a fresh "
                "pre-shared key: kernel TLS where the kernel has it, else the userspace relay)");
  cmd->callback([o, &g] { g.rc = run_bench_transport(*o); });
}

}  // namespace ferry::cli
