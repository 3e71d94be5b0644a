// `ferry bench-migrate`: what a live migration achieves on this machine,
// next to what the same path carries raw. Not a test: it prints figures.
//
// 1. Raw TCP on loopback (the path the migration takes here): N MiB over
//    --streams connections with the project's io_uring transport (Sender /
//    Receiver, plain sends), then with plain send()/recv().
// 2. A live migration of the built-in guest (`ferry run`, dirtying its
//    working set at --dirty-rate) to a `ferry receive`, driven by `ferry
//    migrate` as child processes, exactly as `ferry demo` does (demo.hh).
//    Once the guest has written its whole working set, so that round 0
//    carries it all.
// 3. Migration throughput (bytes of the pre-copy rounds / their time), its
//    ratio to raw io_uring, total time, downtime as the engine measured it
//    and as the guest saw it, rounds and pages.
//
// Without /dev/kvm it re-runs itself inside tools/kvm-sandbox, like the demo.
#include <sys/socket.h>
#include <sys/utsname.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "userspace/base/io.hh"
#include "tools/ferry/commands.hh"
#include "tools/ferry/demo.hh"
#include "tools/ferry/sandbox_exec.hh"
#include "tools/ferry/vm_report.hh"
#include "kvm/quirks.hh"
#include "userspace/transport/receiver.hh"
#include "userspace/transport/sender.hh"
#include "userspace/transport/tcp.hh"

