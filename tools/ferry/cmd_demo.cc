// `ferry demo`: the one-command showcase. Until live migration lands it runs
// the KVM dirty-ring scenario on a real VM and explains what it showed.
// Without /dev/kvm it re-runs itself inside tools/kvm-sandbox and says so.
#include <unistd.h>

#include <algorithm>
#include <set>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "ferry/commands.hh"
#include "ferry/demo.hh"
#include "ferry/sandbox_exec.hh"
#include "kvm/selftest.hh"

namespace ferry::cli {
namespace {

struct RoundVerdict {
  std::size_t missing = 0;     // written but not reported: a lost write
  std::size_t unexpected = 0;  // reported but never written
  std::size_t duplicates = 0;  // reported twice within one round
  std::size_t ring_full_exits = 0;
  // The store that hits the ring's soft limit is re-executed after the
  // harvest + reset, so one re-report per ring-full exit is correct.
  bool exact() const { return missing == 0 && unexpected == 0 && duplicates <= ring_full_exits; }
};

RoundVerdict judge(const kvm::DirtyRingRound& r) {
  RoundVerdict v;
  v.ring_full_exits = r.ring_full_exits;
  std::set<std::uint64_t> written(r.written.begin(), r.written.end());
  std::set<std::uint64_t> seen;
  for (const auto& g : r.reported) {
    const auto gfn = kvm::selftest_gfn(g);
    if (!seen.insert(gfn).second) ++v.duplicates;
    if (g.slot != kvm::kSelftestDataSlot || !written.contains(gfn)) ++v.unexpected;
  }
  for (auto w : written) v.missing += !seen.contains(w);
  return v;
}

// Three rounds, like three pre-copy passes: a scattered first pass, a second
// that re-dirties part of it (the ring must report pages again after reset),
// and a large pass that overflows a small ring to exercise ring-full exits.
kvm::DirtyRingSelftestOptions demo_plan() {
  kvm::DirtyRingSelftestOptions o;
  o.ring_bytes = 0;  // the smallest ring this host accepts, so round 3 can overflow it
  std::vector<std::uint64_t> r1, r2, r3;
  for (std::uint64_t i = 0; i < 64; ++i) r1.push_back(kvm::kSelftestCodePages + i * 3);
  for (std::uint64_t i = 0; i < 16; ++i) r2.push_back(kvm::kSelftestCodePages + i * 12);
  for (std::uint64_t g = kvm::kSelftestCodePages; g < 256; ++g) r3.push_back(g);
  o.rounds = {r1, r2, r3};
  return o;
}

int run_demo(bool json, bool in_sandbox) {
  const auto report = kvm::run_dirty_ring_selftest(demo_plan());
  if (!report) {
    fmt::print(stderr, "ferry demo: {}\n", report.error());
    return 1;
  }
  bool all_exact = true;
  nlohmann::json rounds = nlohmann::json::array();
  for (const auto& r : report->rounds) {
    const auto v = judge(r);
    all_exact = all_exact && v.exact() && r.reset == r.harvested && r.memory_matches;
    rounds.push_back({{"pages_written", r.written.size()},
                      {"pages_reported", r.reported.size()},
                      {"missing", v.missing},
                      {"unexpected", v.unexpected},
                      {"duplicates", v.duplicates},
                      {"harvested", r.harvested},
                      {"reset", r.reset},
                      {"ring_full_exits", r.ring_full_exits},
                      {"guest_writes_visible", r.memory_matches}});
  }
  if (json) {
    nlohmann::json j{{"scenario", "kvm-dirty-ring"},
                     {"where", in_sandbox ? "kvm-sandbox" : "native"},
                     {"kvm_api_version", report->api_version},
                     {"dirty_ring_mode", kvm::dirty_ring_mode_name(report->mode)},
                     {"ring_entries", report->ring_entries},
                     {"rounds", rounds},
                     {"exact", all_exact},
                     {"elapsed_ms", report->elapsed_ms}};
    fmt::print("{}\n", j.dump(2));
    return all_exact ? 0 : 1;
  }
  fmt::print("Ferry demo: exact dirty-page tracking on a real KVM VM ({})\n",
             in_sandbox ? "inside tools/kvm-sandbox: nested KVM under QEMU emulation" : "native /dev/kvm");
  fmt::print("  KVM API {}, {} with {} entries per vCPU\n", report->api_version,
             kvm::dirty_ring_mode_name(report->mode), report->ring_entries);
  const char* what[] = {"scattered pass", "re-dirty after reset", "whole 1 MiB through the smallest ring"};
  for (std::size_t i = 0; i < report->rounds.size(); ++i) {
    const auto& r = report->rounds[i];
    const auto v = judge(r);
    fmt::print("  round {} ({}): guest wrote {:>3} pages -> ring reported {:>3}: {}; reset re-armed {}{}\n", i + 1,
               what[i % 3], r.written.size(), r.reported.size(),
               v.exact() ? (v.duplicates ? fmt::format("all of them ({} re-reported after a ring-full exit)", v.duplicates)
                                         : std::string("exactly those"))
                         : fmt::format("{} missing, {} unexpected, {} duplicates", v.missing, v.unexpected, v.duplicates),
               r.reset, r.ring_full_exits ? fmt::format(" ({} ring-full exits handled)", r.ring_full_exits) : "");
  }
  fmt::print("  {} ({:.1f} ms in all).\n",
             all_exact ? "Every guest write was reported, and nothing else: this is what pre-copy relies on"
                       : "MISMATCH: dirty tracking on this host is not exact",
             report->elapsed_ms);
  fmt::print("  Next: `ferry doctor` checks the rest of this host; live migration itself is on the roadmap "
             "(docs/getting-started.md).\n");
  return all_exact ? 0 : 1;
}

}  // namespace

void add_demo(CLI::App& app, Globals& g) {
  struct Opts {
    bool json = false;
    bool in_sandbox = false;
    bool force_sandbox = false;
    std::string guest = "test";
  };
  auto opts = std::make_shared<Opts>();
  auto* cmd = app.add_subcommand("demo",
                                 "The showcase: runs a real KVM VM whose guest dirties known pages and shows that the "
                                 "dirty ring reports exactly those, round after round. Uses /dev/kvm when present, "
                                 "otherwise re-runs itself inside tools/kvm-sandbox.");
  cmd->add_flag("--json", opts->json, "print the result as JSON");
  cmd->add_flag("--sandbox", opts->force_sandbox, "run inside tools/kvm-sandbox even when /dev/kvm exists");
  cmd->add_option("--guest", opts->guest,
                  "test: the built-in guest and the dirty ring (seconds); linux: boot a Linux guest, run its "
                  "self-verifying workload, snapshot and restore it (about a minute in the sandbox)")
      ->check(CLI::IsMember({"test", "linux"}))
      ->capture_default_str();
  cmd->add_flag("--in-sandbox", opts->in_sandbox, "(internal) we already are inside the sandbox")->group("");
  cmd->callback([opts, &g] {
    const auto native = opts->in_sandbox || opts->force_sandbox ? Status{} : native_kvm_usable();
    if (!opts->in_sandbox && (opts->force_sandbox || !native)) {
      // Say why, so that a permission problem on a real KVM host is not
      // silently papered over by the (much slower) sandbox.
      const std::string why = opts->force_sandbox ? "--sandbox given" : fmt::format("No usable /dev/kvm ({})", native.error());
      if (!opts->json)
        fmt::print(stderr, "{}; running the demo inside tools/kvm-sandbox (boots a nested KVM under QEMU, a few seconds)...\n",
                   why);
      std::vector<std::string> args{"demo", "--in-sandbox", "--guest", opts->guest};
      if (opts->json) args.push_back("--json");
      const auto err = exec_in_sandbox(args);
      fmt::print(stderr, "ferry demo: cannot start the sandbox: {}\n", err);
      g.rc = 1;
      return;
    }
    g.rc = opts->guest == "linux" ? run_linux_demo(opts->json, opts->in_sandbox) : run_demo(opts->json, opts->in_sandbox);
  });
}

}  // namespace ferry::cli
