// `ferry bench-trace`: what attaching `ferry trace` costs a guest that
// dirties memory as fast as it can. Not a test: it prints figures.
//
// 1. `ferry run` starts the built-in guest rewriting its working set at full
//    speed (--workload dirty --rate 0). The benchmark waits until every vCPU
//    has written its slice once, so first-touch faults stay out of the
//    figures, then measures one uncounted dirty-rate second.
// 2. Phases alternate A (no tracer) and B (tracer attached), --repeats pairs,
//    so that drift (host load, the guest's own pace) falls on both alike.
//    Each phase is one dirty-rate request (what `ferry dirty-rate --seconds
//    S --harvest-ms 100` sends), which keeps dirty logging on: without it no
//    dirty tracepoint fires and there is nothing to compare. In B phases
//    `ferry trace --pid PID --json` runs as its own process; the phase
//    starts only once it has printed its first frame (its programs are
//    loaded and attached) and it is stopped only after a frame taken when
//    the phase was over, so it sees all of it.
// 3. Throughput = the guest's rewrites (its own counter, `ferry status`'s
//    totals.rewrites) over the phase's time, read right before and right
//    after the dirty-rate request (the VM's API is busy while it runs).
//    Beside it: the pages dirty-rate harvested per second, which counts the
//    logging time only.
//
// Without /dev/kvm it re-runs itself inside tools/kvm-sandbox, like
// bench-migrate.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>
#include <thread>

#include "userspace/control/api.hh"
#include "tools/ferry/commands.hh"
#include "tools/ferry/demo.hh"
#include "tools/ferry/sandbox_exec.hh"
#include "kvm/quirks.hh"

namespace ferry::cli {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;
using namespace std::chrono_literals;

constexpr double kTargetSlowdownPct = 2.0;  // the target
constexpr unsigned kHarvestMs = 100;

struct BenchTraceOptions {
  double seconds = 5;
  unsigned repeats = 3;
  std::uint32_t vcpus = 2;
  std::uint64_t working_set_mib = 64;
  bool working_set_given = false;
  unsigned warmup_limit_s = 300;
  bool json = false;
  bool in_sandbox = false;
  bool force_sandbox = false;
};

// A directory for the children's sockets and outputs, removed at the end.
struct WorkDir {
  std::string path;
  ~WorkDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::string tail(const std::string& s, std::size_t n = 1500) {
  return s.size() > n ? "..." + s.substr(s.size() - n) : s;
}

std::vector<json> json_lines(const std::string& text) {
  std::vector<json> v;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (auto j = json::parse(line, nullptr, false); !j.is_discarded() && j.is_object()) v.push_back(std::move(j));
  return v;
}

std::uint64_t rewrites(const json& s) { return s["totals"].value("rewrites", std::uint64_t{0}); }
std::uint64_t failures(const json& s) { return s["totals"].value("failures", std::uint64_t{0}); }

bool wrote_working_set(const json& s) {
  const auto ws = s["guest"].value("working_set_pages", std::uint64_t{0});
  const auto& per = s["per_vcpu"];
  if (!per.is_array() || per.empty()) return false;
  const std::uint64_t slice = ws / per.size();
  return std::all_of(per.begin(), per.end(),
                     [&](const json& v) { return v.value("rewrites", std::uint64_t{0}) >= slice; });
}

struct Stats {
  double mean = 0, sd = 0, min = 0, max = 0;
  double spread_pct() const { return mean > 0 ? 100 * sd / mean : 0; }  // coefficient of variation
};

Stats stats(const std::vector<double>& v) {
  Stats s;
  if (v.empty()) return s;
  s.mean = std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
  double sq = 0;
  for (double x : v) sq += (x - s.mean) * (x - s.mean);
  s.sd = v.size() > 1 ? std::sqrt(sq / static_cast<double>(v.size() - 1)) : 0;
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  return s;
}

struct Phase {
  unsigned index = 0;  // 1-based
  bool traced = false;
  double seconds = 0;          // between the two status reads
  double logging_seconds = 0;  // dirty-rate's: dirty logging on (inside `seconds`)
  std::uint64_t rewrites = 0;
  double rewrites_per_s = 0;
  std::string backend;  // dirty-rate's: "ring" or "bitmap"
  // dirty-rate's pages_per_s: pages found dirty per harvest, over the
  // logging time. Each of the guest's writes counts once as long as a page
  // comes round less often than every harvest (large working set).
  double harvested_pages_per_s = 0;
  unsigned harvests = 0;
  // B phases only: what `ferry trace` reported.
  std::string trace_source;  // "ring", "wp" or "" (no event)
  std::uint64_t trace_events = 0;
  double trace_events_per_s = 0;
  std::size_t trace_frames = 0;
  double tracer_cpu_pct = 0;  // the `ferry trace` process's CPU time over the phase, % of one CPU

