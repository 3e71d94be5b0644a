#include "kvm/selftest.hh"

#include <chrono>
#include <cstring>

#include "kvm/exit_reason.hh"
#include "kvm/guest_memory.hh"
#include "kvm/real_mode_code.hh"
#include "kvm/system.hh"

namespace ferry::kvm {
namespace {

Status validate(const DirtyRingSelftestOptions& o) {
  if (o.rounds.empty()) return fail("self-test: no rounds given");
  if (o.rounds.size() > kSelftestCodePages) return fail("self-test: at most {} rounds", kSelftestCodePages);
  for (const auto& r : o.rounds) {
    if (r.size() * 10 + 1 > kPageSize) return fail("self-test: at most {} pages per round", (kPageSize - 1) / 10);
    for (auto g : r)
      if (g < kSelftestCodePages || g >= kSelftestMemoryBytes / kPageSize)
        return fail("self-test: gfn {} outside {}..{}", g, kSelftestCodePages, kSelftestMemoryBytes / kPageSize - 1);
  }
  return {};
}

}  // namespace

std::string_view dirty_ring_mode_name(DirtyRingMode m) {
  switch (m) {
    case DirtyRingMode::kOff: return "off";
    case DirtyRingMode::kPlain: return "dirty-ring";
    case DirtyRingMode::kAcqRel: return "dirty-ring-acq-rel";
  }
  return "?";
}

Result<DirtyRingSelftestReport> run_dirty_ring_selftest(const DirtyRingSelftestOptions& opts) {
  if (auto ok = validate(opts); !ok) return std::unexpected(ok.error());
  const auto start = std::chrono::steady_clock::now();

  // Guest memory first, so it is unmapped only after the VM (and its memory
  // slots pointing at it) is gone.
  const std::uint64_t code_bytes = kSelftestCodePages * kPageSize;
  auto code_mem = GuestRegion::create(kSelftestCodeSlot, 0, code_bytes, "ferry-selftest-code");
  if (!code_mem) return std::unexpected(std::move(code_mem.error()).context("self-test"));
  auto mem = GuestRegion::create(kSelftestDataSlot, code_bytes, kSelftestMemoryBytes - code_bytes, "ferry-selftest-data");
  if (!mem) return std::unexpected(std::move(mem.error()).context("self-test"));

  auto kvm = Kvm::open(opts.kvm_path);
  if (!kvm) return std::unexpected(std::move(kvm.error()).context("self-test"));
  auto vm = kvm->create_vm();
  if (!vm) return std::unexpected(std::move(vm.error()).context("self-test"));
  // Order matters: the ring must exist before the first vCPU.
  if (opts.ring_bytes == 0) {
    if (auto ok = vm->enable_smallest_dirty_ring(); !ok) return std::unexpected(std::move(ok.error()).context("self-test"));
  } else if (auto ok = vm->enable_dirty_ring(opts.ring_bytes); !ok) {
    return std::unexpected(std::move(ok.error()).context("self-test"));
  }
  if (auto ok = vm->set_memory_region(*code_mem, /*log_dirty=*/false); !ok)
    return std::unexpected(std::move(ok.error()).context("self-test code slot"));
  if (auto ok = vm->set_memory_region(*mem, /*log_dirty=*/true); !ok)
    return std::unexpected(std::move(ok.error()).context("self-test data slot"));
  auto vcpu = vm->create_vcpu(0);
  if (!vcpu) return std::unexpected(vcpu.error());

  DirtyRingSelftestReport report;
  report.api_version = kvm->api_version();
  report.mode = vm->dirty_ring_mode();
  report.ring_entries = vcpu->dirty_ring()->entries();

  for (std::size_t round = 0; round < opts.rounds.size(); ++round) {
    DirtyRingRound rr;
    rr.written = opts.rounds[round];
    // The VMM writes the code through its own mapping: KVM does not see
    // these writes, so they never appear in the ring (the point of the test).
    const auto code = real_mode_write_pages(rr.written, round);
    const std::uint64_t code_gpa = round * kPageSize;
    std::memcpy(code_mem->host_at(code_gpa), code.data(), code.size());

    if (auto ok = real_mode_enter(*vcpu, code_gpa); !ok) return std::unexpected(ok.error());

    auto collect = [&] {
      rr.harvested += vcpu->dirty_ring()->harvest([&](const DirtyGfn& g) { rr.reported.push_back(g); });
      auto n = vm->reset_dirty_rings();
      if (!n) return Status(std::unexpected(n.error()));
      rr.reset += *n;
      return Status{};
    };

    for (;;) {
      if (auto ok = vcpu->run_once(); !ok) return std::unexpected(ok.error());
      const auto reason = vcpu->run().exit_reason;
      if (reason == KVM_EXIT_HLT) break;
      if (reason == KVM_EXIT_DIRTY_RING_FULL) {
        // The vCPU cannot continue until we make room: harvest + reset.
        ++rr.ring_full_exits;
        if (auto ok = collect(); !ok) return std::unexpected(ok.error());
        continue;
      }
      if (reason == KVM_EXIT_INTR) continue;
      auto name = exit_reason_name(reason);
      return fail("self-test round {}: unexpected vCPU exit {} ({})", round, name.empty() ? "?" : name, reason);
    }
    if (auto ok = collect(); !ok) return std::unexpected(ok.error());
    rr.memory_matches = true;
    for (auto g : rr.written)
      if (static_cast<std::uint8_t>(*mem->host_at(g * kPageSize)) != real_mode_marker(g, round)) rr.memory_matches = false;
    report.rounds.push_back(std::move(rr));
  }
  report.elapsed_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace ferry::kvm