namespace ferry::cli {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr std::size_t kChunk = 1 << 20;  // bytes per send in the raw transfer
constexpr double kMiB = 1048576.0;

struct BenchOptions {
  std::string memory = "1G";
  std::uint64_t working_set_mib = 128;
  double dirty_rate_mib_s = 16;
  std::uint32_t vcpus = 2;
  std::uint32_t streams = 1;
  std::string max_bandwidth;
  double downtime_limit_ms = 300;
  std::uint64_t raw_mib = 1024;
  std::uint32_t warmup_limit_s = 300;
  bool json = false;
  bool in_sandbox = false;
  bool force_sandbox = false;
  bool working_set_given = false;
  bool tls = false;  // migrate over TLS (default plain TCP, like the raw TCP it is compared with)
};

// ---------------------------------------------------------------------------
// Raw TCP

struct RawFigures {
  std::uint64_t bytes = 0;
  double seconds = 0;
  double mib_s() const { return seconds > 0 ? static_cast<double>(bytes) / kMiB / seconds : 0; }
};



// `total` bytes over `streams` loopback connections made like the
// migration's (transport::TcpDialer/TcpListener: TCP_NODELAY, large
// buffers), in 1 MiB sends; timed from the first send to the last byte read.
Result<RawFigures> raw_transfer(std::uint64_t total, std::uint32_t streams, bool io_uring) {
  auto listener = transport::TcpListener::open({"127.0.0.1", 0});
  if (!listener) return std::unexpected(listener.error());
  const transport::Endpoint to{"127.0.0.1", (*listener)->port()};
  transport::TcpDialer dialer;
  std::vector<UniqueFd> tx, rx;
  for (std::uint32_t i = 0; i < streams; ++i) {
    auto c = dialer.dial(to, 10s);
    if (!c) return std::unexpected(c.error());
    auto a = (*listener)->accept(10s);
    if (!a) return std::unexpected(a.error());
    tx.push_back(c->release());
    rx.push_back(a->release());
  }
  const std::uint64_t per_stream = std::max<std::uint64_t>(kChunk, total / streams / kChunk * kChunk);
  std::mutex mu;
  std::optional<Error> first_error;
  auto failed = [&](Error e) {
    std::lock_guard lock(mu);
    if (!first_error) first_error = std::move(e);
  };
  std::vector<std::thread> threads;
  const auto t0 = Clock::now();
  for (std::uint32_t i = 0; i < streams; ++i) {
    threads.emplace_back([&, i] {
      std::vector<std::byte> buf(kChunk);
      const std::string name = fmt::format("raw stream {}", i);
      if (io_uring) {
        auto r = transport::Receiver::create(rx[i].get(), name);
        if (!r) return failed(r.error());
        for (std::uint64_t left = per_stream; left > 0; left -= kChunk)
          if (auto n = r->read_exact(std::span<std::byte>(buf.data(), kChunk), 30s); !n || *n != kChunk) {
            rx[i] = UniqueFd();  // unread data: a reset, which fails the sender
            return failed(n ? Error(fmt::format("{}: connection closed early", name)) : n.error());
          }
      } else {
        for (std::uint64_t left = per_stream; left > 0; left -= kChunk)
          if (auto ok = recv_all(rx[i].get(), std::span(buf.data(), kChunk)); !ok) {
            rx[i] = UniqueFd();  // unread data: a reset, which fails the sender
            return failed(ok.error());
          }
      }
    });
    threads.emplace_back([&, i] {
      std::vector<std::byte> buf(kChunk, std::byte{0x5a});
      if (io_uring) {
        transport::SenderOptions so;
        so.zero_copy = transport::ZeroCopy::kOff;
        so.name = fmt::format("raw stream {}", i);
        auto s = transport::Sender::start(std::move(tx[i]), so);
        if (!s) return failed(s.error());
        for (std::uint64_t left = per_stream; left > 0; left -= kChunk)
          if (auto ok = (*s)->send({}, {iovec{buf.data(), kChunk}}); !ok) return failed(ok.error());
        if (auto ok = (*s)->flush(); !ok) return failed(ok.error());
      } else {
        for (std::uint64_t left = per_stream; left > 0; left -= kChunk)
          if (auto ok = send_all(tx[i].get(), std::span<const std::byte>(buf.data(), kChunk)); !ok) {
            ::shutdown(tx[i].get(), SHUT_RDWR);  // wakes the receiver
            return failed(ok.error());
          }
      }
    });
  }
  for (auto& t : threads) t.join();
  RawFigures f;
  f.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  f.bytes = per_stream * streams;
  if (first_error) return std::unexpected(*first_error);
  return f;
}

// ---------------------------------------------------------------------------
// Machine facts

std::string first_line_with(const std::string& path, const std::string& key) {
  std::ifstream f(path);
  for (std::string line; std::getline(f, line);)
    if (line.starts_with(key)) {
      auto v = line.substr(line.find(':') == std::string::npos ? key.size() : line.find(':') + 1);
      v.erase(0, v.find_first_not_of(" \t"));
      return v;
    }
  return {};
}

json machine_facts(bool in_sandbox) {
  utsname u{};
  ::uname(&u);
  std::string kvm = in_sandbox ? "nested KVM (kvm-amd) on SVM emulated by QEMU TCG (tools/kvm-sandbox)"
                    : kvm::kvm_is_pvm() ? "PVM (kvm_pvm): guests run through its instruction emulator"
                                        : "hardware-virtualized KVM";
  return {{"cpus", std::thread::hardware_concurrency()},
          {"cpu_model", first_line_with("/proc/cpuinfo", "model name")},
          {"memory", meminfo("MemTotal") ? fmt::format("{} kB", *meminfo("MemTotal")) : std::string()},
          {"kernel", u.release},
          {"kvm", kvm},
          {"network", "loopback (127.0.0.1)"}};
}

// ---------------------------------------------------------------------------

double num(const json& j, const char* k) { return j.contains(k) && j[k].is_number() ? j[k].get<double>() : -1; }
std::uint64_t u64(const json& j, const char* k) { return j.contains(k) && j[k].is_number() ? j[k].get<std::uint64_t>() : 0; }

// Every vCPU has written its slice of the working set once.
bool wrote_working_set(const json& s) {
  const auto ws = s["guest"].value("working_set_pages", std::uint64_t{0});
  const auto& per = s["per_vcpu"];
  if (!per.is_array() || per.empty()) return false;
  const std::uint64_t slice = ws / per.size();
  return std::all_of(per.begin(), per.end(), [&](const json& v) { return v.value("rewrites", std::uint64_t{0}) >= slice; });
}

double written_share(const json& s) {
  const auto ws = s["guest"].value("working_set_pages", std::uint64_t{0});
  return ws ? std::min(1.0, static_cast<double>(s["totals"].value("rewrites", std::uint64_t{0})) / static_cast<double>(ws))
            : 0;
}

int run_bench(BenchOptions o) {
  if (o.json && spdlog::default_logger()->level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
  auto say = [&](const std::string& text) {
    if (o.json) return;
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  };
  const auto t0 = Clock::now();
  auto mem = parse_size_mib_default(o.memory);
  if (!mem) {
    fmt::print(stderr, "ferry bench-migrate: --memory: {}\n", mem.error());
    return 2;
  }
  std::string ws_note;
  if (!o.working_set_given && !o.in_sandbox && kvm::kvm_emulates_guests_reason()) {
    o.working_set_mib = 4;
    ws_note = "working set 4 MiB, not 128: the guest writes only about 60 pages/s on this KVM; --working-set changes it";
  }
  if (o.working_set_mib << 20 > *mem) {
    fmt::print(stderr, "ferry bench-migrate: the working set ({} MiB) does not fit in --memory {}\n", o.working_set_mib,
               o.memory);
    return 2;
  }

  json out{{"benchmark", "migrate"},
           {"where", o.in_sandbox ? "kvm-sandbox" : "native"},
           {"tls", o.tls},
           {"ok", false},
           {"error", ""},
           {"machine", machine_facts(o.in_sandbox)}};
  std::unique_ptr<MigrationRig> rig;
  auto finish = [&](const std::string& error) {
    out["ok"] = error.empty();
    out["error"] = error;
    out["elapsed_s"] = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!error.empty()) {
      fmt::print(stderr, "ferry bench-migrate: {}\n", error);
      if (rig) fmt::print(stderr, "{}", rig->diagnostics());
    }
    if (o.json) fmt::print("{}\n", out.dump(2));
    return error.empty() ? 0 : 1;
  };

  const auto& mf = out["machine"];
  say(fmt::format("Ferry migration benchmark, {}\n", where_text(o.in_sandbox)));
  say(fmt::format("  machine   {} CPUs ({}), {}, Linux {}\n            KVM: {}\n", mf["cpus"].get<unsigned>(),
                  mf["cpu_model"].get<std::string>(), mf["memory"].get<std::string>(), mf["kernel"].get<std::string>(),
                  mf["kvm"].get<std::string>()));
  if (o.in_sandbox)
    say("            Everything here runs under emulation: compare the figures with each other, not with hardware.\n");

  // 1. Raw TCP.
  say(fmt::format("\n  Raw TCP, loopback, {} stream(s), {} MiB in 1 MiB sends:\n", o.streams, o.raw_mib));
  auto uring = raw_transfer(o.raw_mib << 20, o.streams, true);
  if (!uring) return finish(fmt::format("raw io_uring transfer: {}", uring.error()));
  say(fmt::format("    io_uring Sender/Receiver, plain sends  {:>9.1f} MiB/s  ({:.2f} s)\n", uring->mib_s(), uring->seconds));
  auto plain = raw_transfer(o.raw_mib << 20, o.streams, false);
  if (!plain) return finish(fmt::format("raw send()/recv() transfer: {}", plain.error()));
  say(fmt::format("    send()/recv()                          {:>9.1f} MiB/s  ({:.2f} s)\n", plain->mib_s(), plain->seconds));
  out["raw_tcp"] = {{"streams", o.streams},
                    {"bytes", uring->bytes},
                    {"send_size", kChunk},
                    {"io_uring_mib_s", uring->mib_s()},
                    {"io_uring_s", uring->seconds},
                    {"send_mib_s", plain->mib_s()},
                    {"send_s", plain->seconds}};

  // 2. The migration.
  SourceSpec spec;
  spec.vcpus = o.vcpus;
  spec.memory = o.memory;
  spec.working_set_mib = o.working_set_mib;
  spec.rate_mib_s = o.dirty_rate_mib_s;
  out["vm"] = {{"vcpus", o.vcpus},
               {"memory_bytes", *mem},
               {"working_set_mib", o.working_set_mib},
               {"dirty_rate_mib_s", o.dirty_rate_mib_s},
               {"pattern", "sequential"}};
  say(fmt::format("\n  Live migration: built-in guest, {} vCPUs, {} MiB of RAM, dirtying a {} MiB working set at {}\n",
                  o.vcpus, *mem >> 20, o.working_set_mib,
                  o.dirty_rate_mib_s > 0 ? fmt::format("{:g} MiB/s", o.dirty_rate_mib_s) : std::string("full speed")));
  if (!ws_note.empty()) say(fmt::format("    ({})\n", ws_note));
  auto r = MigrationRig::create(o.tls);
  if (!r) return finish(r.error().what());
  rig = std::move(*r);
  if (auto ok = rig->start_source(spec); !ok) return finish(ok.error().what());
  // Warm-up: until every vCPU has written its share once, so that round 0
  // carries the whole working set (never-written pages are not sent).
  const auto w0 = Clock::now();
  auto started = rig->wait_source([](const json& s) { return s.value("state", "") == "running"; }, 120s,
                                  "the source VM running");
  if (!started) return finish(started.error().what());
  auto warm = rig->wait_source([](const json& s) { return wrote_working_set(s) || s["totals"].value("failures", 0) > 0; },
                               std::chrono::seconds(o.warmup_limit_s), "the guest writing its working set");
  json before;
  if (warm) {
    before = *warm;
  } else {
    auto s = rig->source_status();
    if (!s) return finish(warm.error().what());
    before = *s;
  }
  const double warm_s = std::chrono::duration<double>(Clock::now() - w0).count();
  if (before["totals"].value("failures", 0) > 0) return finish("the guest found a bad page before the migration");
  out["warmup"] = {{"seconds", warm_s},
                   {"working_set_written", written_share(before)},
                   {"complete", warm.has_value()},
                   {"verified", before["totals"].value("verified", std::uint64_t{0})}};
  say(warm ? fmt::format("    warm-up: the guest wrote its working set once in {:.1f} s\n", warm_s)
           : fmt::format("    warm-up: after {} s the guest had written {:.0f}% of its working set; migrating anyway\n",
                         o.warmup_limit_s, 100 * written_share(before)));

  auto to = rig->start_destination();
  if (!to) return finish(to.error().what());
  std::vector<std::string> args{"--streams", std::to_string(o.streams), "--downtime-limit",
                                fmt::format("{}", o.downtime_limit_ms)};
  if (!o.max_bandwidth.empty()) args.insert(args.end(), {"--max-bandwidth", o.max_bandwidth});
  say(fmt::format("    migrating: ferry migrate --to {} {} ...\n", *to, fmt::join(args, " ")));
  auto mig = rig->migrate(args, /*show_progress=*/false);
  if (!mig) return finish(mig.error().what());
  const auto& rep = mig->report;
  out["report"] = rep;
  if (mig->exit_code != 0 || rep.value("phase", "") != "migrated")
    return finish(fmt::format("the migration did not complete: {} ({})", rep.value("phase", ""), rep.value("error", "")));
  if (auto ok = rig->wait_source_migrated(60s); !ok) return finish(ok.error().what());
  // A benchmark of a broken migration is worthless: the guest must go on
  // verifying at the destination.
  auto d0 = rig->wait_destination([](const json& s) { return s.value("state", "") == "running"; }, 60s,
                                  "the destination VM running");
  if (!d0) return finish(d0.error().what());
  const auto v0 = (*d0)["totals"].value("verified", std::uint64_t{0});
  auto d1 = rig->wait_destination(
      [&](const json& s) {
        return s["totals"].value("verified", std::uint64_t{0}) > v0 || s["totals"].value("failures", 0) > 0;
      },
      60s, "the guest verifying pages at the destination");
  if (!d1) return finish(d1.error().what());
  if ((*d1)["totals"].value("failures", 0) > 0) return finish("the guest found a bad page at the destination");
  out["destination"] = {{"verified", (*d1)["totals"].value("verified", std::uint64_t{0}) - v0}, {"failures", 0}};
  if (auto ok = rig->quit_destination(60s); !ok) return finish(ok.error().what());

  // 3. Figures.
  const auto pre = precopy_figures(rep);
  const double mig_mib_s = pre.throughput() / kMiB;
  const double ratio = uring->mib_s() > 0 ? mig_mib_s / uring->mib_s() : 0;
  const auto& b = rep["downtime_breakdown"];
  out["migration"] = {{"throughput_mib_s", mig_mib_s},
                      {"ratio_to_raw_io_uring", ratio},
                      {"precopy_bytes", pre.bytes},
                      {"precopy_ms", pre.ms},
                      {"precopy_rounds", pre.rounds},
                      {"total_ms", num(rep, "elapsed_ms")},
                      {"command_ms", mig->wall_ms},
                      {"downtime_ms", num(rep, "downtime_ms")},
                      {"guest_downtime_ms", num(rep, "guest_downtime_ms")},
                      {"downtime_breakdown", b},
                      {"downtime_limit_ms", o.downtime_limit_ms},
                      {"rounds", rep["rounds"].size()},
                      {"pages_sent", u64(rep, "pages_sent")},
                      {"zero_pages", u64(rep, "zero_pages")},
                      {"resent_pages", u64(rep, "resent_pages")},
                      {"unallocated_pages", u64(rep, "unallocated_pages")},
                      {"bytes_sent", u64(rep, "bytes_sent")},
                      {"dirty_rate_mib_s", num(rep, "dirty_rate_bytes_per_s") / kMiB},
                      {"streams", o.streams},
                      {"max_bandwidth", o.max_bandwidth},
                      {"zero_copy", rep.value("zero_copy", "")}};
  say(fmt::format("\n  Results\n"
                  "    migration throughput  {:>9.1f} MiB/s  ({:.1f} MiB in {:.1f} ms over {} pre-copy round(s))\n"
                  "    vs raw io_uring       {:>9.2f} x      (raw {:.1f} MiB/s, send() {:.1f} MiB/s)\n"
                  "    total time            {:>9.1f} ms     (connect to confirmed; `ferry migrate` ran {:.1f} ms)\n"
                  "    downtime              {:>9.1f} ms     engine-measured, limit {:g} ms: final pages {:.1f} ms "
                  "({} pages), state {:.1f} ms,\n"
                  "                                             destination load {:.1f} ms, commit {:.1f} ms\n"
                  "    downtime, guest-seen  {:>9.1f} ms     longest gap between the guest's heartbeats\n"
                  "    rounds                {:>9}        ({} pre-copy + the final one)\n"
                  "    pages                 {:>9} sent with data, {} zero markers, {} re-sent, {} never touched "
                  "(skipped)\n"
                  "    on the wire           {:>9.1f} MiB\n"
                  "    dirty rate measured   {:>9.1f} MiB/s\n"
                  "    destination           the guest verified {} more pages there, no failure\n",
                  mig_mib_s, static_cast<double>(pre.bytes) / kMiB, pre.ms, pre.rounds, ratio, uring->mib_s(),
                  plain->mib_s(), num(rep, "elapsed_ms"), mig->wall_ms, num(rep, "downtime_ms"), o.downtime_limit_ms,
                  b.value("final_pages_ms", 0.0), b.value("final_pages", std::uint64_t{0}), b.value("state_ms", 0.0),
                  b.value("destination_load_ms", 0.0), b.value("commit_ms", 0.0), num(rep, "guest_downtime_ms"),
                  rep["rounds"].size(), pre.rounds, u64(rep, "pages_sent"), u64(rep, "zero_pages"),
                  u64(rep, "resent_pages"), u64(rep, "unallocated_pages"),
                  static_cast<double>(u64(rep, "bytes_sent")) / kMiB, num(rep, "dirty_rate_bytes_per_s") / kMiB,
                  out["destination"]["verified"].get<std::uint64_t>()));
  say("\n  Rounds     pages  zero pages        MiB         ms       MiB/s  dirty after  decision\n");
  for (const auto& rd : rep["rounds"]) {
    const double ms = rd.value("ms", 0.0);
    const double mib = static_cast<double>(rd.value("bytes", std::uint64_t{0})) / kMiB;
    say(fmt::format("    {:>3}  {:>9}  {:>10}  {:>9.1f}  {:>9.1f}  {:>10.1f}  {:>11}  {}\n", rd.value("round", 0u),
                    rd.value("pages", std::uint64_t{0}), rd.value("zero_pages", std::uint64_t{0}), mib, ms,
                    ms > 0 ? mib / (ms / 1000) : 0.0, rd.value("dirty_after", std::uint64_t{0}),
                    rd.value("decision", "")));
  }
  say(fmt::format("  ({:.1f} s in all)\n", std::chrono::duration<double>(Clock::now() - t0).count()));
  return finish("");
}

}  // namespace

