// `ferry demo --guest linux`: a real Linux guest (the Debian kernel that
// tools/bootstrap.sh fetched, an initramfs of busybox + ferry-workload built
// on the spot) boots, proves its memory stays intact while it dirties it,
// answers on its console, is snapshotted and restored into a new VM, and
// keeps going there.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <regex>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "tools/ferry/demo.hh"
#include "kvm/machine.hh"


namespace ferry::cli {
namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// The guest's serial output, searchable while it arrives. Waiters look
// again only when a whole line has come in, and search a copy outside the
// lock, so the vCPU writing the console is never held up by a regex.
class Console {
 public:
  kvm::Serial::Sink sink() {
    return [this](std::string_view s) {
      std::lock_guard lock(mu_);
      text_ += s;
      if (s.find('\n') != std::string_view::npos) {
        ++lines_;
        cv_.notify_all();
      }
    };
  }
  // The VM stopped (power-off, reboot, failure): waiting is pointless.
  void abort() {
    std::lock_guard lock(mu_);
    aborted_ = true;
    cv_.notify_all();
  }
  // Waits until `re` matches what arrived after `from`; the match or ""
  // (timeout, or the VM stopped).
  std::string wait_for(const std::regex& re, std::size_t from, std::chrono::seconds limit) {
    const auto end = Clock::now() + limit;
    std::uint64_t seen = ~0ull;
    for (;;) {
      std::string tail;
      {
        std::unique_lock lock(mu_);
        if (!cv_.wait_until(lock, end, [&] { return lines_ != seen || aborted_; })) return {};
        if (aborted_) return {};
        seen = lines_;
        tail = text_.substr(std::min(from, text_.size()));
      }
      std::smatch m;
      if (std::regex_search(tail, m, re)) return m[0];
    }
  }
  std::size_t size() {
    std::lock_guard lock(mu_);
    return text_.size();
  }
  std::string text() {
    std::lock_guard lock(mu_);
    return text_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::string text_;
  std::uint64_t lines_ = 0;
  bool aborted_ = false;
};

Status build_initramfs(const std::string& out) {
  harness::ChildOptions o;
  o.name = "tools/linux-guest/mkinitramfs";
  auto c = harness::Child::spawn({"/bin/sh", FERRY_GUEST_MKINITRAMFS, out, FERRY_GUEST_WORKLOAD, FERRY_GUEST_MODULES}, o);
  if (!c) return std::unexpected(std::move(c.error()).context("spawn tools/linux-guest/mkinitramfs"));
  auto st = c->wait(std::chrono::minutes(5));
  if (!st) return std::unexpected(st.error());
  if (*st != 0) return fail("tools/linux-guest/mkinitramfs failed (status {})", *st);
  return {};
}

// Whole lines only: the console arrives a byte at a time.
const std::regex kHeartbeat(
    R"(ferry-workload: hb=(\d+) uptime_ms=\d+ rewrites=(\d+) verified=(\d+) failures=(\d+) max_gap_ms=\d+\r?\n)");

std::string trim_line(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  if (!s.empty() && s.front() == '\n') s.erase(0, 1);
  return s;
}

}  // namespace

int run_linux_demo(bool json, bool in_sandbox) {
  // Inside the sandbox stdout and stderr arrive as one stream: with --json,
  // keep progress logs out of it so the output stays one JSON object.
  if (json && spdlog::default_logger()->level() < spdlog::level::warn) spdlog::set_level(spdlog::level::warn);
  auto say = [&](const std::string& line) {
    if (json) return;
    std::fputs(line.c_str(), stdout);
    std::fflush(stdout);
  };
  const std::string kernel = std::getenv("FERRY_DEMO_KERNEL") ? std::getenv("FERRY_DEMO_KERNEL") : FERRY_GUEST_KERNEL;
  if (!std::filesystem::exists(kernel)) {
    fmt::print(stderr, "ferry demo: no guest kernel at {} (tools/bootstrap.sh fetches it; or set FERRY_DEMO_KERNEL)\n",
               kernel);
    return 1;
  }
  auto made = make_temp_dir("demo");
  if (!made) {
    fmt::print(stderr, "ferry demo: {}\n", made.error());
    return 1;
  }
  const std::string dir = *made;
  struct Cleanup {
    std::string d;
    ~Cleanup() { std::filesystem::remove_all(d); }
  } cleanup{dir};
  const std::string initrd = dir + "/guest.cpio", snap = dir + "/linux.snap";
  say(fmt::format("Ferry demo: a Linux guest on {}\n",
      in_sandbox ? "nested KVM inside tools/kvm-sandbox (QEMU emulation: expect tens of seconds)" : "native /dev/kvm"));
  if (auto ok = build_initramfs(initrd); !ok) {
    fmt::print(stderr, "ferry demo: {}\n", ok.error());
    return 1;
  }
  kvm::MachineConfig c;
  c.kind = kvm::GuestKind::kLinux;
  c.memory_bytes = 256ull << 20;
  c.linux_boot = {kernel, initrd, "console=ttyS0 panic=-1 pci=off ferry.mib=16 ferry.rate=8", 2, {}};
  Console console;
  const auto t0 = Clock::now();
  auto vm = kvm::Machine::boot(c, console.sink(), [&console] { console.abort(); });
  if (!vm) {
    fmt::print(stderr, "ferry demo: {}\n", vm.error());
    return 1;
  }
  say(fmt::format("  booting {} with 2 vCPUs and 256 MiB...\n", kernel));
  auto fail_with_console = [&](const std::string& what) {
    fmt::print(stderr, "ferry demo: {}\n--- guest console ---\n{}\n", what, console.text());
    return 1;
  };
  if (console.wait_for(std::regex("ferry-guest: init after [0-9.]+ s"), 0, 300s).empty())
    return fail_with_console("the guest did not reach init");
  const double boot_s = std::chrono::duration<double>(Clock::now() - t0).count();
  say(fmt::format("  init reached after {:.1f} s; ferry-workload dirties 16 MiB at 8 MiB/s and verifies every page\n", boot_s));
  const auto hb1 = trim_line(console.wait_for(std::regex(R"(ferry-workload: hb=3 [^\n]*\n)"), 0, 120s));
  if (hb1.empty()) return fail_with_console("the workload did not run");
  say(fmt::format("  guest: {}\n", hb1));

  const auto mark = console.size();
  (*vm)->console_input("uname -sr; echo cpus=$(nproc)\n");
  const auto uname = trim_line(console.wait_for(std::regex(R"(\nLinux [^\r\n]*\r?\n)"), mark, 60s));
  if (uname.empty()) return fail_with_console("no answer on the console");
  say(fmt::format("  console: `uname -sr` answers {}\n", uname));

  if (auto ok = (*vm)->pause(); !ok) return fail_with_console(ok.error().what());
  // The guest's last words before the snapshot, to compare with after.
  std::uint64_t hb_before = 0, verified_before = 0;
  {
    const std::string before = console.text();
    for (auto it = std::sregex_iterator(before.begin(), before.end(), kHeartbeat); it != std::sregex_iterator(); ++it) {
      hb_before = std::stoull((*it)[1]);
      verified_before = std::stoull((*it)[3]);
    }
  }
  auto figures = (*vm)->snapshot(snap);
  if (!figures) return fail_with_console(figures.error().what());
  (void)(*vm)->stop("snapshotted for the demo");
  say(fmt::format("  snapshot: {:.1f} MiB written ({} of {} pages non-zero); the first VM is stopped\n",
      figures->file.data_pages * 4096 / 1048576.0, figures->file.data_pages, figures->file.pages));
  auto file = kvm::Snapshot::open(snap);
  if (!file) return fail_with_console(file.error().what());
  Console console2;
  auto restored = kvm::Machine::restore(*file, console2.sink(), [&console2] { console2.abort(); }, false);
  if (!restored) return fail_with_console(restored.error().what());
  // Three whole heartbeats from the restored guest.
  const auto hb2 = console2.wait_for(
      std::regex(R"((?:ferry-workload: hb=\d+ [^\n]*\n(?:[^\n]*\n)*?){3})"), 0, 120s);
  const std::string after = console2.text();
  std::vector<std::smatch> beats;
  for (auto it = std::sregex_iterator(after.begin(), after.end(), kHeartbeat); it != std::sregex_iterator(); ++it)
    beats.push_back(*it);
  if (hb2.empty() || beats.empty()) {
    fmt::print(stderr, "ferry demo: the restored guest did not continue\n--- console ---\n{}\n", after);
    return 1;
  }
  std::uint64_t failures = 0;
  for (const auto& b : beats) failures += std::stoull(b[4]);
  const auto& last = beats.back();
  say(fmt::format("  restored into a new VM, which went on: {}\n", trim_line(last[0].str())));
  (*restored)->console_input("poweroff -f\n");
  (void)(*restored)->stop("demo done");
  const std::uint64_t hb_after = std::stoull(last[1]), verified_after = std::stoull(last[3]);
  // It went on from where it was: later heartbeats, more verified pages.
  const bool ok = failures == 0 && hb_after > hb_before && verified_after > verified_before;
  if (json) {
    fmt::print("{}\n", nlohmann::json{{"scenario", "linux-guest"},
                                      {"where", in_sandbox ? "kvm-sandbox" : "native"},
                                      {"kernel", kernel},
                                      {"boot_to_init_s", boot_s},
                                      {"console", uname},
                                      {"snapshot_data_pages", figures->file.data_pages},
                                      {"heartbeat_before_snapshot", hb_before},
                                      {"heartbeat_after_restore", hb_after},
                                      {"verified_before_snapshot", verified_before},
                                      {"verified_after_restore", verified_after},
                                      {"failures", failures},
                                      {"ok", ok}}
                           .dump(2));
  } else {
    say(fmt::format("  {}\n", ok ? "The guest's own verification passed throughout: nothing was lost across the snapshot and restore."
                     : "FAILURE: the guest found corrupted pages, or did not go on, after the restore"));
  }
  return ok ? 0 : 1;
}

}  // namespace ferry::cli