  json to_json() const {
    json j{{"phase", index},
           {"tracer", traced},
           {"seconds", seconds},
           {"logging_seconds", logging_seconds},
           {"rewrites", rewrites},
           {"rewrites_per_s", rewrites_per_s},
           {"dirty_tracking", backend},
           {"harvested_pages_per_s", harvested_pages_per_s},
           {"harvests", harvests}};
    if (traced)
      j["trace"] = {{"source", trace_source},
                    {"events", trace_events},
                    {"events_per_s", trace_events_per_s},
                    {"frames", trace_frames},
                    {"process_cpu_pct", tracer_cpu_pct}};
    return j;
  }
};

std::string spread_text(const std::vector<double>& v, const Stats& s) {
  if (v.size() < 2) return "one phase: no spread";
  return fmt::format("{} phases, {:.1f} .. {:.1f}, sd {:.1f}%", v.size(), s.min, s.max, s.spread_pct());
}

// `text` in lines of at most `width` columns, each starting with `indent`.
std::string wrap(const std::string& text, const std::string& indent, std::size_t width) {
  std::string out, line;
  std::istringstream words(text);
  for (std::string w; words >> w;) {
    if (!line.empty() && indent.size() + line.size() + 1 + w.size() > width) {
      out += indent + line + "\n";
      line.clear();
    }
    line += (line.empty() ? "" : " ") + w;
  }
  if (!line.empty()) out += indent + line + "\n";
  return out;
}

// CPU time (user + system) a process has used so far, from /proc/PID/stat.
double cpu_seconds(pid_t pid) {
  std::string stat = slurp(fmt::format("/proc/{}/stat", pid));
  const auto close = stat.rfind(')');  // the command name may hold spaces
  if (close == std::string::npos) return 0;
  std::istringstream in(stat.substr(close + 2));
  std::string field;
  unsigned long long utime = 0, stime = 0;
  // After the name: state is field 3; utime and stime are fields 14 and 15.
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stoull(field);
    if (i == 15) stime = std::stoull(field);
  }
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

std::string_view tracepoint_of(const std::string& source) {
  return source == "ring" ? "kvm:kvm_dirty_ring_push" : source == "wp" ? "kvmmmu:fast_page_fault" : "none";
}

class Bench {
 public:
  explicit Bench(const BenchTraceOptions& o) : o_(o) {}