void add_bench(CLI::App& app, Globals& g) {
  auto o = std::make_shared<BenchOptions>();
  auto* cmd = app.add_subcommand("bench-migrate",
                                 "Benchmark: raw loopback TCP throughput, then a live migration of the built-in guest "
                                 "on the same path; prints throughput, their ratio, downtime, rounds and pages.");
  cmd->footer(
      "Runs `ferry run`, `ferry receive` and `ferry migrate` as child processes on this host (like `ferry demo`).\n"
      "Migration throughput = bytes of the pre-copy rounds / their time (the final, paused round excluded).\n"
      "Never-written guest memory is not sent, so the migration waits until the guest has written its working\n"
      "set once. Without /dev/kvm it runs inside tools/kvm-sandbox, where everything is emulated: compare\n"
      "figures with each other (ratios), not with hardware. See docs/benchmarks.md.");
  cmd->add_option("--memory", o->memory, "guest RAM, e.g. 1G")->capture_default_str();
  cmd->add_option("--working-set", o->working_set_mib, "MiB the guest dirties (default 128; 4 where KVM emulates guests)")
      ->check(CLI::PositiveNumber)
      ->each([o](const std::string&) { o->working_set_given = true; });
  cmd->add_option("--dirty-rate", o->dirty_rate_mib_s, "MiB/s the guest dirties (0: as fast as it can)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--vcpus", o->vcpus, "guest vCPUs")->check(CLI::Range(1, 16))->capture_default_str();
  cmd->add_option("--streams", o->streams, "TCP streams, for the raw transfer and the migration")
      ->check(CLI::Range(1, 16))
      ->capture_default_str();
  cmd->add_option("--max-bandwidth", o->max_bandwidth, "migration bandwidth cap, e.g. 100M (bytes/s)");
  cmd->add_option("--downtime-limit", o->downtime_limit_ms, "ms (ferry migrate --downtime-limit)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  cmd->add_option("--raw-mib", o->raw_mib, "MiB for each raw TCP transfer")->check(CLI::Range(1, 65536))->capture_default_str();
  cmd->add_option("--warmup-limit", o->warmup_limit_s, "seconds to wait for the guest to write its working set")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "print the figures as one JSON object");
  cmd->add_flag("--tls", o->tls,
                "migrate over TLS 1.3 with a fresh pre-shared key (default: plain TCP, like the raw TCP baseline)");
  cmd->add_flag("--sandbox", o->force_sandbox, "run inside tools/kvm-sandbox even when /dev/kvm exists");
  cmd->add_flag("--in-sandbox", o->in_sandbox, "(internal) we already are inside the sandbox")->group("");
  cmd->callback([o, &g] {
    {
      std::vector<std::string> args{"bench-migrate", "--in-sandbox", "--memory", o->memory, "--dirty-rate",
                                    fmt::format("{}", o->dirty_rate_mib_s), "--vcpus", std::to_string(o->vcpus),
                                    "--streams", std::to_string(o->streams), "--downtime-limit",
                                    fmt::format("{}", o->downtime_limit_ms), "--raw-mib", std::to_string(o->raw_mib),
                                    "--warmup-limit", std::to_string(o->warmup_limit_s)};
      if (o->working_set_given) args.insert(args.end(), {"--working-set", std::to_string(o->working_set_mib)});
      if (!o->max_bandwidth.empty()) args.insert(args.end(), {"--max-bandwidth", o->max_bandwidth});
      if (o->json) args.push_back("--json");
      if (o->tls) args.push_back("--tls");
      if (!run_here_or_in_sandbox({"bench-migrate", o->in_sandbox, o->force_sandbox, o->json,
                                   "running the benchmark inside tools/kvm-sandbox (QEMU emulation: ratios only)",
                                   std::move(args)})) {
        g.rc = 1;
        return;
      }
    }
    o->in_sandbox = inside_kvm_sandbox(o->in_sandbox);
    g.rc = run_bench(*o);
  });
}

}  // namespace ferry::cli