  int run() {
    if (o_.json && spdlog::default_logger()->level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
    t0_ = Clock::now();
    auto dir = make_temp_dir("bench-trace");
    if (!dir) return finish(dir.error().what());
    dir_.path = *dir;
    api_ = dir_.path + "/vm.sock";

    const std::string kvm = o_.in_sandbox       ? "nested KVM (kvm-amd) on SVM emulated by QEMU TCG (tools/kvm-sandbox)"
                            : kvm::kvm_is_pvm() ? "PVM (kvm_pvm): guests run through its instruction emulator"
                                                : "hardware-virtualized KVM";
    out_ = {{"benchmark", "trace-overhead"},
            {"where", o_.in_sandbox ? "kvm-sandbox" : "native"},
            {"kvm", kvm},
            {"ok", false},
            {"error", ""},
            {"target_slowdown_pct", kTargetSlowdownPct}};
    say(fmt::format("Ferry tracing overhead benchmark, {}\n  KVM: {}\n", where_text(o_.in_sandbox), kvm));
    if (o_.in_sandbox)
      say("  Everything here runs under emulation on one CPU: the tracer, the VMM and the guest share it.\n");

    if (auto ok = start_vm(); !ok) return finish(ok.error().what());
    if (auto ok = phases(); !ok) return finish(ok.error().what());
    summarize();
    return finish("");
  }

 private:
  void say(const std::string& text) const {
    if (o_.json) return;
    std::fputs(text.c_str(), stdout);
    std::fflush(stdout);
  }

  int finish(const std::string& error) {
    out_["ok"] = error.empty();
    out_["error"] = error;
    out_["elapsed_s"] = std::chrono::duration<double>(Clock::now() - t0_).count();
    if (!error.empty()) {
      fmt::print(stderr, "ferry bench-trace: {}\n", error);
      if (vm_) fmt::print(stderr, "ferry run said:\n{}\n", tail(slurp(dir_.path + "/vm.err")));
    }
    if (o_.json) fmt::print("{}\n", out_.dump(2));
    return error.empty() ? 0 : 1;
  }

  Result<json> status() {
    auto s = control::call(api_, json{{"cmd", "status"}}, 30s);
    if (!s) return std::unexpected(s.error());
    if (failures(*s) > 0) return fail("the guest found a bad page (it verifies each page before rewriting it)");
    return s;
  }

  Status start_vm() {
    if (!o_.working_set_given && !o_.in_sandbox && kvm::kvm_emulates_guests_reason()) {
      o_.working_set_mib = 4;
      notes_.push_back(
          "working set 4 MiB, not 64: the guest writes only about 60 pages/s per vCPU on this KVM; "
          "--working-set changes it");
    }
    out_["vm"] = {{"vcpus", o_.vcpus},
                  {"working_set_mib", o_.working_set_mib},
                  {"rate", "as fast as it can"},
                  {"pattern", "sequential"}};
    say(
        fmt::format("  VM: built-in guest, {} vCPU{}, rewriting a {} MiB working set as fast as it can "
                    "(ferry run --workload dirty --rate 0)\n",
                    o_.vcpus, o_.vcpus == 1 ? "" : "s", o_.working_set_mib));
    for (const auto& n : notes_) say(fmt::format("      ({})\n", n));
    auto c = FerryChild::start({"run", "--vcpus", std::to_string(o_.vcpus), "--workload", "dirty", "--working-set",
                                std::to_string(o_.working_set_mib), "--rate", "0", "--api", api_, "--json"},
                               dir_.path + "/vm.out", dir_.path + "/vm.err");
    if (!c) return std::unexpected(c.error());
    vm_ = std::move(*c);

    // Until every vCPU has written its slice once: the first write of a page
    // faults it in, later ones do not, and phase 1 must not pay for that.
    const auto w0 = Clock::now();
    const auto end = w0 + std::chrono::seconds(o_.warmup_limit_s);
    json last;
    for (;;) {
      if (!vm_->running())
        return fail("ferry run ended (exit status {}) before the guest wrote its working set",
                    vm_->wait(0ms).value_or(-1));
      if (auto s = control::call(api_, json{{"cmd", "status"}}, 10s); s) {
        last = *s;
        if (failures(last) > 0) return fail("the guest found a bad page during the warm-up");
        if (last.value("state", "") == "running" && wrote_working_set(last)) break;
      }
      if (Clock::now() >= end) {
        if (last.is_null())
          return fail("ferry run did not answer on its control socket within {} s", o_.warmup_limit_s);
        say(fmt::format("  warm-up: the guest had not written its working set after {} s; measuring anyway\n",
                        o_.warmup_limit_s));
        break;
      }
      std::this_thread::sleep_for(100ms);
    }
    const double warm_s = std::chrono::duration<double>(Clock::now() - w0).count();
    // One uncounted dirty-rate second: the first enabling of dirty logging
    // in this VM's life, whatever it costs, is not phase 1's.
    auto dr = dirty_rate(1.0);
    if (!dr) return std::unexpected(dr.error());
    backend_ = dr->value("backend", "");
    out_["warmup"] = {{"seconds", warm_s}, {"dirty_rate", *dr}};
    out_["dirty_tracking"] = backend_;
    say(
        fmt::format("  warm-up: {:.1f} s until the guest had written its working set once, then one second of\n"
                    "           dirty logging (not counted): {:.0f} pages/s harvested, {} dirty tracking\n",
                    warm_s, dr->value("pages_per_s", 0.0), backend_));
    return {};
  }

  // The request `ferry dirty-rate --vm API --seconds S --harvest-ms 100`
  // sends, made from here. Spawning `ferry dirty-rate` added its start-up
  // and exit to each phase (0.4 s of 5.4 in the sandbox), time in which
  // dirty logging is off and the guest, taking no write faults, rewrote
  // pages about 5 times as fast: up to a third of a phase's rewrites came
  // from those 0.4 s.
  Result<json> dirty_rate(double seconds) {
    auto r = control::call(api_, json{{"cmd", "dirty-rate"}, {"seconds", seconds}, {"harvest_ms", kHarvestMs}},
                           std::chrono::milliseconds(static_cast<long>(seconds * 1000)) + 300s);
    if (!r) return std::unexpected(std::move(r.error()).context("dirty-rate"));
    return r;
  }

  // Starts `ferry trace` on the VM and waits for its first frame: it prints
  // one an interval after its programs are attached.
  Result<std::unique_ptr<FerryChild>> start_tracer(unsigned phase) {
    const std::string base = fmt::format("{}/trace-{}", dir_.path, phase);
    // --duration is only a safety net: the benchmark stops it (SIGTERM)
    // once it has printed a frame taken after the phase.
    auto c = FerryChild::start({"trace", "--pid", std::to_string(vm_->pid()), "--interval", "1000", "--duration",
                                fmt::format("{}", o_.seconds + 120), "--json"},
                               base + ".out", base + ".err");
    if (!c) return std::unexpected(c.error());
    const auto end = Clock::now() + 180s;
    while (json_lines(slurp(base + ".out")).empty()) {
      if (!(*c)->running())
        return fail("ferry trace ended (exit status {}) before its first frame: {}", (*c)->wait(0ms).value_or(-1),
                    tail(slurp(base + ".err")));
      if (Clock::now() >= end) return fail("ferry trace printed no frame within 180 s: {}", tail(slurp(base + ".err")));
      std::this_thread::sleep_for(50ms);
    }
    return std::move(*c);
  }

  // After the phase: waits for a frame taken after it, stops the tracer and
  // reads the VM's cumulative event count from its last frame. Dirty logging
  // is off outside the phase, so every event counted happened within it.
  Status stop_tracer(FerryChild& tracer, unsigned phase, Phase& p) {
    const std::string base = fmt::format("{}/trace-{}", dir_.path, phase);
    if (!tracer.running())
      return fail("ferry trace ended (exit status {}) before the phase did: {}", tracer.wait(0ms).value_or(-1),
                  tail(slurp(base + ".err")));
    const std::size_t seen = json_lines(slurp(base + ".out")).size();
    const auto end = Clock::now() + 30s;
    while (json_lines(slurp(base + ".out")).size() <= seen) {
      if (!tracer.running() || Clock::now() >= end) break;
      std::this_thread::sleep_for(50ms);
    }
    ::kill(tracer.pid(), SIGTERM);
    auto rc = tracer.wait(30s);
    if (!rc) return std::unexpected(rc.error());
    if (*rc != 0) return fail("ferry trace exited with status {}: {}", *rc, tail(slurp(base + ".err")));
    const auto frames = json_lines(slurp(base + ".out"));
    if (frames.size() <= seen) return fail("ferry trace printed no frame after the phase");
    p.trace_frames = frames.size();
    for (const auto& v : frames.back()["vms"]) {
      if (v.value("pid", 0) != vm_->pid()) continue;
      p.trace_source = v.value("source", "");
      for (const auto& c : v["vcpus"]) p.trace_events += c.value("events", std::uint64_t{0});
    }
    p.trace_events_per_s = p.logging_seconds > 0 ? static_cast<double>(p.trace_events) / p.logging_seconds : 0;
    return {};
  }

  Status phases() {
    say(
        fmt::format("\n  Each phase is one dirty-rate measurement, the request of `ferry dirty-rate --seconds {:g}\n"
                    "  --harvest-ms {}`: dirty logging stays on throughout. Phases with the tracer run `ferry trace\n"
                    "  --pid {} --interval 1000 --json` beside it, attached before the phase starts and stopped\n"
                    "  after it ends.\n\n",
                    o_.seconds, kHarvestMs, vm_->pid()));
    say("  phase  tracer  seconds  logging on    rewrites  rewrites/s  harvests  dirty pages/s  trace events/s  "
        "events/page  tracer CPU\n");
    for (unsigned i = 1; i <= 2 * o_.repeats; ++i) {
      Phase p;
      p.index = i;
      p.traced = i % 2 == 0;
      std::unique_ptr<FerryChild> tracer;
      if (p.traced) {
        auto t = start_tracer(i);
        if (!t) return std::unexpected(t.error());
        tracer = std::move(*t);
      }
      auto s0 = status();
      if (!s0) return std::unexpected(s0.error());
      const auto t0 = Clock::now();
      const double cpu0 = tracer ? cpu_seconds(tracer->pid()) : 0;
      auto dr = dirty_rate(o_.seconds);
      if (!dr) return std::unexpected(dr.error());
      auto s1 = status();
      if (!s1) return std::unexpected(s1.error());
      p.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      if (tracer) p.tracer_cpu_pct = 100 * (cpu_seconds(tracer->pid()) - cpu0) / p.seconds;
      p.rewrites = rewrites(*s1) - rewrites(*s0);
      p.rewrites_per_s = static_cast<double>(p.rewrites) / p.seconds;
      p.backend = dr->value("backend", "");
      p.harvested_pages_per_s = dr->value("pages_per_s", 0.0);
      p.harvests = dr->value("harvests", 0u);
      p.logging_seconds = dr->value("seconds", 0.0);
      if (tracer)
        if (auto ok = stop_tracer(*tracer, i, p); !ok) return ok;
      say(fmt::format(
          "  {:>5}  {:<6}  {:>7.2f}  {:>9.2f}s  {:>10}  {:>10.1f}  {:>8}  {:>13.1f}  {:>14}  {:>11}  {:>10}\n", p.index,
          p.traced ? "on" : "off", p.seconds, p.logging_seconds, p.rewrites, p.rewrites_per_s, p.harvests,
          p.harvested_pages_per_s, p.traced ? fmt::format("{:.1f}", p.trace_events_per_s) : "-",
          p.traced && p.harvested_pages_per_s > 0
              ? fmt::format("{:.2f}", p.trace_events_per_s / p.harvested_pages_per_s)
              : "-",
          p.traced ? fmt::format("{:.1f}%", p.tracer_cpu_pct) : "-"));
      phases_.push_back(std::move(p));
    }
    return {};
  }

  // One throughput figure, without against with the tracer.
  struct Comparison {
    std::vector<double> off, on, pair_ratio;  // pair: each traced phase against the untraced one before it
    Stats a, b, pr;
    double ratio = 0, slowdown_pct = 0;
    double noise_pct() const { return std::max(a.spread_pct(), b.spread_pct()); }
    json to_json() const {
      return {
          {"without", a.mean},
          {"with", b.mean},
          {"spread_without_pct", a.spread_pct()},
          {"spread_with_pct", b.spread_pct()},
          {"ratio_with_without", ratio},
          {"pair_ratio_min", pr.min},
          {"pair_ratio_max", pr.max},
          {"pairs_slower_with", std::count_if(pair_ratio.begin(), pair_ratio.end(), [](double r) { return r < 1; })},
          {"slowdown_pct", slowdown_pct}};
    }
  };

  Comparison compare(double Phase::*figure) const {
    Comparison c;
    for (const auto& p : phases_) {
      (p.traced ? c.on : c.off).push_back(p.*figure);
      if (p.traced && phases_[p.index - 2].*figure > 0)
        c.pair_ratio.push_back(p.*figure / phases_[p.index - 2].*figure);
    }
    c.a = stats(c.off);
    c.b = stats(c.on);
    c.pr = stats(c.pair_ratio);
    c.ratio = c.a.mean > 0 ? c.b.mean / c.a.mean : 0;
    c.slowdown_pct = 100 * (1 - c.ratio);
    return c;
  }

  void summarize() {
    std::vector<double> ev_rate, tracer_cpu;
    std::uint64_t events = 0;
    double traced_pages = 0;
    std::string source;
    std::vector<std::string> backends;
    for (const auto& p : phases_) {
      if (std::find(backends.begin(), backends.end(), p.backend) == backends.end()) backends.push_back(p.backend);
      if (!p.traced) continue;
      ev_rate.push_back(p.trace_events_per_s);
      tracer_cpu.push_back(p.tracer_cpu_pct);
      events += p.trace_events;
      traced_pages += p.harvested_pages_per_s * p.logging_seconds;
      if (!p.trace_source.empty()) source = p.trace_source;
    }
    const auto rw = compare(&Phase::rewrites_per_s);
    const auto pg = compare(&Phase::harvested_pages_per_s);
    const auto ev = stats(ev_rate), cpu = stats(tracer_cpu);
    const bool fired = events > 0;
    const double per_page = traced_pages > 0 ? static_cast<double>(events) / traced_pages : 0;
    const std::string tracking = fmt::format("{}", fmt::join(backends, ", "));

    std::vector<std::string> findings;
    if (!fired) {
      findings.push_back(fmt::format(
          "No dirty tracepoint fired while the tracer was attached ({} dirty tracking on {}): the tracer had "
          "nothing to count, so the ratio measures only the noise floor of this setup (and the idle `ferry "
          "trace` process), not the cost of tracing dirty pages. Run it where KVM fires them: the sandbox "
          "(`--sandbox`) or hardware KVM with the dirty ring.",
          tracking,
          o_.in_sandbox       ? "nested KVM"
          : kvm::kvm_is_pvm() ? "PVM"
                              : "this KVM"));
    } else {
      findings.push_back(fmt::format("Slowdown {:.2f}%: {} the {:g}% target.", rw.slowdown_pct,
                                     rw.slowdown_pct < kTargetSlowdownPct ? "under" : "over", kTargetSlowdownPct));
    }
    if (rw.noise_pct() > kTargetSlowdownPct)
      findings.push_back(fmt::format(
          "Phases of the same kind differ by up to {:.1f}% (sd) among themselves, more than the {:g}% target: this "
          "run cannot tell a {:g}% slowdown from none{}. More --repeats or longer --seconds narrow it.",
          rw.noise_pct(), kTargetSlowdownPct, kTargetSlowdownPct,
          std::abs(rw.slowdown_pct) > 2 * rw.noise_pct()
              ? fmt::format(" (the {:.1f}% measured is well outside that spread)", rw.slowdown_pct)
              : std::string()));
    if (o_.in_sandbox)
      findings.push_back(
          "Under emulation the tracepoint, the eBPF program and `ferry trace`'s reads of its maps "
          "run emulated on the one CPU the guest and the VMM use too: the figures say what tracing "
          "costs there, not on hardware.");

    out_["dirty_tracking"] = tracking;
    out_["phases"] = json::array();
    for (const auto& p : phases_) out_["phases"].push_back(p.to_json());
    out_["summary"] = {{"seconds_per_phase", o_.seconds},
                       {"repeats", o_.repeats},
                       {"rewrites_per_s_without", rw.a.mean},
                       {"rewrites_per_s_with", rw.b.mean},
                       {"ratio_with_without", rw.ratio},
                       {"slowdown_pct", rw.slowdown_pct},
                       {"rewrites_per_s", rw.to_json()},
                       {"dirty_pages_per_s", pg.to_json()},
                       {"trace_events_per_s", ev.mean},
                       {"trace_events_per_dirty_page", per_page},
                       {"tracer_process_cpu_pct", cpu.mean},
                       {"tracepoint", tracepoint_of(source)},
                       {"tracepoints_fired", fired},
                       {"within_target", fired && rw.slowdown_pct < kTargetSlowdownPct},
                       {"findings", findings},
                       {"notes", notes_}};

    say(fmt::format(
        "\n  Summary ({} pair{} of {:g} s phases, {} dirty tracking)\n"
        "    guest rewrites/s, whole phase (the guest's counter)\n"
        "      without tracing  {:>10.1f}   ({})\n"
        "      with tracing     {:>10.1f}   ({})\n"
        "      ratio with/without {:>8.4f}   (each traced phase against the one before: {:.4f} .. {:.4f};\n"
        "                                 slower in {} of {})\n"
        "      slowdown         {:>9.2f} %   (target: under {:g}%)\n"
        "    dirty pages/s harvested, logging time only (pages dirty per {} ms harvest: one per working-set\n"
        "    write while a page comes round less often than that, plus the guest's few bookkeeping pages)\n"
        "      without tracing  {:>10.1f}   ({})\n"
        "      with tracing     {:>10.1f}   ({})\n"
        "      ratio with/without {:>8.4f}   (slowdown {:.2f}%)\n"
        "    tracepoint events  {:>10.1f}/s in the traced phases ({}), {:.2f} per dirty page harvested\n"
        "    `ferry trace` CPU  {:>10.1f}%  of one CPU in the traced phases (its process, reading the maps; the\n"
        "                                  eBPF programs run in the vCPU threads and count as the VM's)\n",
        o_.repeats, o_.repeats == 1 ? "" : "s", o_.seconds, tracking, rw.a.mean, spread_text(rw.off, rw.a), rw.b.mean,
        spread_text(rw.on, rw.b), rw.ratio, rw.pr.min, rw.pr.max,
        std::count_if(rw.pair_ratio.begin(), rw.pair_ratio.end(), [](double r) { return r < 1; }), rw.pair_ratio.size(),
        rw.slowdown_pct, kTargetSlowdownPct, kHarvestMs, pg.a.mean, spread_text(pg.off, pg.a), pg.b.mean,
        spread_text(pg.on, pg.b), pg.ratio, pg.slowdown_pct, ev.mean,
        fired ? std::string(tracepoint_of(source)) : "none fired", per_page, cpu.mean));
    for (const auto& f : findings) say("\n" + wrap(f, "  ", 100));
    say(fmt::format("  ({:.1f} s in all)\n", std::chrono::duration<double>(Clock::now() - t0_).count()));
  }

  BenchTraceOptions o_;
  Clock::time_point t0_;
  WorkDir dir_;  // declared before the children: removed after they end
  std::string api_;
  std::unique_ptr<FerryChild> vm_;
  std::string backend_;
  std::vector<Phase> phases_;
  std::vector<std::string> notes_;
  json out_;
};

}  // namespace

void add_bench_trace(CLI::App& app, Globals& g) {
  auto o = std::make_shared<BenchTraceOptions>();
  auto* cmd = app.add_subcommand("bench-trace",
                                 "Benchmark: the built-in guest's dirtying throughput with and without `ferry trace` "
                                 "attached; prints their ratio and the slowdown (target: under 2%).");
  cmd->footer(
      "Runs `ferry run` (the guest rewriting its working set as fast as it can), then alternates phases\n"
      "without and with `ferry trace --pid PID` attached, --repeats pairs. Every phase is one dirty-rate\n"
      "measurement (the request `ferry dirty-rate --harvest-ms 100` makes), which keeps dirty logging on: no\n"
      "dirty tracepoint fires without it. Throughput = the guest's rewrites per second (its own counter),\n"
      "beside the dirty pages harvested per second. `ferry trace` needs CAP_BPF + CAP_PERFMON (or root).\n"
      "Where KVM fires no dirty tracepoint (PVM: dirty bitmap) the ratio measures only the noise floor, and\n"
      "the output says so.\n"
      "Without /dev/kvm it runs inside tools/kvm-sandbox. See docs/benchmarks.md.");
  cmd->add_option("--seconds", o->seconds, "length of each phase (ferry dirty-rate --seconds)")
      ->check(CLI::Range(1.0, 60.0))
      ->capture_default_str();
  cmd->add_option("--repeats", o->repeats, "pairs of phases (without, with the tracer)")
      ->check(CLI::Range(1u, 50u))
      ->capture_default_str();
  cmd->add_option("--vcpus", o->vcpus, "guest vCPUs")->check(CLI::Range(1, 16))->capture_default_str();
  cmd->add_option("--working-set", o->working_set_mib,
                  "MiB the guest rewrites (default 64; 4 where KVM emulates guests)")
      ->check(CLI::PositiveNumber)
      ->each([o](const std::string&) { o->working_set_given = true; });
  cmd->add_option("--warmup-limit", o->warmup_limit_s, "seconds to wait for the guest to write its working set once")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "print the figures as one JSON object");
  cmd->add_flag("--sandbox", o->force_sandbox, "run inside tools/kvm-sandbox even when /dev/kvm exists");
  cmd->add_flag("--in-sandbox", o->in_sandbox, "(internal) we already are inside the sandbox")->group("");
  cmd->callback([o, &g] {
    {
      std::vector<std::string> args{"bench-trace",    "--in-sandbox",
                                    "--seconds",      fmt::format("{}", o->seconds),
                                    "--repeats",      std::to_string(o->repeats),
                                    "--vcpus",        std::to_string(o->vcpus),
                                    "--warmup-limit", std::to_string(o->warmup_limit_s)};
      if (o->working_set_given) args.insert(args.end(), {"--working-set", std::to_string(o->working_set_mib)});
      if (o->json) args.push_back("--json");
      if (!run_here_or_in_sandbox({"bench-trace", o->in_sandbox, o->force_sandbox, o->json,
                                   "running the benchmark inside tools/kvm-sandbox (QEMU emulation: ratios only)",
                                   std::move(args)})) {
        g.rc = 1;
        return;
      }
    }
    o->in_sandbox = inside_kvm_sandbox(o->in_sandbox);
    g.rc = Bench(*o).run();
  });
}

}  // namespace ferry::cli
